//! Vector snapshots in the reference's format (see docs/FORMAT.md,
//! "Vector snapshots"): the manifest's `custom.vector` entry, the typed ids
//! of `vec_id_map`, and the chunks in which a sqlite-vec `vec0` table keeps
//! its vectors.
//!
//! A vector shard is a SQLite file holding, beside the `kv` table, a
//! `vec0` virtual table `vec_index` (one `float[dim]` column and a
//! distance metric), `vec_payloads` (JSON text by rowid) and `vec_id_map`
//! (the caller's id by rowid). The rowids 0..n-1 are shared by the three.
//! `vec0` stores its vectors in shadow tables: `vec_index_chunks` (per
//! chunk a validity bitmap and the slots' rowids) and
//! `vec_index_vector_chunks00` (per chunk the slots' vectors), which
//! [`Chunk`] decodes, so an exact search needs no SQLite extension.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The distance a vector snapshot is searched with. Scores are distances:
/// lower is nearer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// `1 - cos(a, b)`.
    Cosine,
    /// Euclidean distance (not squared).
    L2,
}

impl Metric {
    /// Parses a metric as the manifest and job files spell it.
    pub fn parse(s: &str) -> Result<Metric> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "l2" => Ok(Metric::L2),
            "dot" | "dot_product" | "inner_product" => Err(invalid(
                "vector.metric",
                format!(
                    "{s:?}: sqlite-vec shards cannot store a dot-product index; use \"cosine\" (on normalised vectors it ranks the same) or \"l2\""
                ),
            )),
            other => Err(invalid(
                "vector.metric",
                format!("{other:?} is not \"cosine\" or \"l2\""),
            )),
        }
    }

    /// The name in the manifest and in `vec0`'s `distance_metric=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
        }
    }
}

/// How a vector-only snapshot places vectors in shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorSharding {
    /// The nearest of `num_dbs` centroids (`centroids_ref`).
    Cluster,
    /// Random-hyperplane hash modulo `num_dbs` (`hyperplanes_ref`).
    Lsh,
    /// The shard id given with each vector (and with each query).
    Explicit,
    /// A CEL expression over routing columns.
    Cel,
}

impl VectorSharding {
    /// Parses `sharding_strategy`.
    pub fn parse(s: &str) -> Result<VectorSharding> {
        match s {
            "cluster" => Ok(VectorSharding::Cluster),
            "lsh" => Ok(VectorSharding::Lsh),
            "explicit" => Ok(VectorSharding::Explicit),
            "cel" => Ok(VectorSharding::Cel),
            other => Err(invalid(
                "vector.sharding_strategy",
                format!("{other:?} is not one of cluster, lsh, explicit, cel"),
            )),
        }
    }

    /// The name in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            VectorSharding::Cluster => "cluster",
            VectorSharding::Lsh => "lsh",
            VectorSharding::Explicit => "explicit",
            VectorSharding::Cel => "cel",
        }
    }
}

/// A manifest's `custom.vector`, with the reference readers' defaults for
/// keys it leaves out.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorMeta {
    /// Components per vector.
    pub dim: u32,
    /// The distance searched with.
    pub metric: Metric,
    /// `true`: a key-value snapshot whose shards also hold its rows'
    /// vectors (search fans out to every shard); `false`: vector-only.
    pub unified: bool,
    /// The vector backend of a unified snapshot (default `lancedb`, as the
    /// reference reads it; ShardForge reads `sqlite-vec`).
    pub backend: String,
    /// Vector-only: how vectors were placed (default `explicit`).
    pub sharding: VectorSharding,
    /// Vector-only: shards a query probes by default (default 1).
    pub num_probes: u32,
    /// Vector-only: vectors in the snapshot, when recorded.
    pub total_vectors: Option<u64>,
    /// CLUSTER: URL of the centroids (`.npy`, `num_dbs` x `dim`).
    pub centroids_ref: Option<String>,
    /// LSH: URL of the hyperplanes (`.npy`, `num_hash_bits` x `dim`).
    pub hyperplanes_ref: Option<String>,
    /// LSH: bits of the hash (the hyperplanes' count).
    pub num_hash_bits: Option<u32>,
    /// CEL: how a routing context names a vector's shard.
    pub cel: Option<VectorCel>,
}

/// A CEL vector-only snapshot's routing: `cel_expr` over `cel_columns`,
/// its result the shard id, or with `routing_values` a token whose index
/// is the shard id (as the key-value CEL routing of
/// [`ShardingSpec`](crate::ShardingSpec)).
#[derive(Debug, Clone, PartialEq)]
pub struct VectorCel {
    /// The expression.
    pub expr: String,
    /// The columns it reads, with their types.
    pub columns: std::collections::BTreeMap<String, crate::CelType>,
    /// Categorical tokens (bytes ones as
    /// [`bytes_as_text`](crate::format::sharding::bytes_as_text) text).
    pub routing_values: Option<Vec<crate::RoutingValue>>,
}

impl VectorCel {
    /// As a key-value sharding spec (what routes a context to a shard).
    pub fn sharding(&self) -> crate::ShardingSpec {
        crate::ShardingSpec::cel(self.expr.clone(), self.columns.clone(), self.routing_values.clone())
    }

    /// `routing_values` as `custom.vector` holds them: integers and text
    /// as themselves, the tokens of an expression yielding bytes
    /// (`bytes_tokens`) as `{"__bytes_hex__": "<hex>"}`, as the reference
    /// writes them.
    pub fn routing_values_json(values: &[crate::RoutingValue], bytes_tokens: bool) -> Value {
        use crate::RoutingValue;
        Value::Array(
            values
                .iter()
                .map(|v| match v {
                    RoutingValue::Int(i) => Value::from(*i),
                    RoutingValue::Str(s) if bytes_tokens => {
                        let bytes = crate::format::sharding::text_as_bytes(s).unwrap_or_else(|_| s.as_bytes().to_vec());
                        serde_json::json!({ "__bytes_hex__": hex::encode(bytes) })
                    }
                    RoutingValue::Str(s) => Value::from(s.as_str()),
                })
                .collect(),
        )
    }

    fn from_custom(v: &Map<String, Value>) -> Result<VectorCel> {
        let expr = match v.get("cel_expr").and_then(Value::as_str) {
            Some(e) if !e.trim().is_empty() => e.to_string(),
            _ => {
                return Err(invalid(
                    "custom.vector.cel_expr",
                    "a cel snapshot needs its expression".into(),
                ));
            }
        };
        let columns: std::collections::BTreeMap<String, crate::CelType> = match v.get("cel_columns") {
            Some(c) => serde_json::from_value(c.clone()).map_err(|e| {
                invalid(
                    "custom.vector.cel_columns",
                    format!("{c} is not names and CEL types: {e}"),
                )
            })?,
            None => Default::default(),
        };
        if columns.is_empty() {
            return Err(invalid(
                "custom.vector.cel_columns",
                "a cel snapshot needs the columns its expression reads".into(),
            ));
        }
        let routing_values = match v.get("routing_values") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|item| match item {
                        Value::Number(n) => n
                            .as_i64()
                            .map(crate::RoutingValue::Int)
                            .ok_or_else(|| format!("{n} is not a 64-bit integer")),
                        Value::String(s) => Ok(crate::RoutingValue::Str(s.clone())),
                        Value::Object(o) if o.len() == 1 => match o.get("__bytes_hex__").and_then(Value::as_str) {
                            Some(h) => hex::decode(h)
                                .map(|b| crate::RoutingValue::Str(crate::format::sharding::bytes_as_text(&b)))
                                .map_err(|e| format!("{h:?} is not hex: {e}")),
                            None => Err(format!("{item} is not a routing value")),
                        },
                        other => Err(format!("{other} is not a routing value")),
                    })
                    .collect::<std::result::Result<Vec<_>, String>>()
                    .map_err(|e| invalid("custom.vector.routing_values", e))?,
            ),
            Some(other) => {
                return Err(invalid(
                    "custom.vector.routing_values",
                    format!("{other} is not a list"),
                ));
            }
        };
        Ok(VectorCel {
            expr,
            columns,
            routing_values,
        })
    }
}

impl VectorMeta {
    /// `custom.vector` of a manifest, if it has one.
    pub fn from_custom(custom: &Map<String, Value>) -> Result<Option<VectorMeta>> {
        let Some(v) = custom.get("vector") else {
            return Ok(None);
        };
        let Some(v) = v.as_object() else {
            return Err(invalid("custom.vector", format!("{v} is not an object")));
        };
        let dim = match v.get("dim").and_then(Value::as_u64) {
            Some(d) if (1..=u64::from(MAX_DIM)).contains(&d) => d as u32,
            _ => {
                return Err(invalid(
                    "custom.vector.dim",
                    format!("{:?} is not a dimension from 1 to {MAX_DIM}", v.get("dim")),
                ));
            }
        };
        let unified = v.get("unified").and_then(Value::as_bool).unwrap_or(false);
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let metric = match text("metric") {
            Some(m) => Metric::parse(&m)?,
            None if unified => return Err(invalid("custom.vector.metric", "missing".into())),
            None => Metric::Cosine,
        };
        let sharding = match text("sharding_strategy") {
            Some(s) => VectorSharding::parse(&s)?,
            None => VectorSharding::Explicit,
        };
        let num_probes = match v.get("num_probes") {
            None | Some(Value::Null) => 1,
            Some(n) => match n.as_u64() {
                Some(n) if n >= 1 && n <= u64::from(u32::MAX) => n as u32,
                _ => {
                    return Err(invalid(
                        "custom.vector.num_probes",
                        format!("{n} is not a positive count"),
                    ));
                }
            },
        };
        let cel = match (unified, sharding) {
            (false, VectorSharding::Cel) => Some(VectorCel::from_custom(v)?),
            _ => None,
        };
        Ok(Some(VectorMeta {
            dim,
            metric,
            unified,
            backend: text("backend").unwrap_or_else(|| "lancedb".into()),
            sharding,
            num_probes,
            total_vectors: v.get("total_vectors").and_then(Value::as_u64),
            centroids_ref: text("centroids_ref"),
            hyperplanes_ref: text("hyperplanes_ref"),
            num_hash_bits: v.get("num_hash_bits").and_then(Value::as_u64).map(|n| n as u32),
            cel,
        }))
    }
}

/// The largest dimension read (sqlite-vec's own limit is 8192).
pub const MAX_DIM: u32 = 8192;

fn invalid(field: &str, reason: String) -> Error {
    Error::Invalid {
        field: field.to_string(),
        reason,
    }
}

/// A vector's id as the caller gave it: `vec_id_map.original_id` holds it
/// as `{"v": 4, "t": "int"}` or `{"v": "doc-1", "t": "str"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VectorId {
    /// An integer id.
    Int(i64),
    /// A text id.
    Str(String),
}

impl VectorId {
    /// Decodes `vec_id_map.original_id`: `t == "int"` reads `v` as an
    /// integer, any other `t` as text (the reference reads it so).
    pub fn decode(text: &str) -> std::result::Result<VectorId, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("{text:?} is not JSON: {e}"))?;
        let (Some(value), t) = (v.get("v"), v.get("t").and_then(Value::as_str)) else {
            return Err(format!("{text:?} has no \"v\""));
        };
        if t == Some("int") {
            return match value {
                Value::Number(n) => n
                    .as_i64()
                    .map(VectorId::Int)
                    .ok_or_else(|| format!("{text:?}: {n} is not a 64-bit integer")),
                Value::String(s) => s
                    .parse()
                    .map(VectorId::Int)
                    .map_err(|_| format!("{text:?}: {s:?} is not an integer")),
                other => Err(format!("{text:?}: {other} is not an integer")),
            };
        }
        Ok(VectorId::Str(match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }))
    }

    /// The id as `vec_id_map.original_id` stores it (Python's `json.dumps`
    /// layout, non-ASCII escaped, as the reference writes it).
    pub fn encode(&self) -> String {
        match self {
            VectorId::Int(i) => format!("{{\"v\": {i}, \"t\": \"int\"}}"),
            VectorId::Str(s) => {
                let mut out = String::from("{\"v\": ");
                crate::format::json::write_str(&mut out, s);
                out.push_str(", \"t\": \"str\"}");
                out
            }
        }
    }

    /// The id as JSON (a number or a string).
    pub fn to_json(&self) -> Value {
        match self {
            VectorId::Int(i) => Value::from(*i),
            VectorId::Str(s) => Value::from(s.as_str()),
        }
    }
}

impl std::fmt::Display for VectorId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VectorId::Int(i) => write!(f, "{i}"),
            VectorId::Str(s) => f.write_str(s),
        }
    }
}

/// One chunk of a `vec0` table: `validity` (a bitmap, least significant
/// bit first, a set bit a live slot) and `rowids` (little-endian `i64`
/// per slot) from `<table>_chunks`, `vectors` (little-endian `f32`,
/// `dim` per slot) from `<table>_vector_chunks00`. The slot count is the
/// bitmap's bits; the other two must match it exactly.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    validity: &'a [u8],
    rowids: &'a [u8],
    vectors: &'a [u8],
    dim: usize,
}

impl<'a> Chunk<'a> {
    /// Checks the three blobs against each other; the error says which
    /// length is wrong.
    pub fn new(
        validity: &'a [u8],
        rowids: &'a [u8],
        vectors: &'a [u8],
        dim: usize,
    ) -> std::result::Result<Self, String> {
        let slots = validity.len() * 8;
        if slots == 0 || dim == 0 {
            return Err(format!("a chunk of {slots} slots of dimension {dim}"));
        }
        if rowids.len() != slots * 8 {
            return Err(format!(
                "{slots} slots but {} bytes of rowids (want {})",
                rowids.len(),
                slots * 8
            ));
        }
        let want = slots.checked_mul(dim).and_then(|n| n.checked_mul(4));
        if want != Some(vectors.len()) {
            return Err(format!(
                "{slots} slots of dimension {dim} but {} bytes of vectors (want {})",
                vectors.len(),
                slots * dim * 4
            ));
        }
        Ok(Chunk {
            validity,
            rowids,
            vectors,
            dim,
        })
    }

    /// The live slots: `(rowid, vector)` in slot order.
    pub fn live(&self) -> impl Iterator<Item = (i64, &'a [u8])> + '_ {
        let (validity, rowids, vectors, dim) = (self.validity, self.rowids, self.vectors, self.dim);
        (0..validity.len() * 8)
            .filter(move |i| validity[i / 8] & (1 << (i % 8)) != 0)
            .map(move |i| {
                let r = &rowids[i * 8..i * 8 + 8];
                let rowid = i64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]);
                (rowid, &vectors[i * dim * 4..(i + 1) * dim * 4])
            })
    }
}

/// Little-endian `f32` bytes as values.
pub fn f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_in_the_references_layout() {
        assert_eq!(VectorId::Int(4).encode(), r#"{"v": 4, "t": "int"}"#);
        assert_eq!(
            VectorId::Str("grün".into()).encode(),
            r#"{"v": "gr\u00fcn", "t": "str"}"#
        );
        for id in [
            VectorId::Int(-7),
            VectorId::Int(i64::MAX),
            VectorId::Str("doc-1".into()),
            VectorId::Str("日本".into()),
        ] {
            assert_eq!(VectorId::decode(&id.encode()).unwrap(), id);
        }
        assert_eq!(
            VectorId::decode(r#"{"v": "12", "t": "int"}"#).unwrap(),
            VectorId::Int(12)
        );
        assert_eq!(
            VectorId::decode(r#"{"v": 12, "t": "str"}"#).unwrap(),
            VectorId::Str("12".into())
        );
        for bad in [
            "",
            "{",
            r#"{"t": "int"}"#,
            r#"{"v": 1.5, "t": "int"}"#,
            r#"{"v": "x", "t": "int"}"#,
        ] {
            assert!(VectorId::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metrics_refuse_dot_product_with_the_reason() {
        assert_eq!(Metric::parse("l2").unwrap(), Metric::L2);
        let e = Metric::parse("dot_product").unwrap_err().to_string();
        assert!(e.contains("cannot store a dot-product index"), "{e}");
        assert!(Metric::parse("l1").is_err());
    }

    #[test]
    fn custom_vector_takes_the_reference_readers_defaults() {
        let custom =
            |v: Value| serde_json::from_value::<Map<String, Value>>(serde_json::json!({ "vector": v })).unwrap();
        let m = VectorMeta::from_custom(&custom(serde_json::json!({"dim": 8})))
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.metric, m.sharding, m.num_probes, m.unified),
            (Metric::Cosine, VectorSharding::Explicit, 1, false)
        );
        assert!(
            VectorMeta::from_custom(&custom(serde_json::json!({"dim": 8, "unified": true}))).is_err(),
            "unified needs a metric"
        );
        for bad in [
            serde_json::json!({"dim": 0}),
            serde_json::json!({"dim": "8"}),
            serde_json::json!([1]),
            serde_json::json!({"dim": 8, "num_probes": 0}),
        ] {
            assert!(VectorMeta::from_custom(&custom(bad.clone())).is_err(), "{bad}");
        }
        assert_eq!(VectorMeta::from_custom(&Map::new()).unwrap(), None);
    }

    #[test]
    fn a_cel_snapshot_reads_its_expression_columns_and_tokens() {
        use crate::{CelType, RoutingValue};
        let custom =
            |v: Value| serde_json::from_value::<Map<String, Value>>(serde_json::json!({ "vector": v })).unwrap();
        let m = VectorMeta::from_custom(&custom(serde_json::json!({
            "dim": 4, "sharding_strategy": "cel", "cel_expr": "region", "cel_columns": {"region": "bytes"},
            "routing_values": [{"__bytes_hex__": "6575"}, {"__bytes_hex__": "ff"}, "us"],
        })))
        .unwrap()
        .unwrap();
        let cel = m.cel.expect("cel");
        assert_eq!(cel.expr, "region");
        assert_eq!(cel.columns["region"], CelType::Bytes);
        let values = cel.routing_values.clone().expect("values");
        assert_eq!(
            values,
            vec![
                RoutingValue::Str("eu".into()),
                RoutingValue::Str("hex:ff".into()),
                RoutingValue::Str("us".into())
            ]
        );
        assert_eq!(
            VectorCel::routing_values_json(&values, true),
            serde_json::json!([{"__bytes_hex__": "6575"}, {"__bytes_hex__": "ff"}, {"__bytes_hex__": "7573"}])
        );
        assert_eq!(
            VectorCel::routing_values_json(&[RoutingValue::Int(3), RoutingValue::Str("a".into())], false),
            serde_json::json!([3, "a"])
        );
        for bad in [
            serde_json::json!({"dim": 4, "sharding_strategy": "cel", "cel_columns": {"a": "int"}}),
            serde_json::json!({"dim": 4, "sharding_strategy": "cel", "cel_expr": "a"}),
            serde_json::json!({"dim": 4, "sharding_strategy": "cel", "cel_expr": "a", "cel_columns": {"a": "float"}}),
            serde_json::json!({"dim": 4, "sharding_strategy": "cel", "cel_expr": "a", "cel_columns": {"a": "int"},
                               "routing_values": [{"__bytes_hex__": "zz"}]}),
            serde_json::json!({"dim": 4, "sharding_strategy": "cel", "cel_expr": "a", "cel_columns": {"a": "int"},
                               "routing_values": [1.5]}),
        ] {
            assert!(VectorMeta::from_custom(&custom(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunks_yield_live_slots_and_refuse_wrong_lengths() {
        let validity = [0b0000_0101u8];
        let rowids: Vec<u8> = (0..8i64).flat_map(|i| (i * 10).to_le_bytes()).collect();
        let vectors: Vec<u8> = (0..16).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let chunk = Chunk::new(&validity, &rowids, &vectors, 2).unwrap();
        let live: Vec<(i64, Vec<f32>)> = chunk.live().map(|(r, v)| (r, f32s(v).collect())).collect();
        assert_eq!(live, vec![(0, vec![0.0, 1.0]), (20, vec![4.0, 5.0])]);
        assert!(
            Chunk::new(&validity, &rowids[1..], &vectors, 2)
                .unwrap_err()
                .contains("rowids")
        );
        assert!(
            Chunk::new(&validity, &rowids, &vectors[4..], 2)
                .unwrap_err()
                .contains("vectors")
        );
        assert!(Chunk::new(&[], &[], &[], 2).is_err());
    }
}
