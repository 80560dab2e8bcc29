//! The reference's vector snapshots (tests/data/shardyfusion-vector:
//! unified sqlite-vec shards with hash routing under cosine and l2,
//! vector-only CLUSTER and LSH), read with ShardForge's vector format code
//! and router: the manifests' `custom.vector`, the `.npy` routing
//! artifacts, the `vec0` chunks read from the shard files with plain SQLite
//! (no extension), the id map and the payloads. Every stored row routes to
//! the shard the reference put it in, every query probes the shards the
//! reference probed, and an exact search over the decoded chunks returns
//! the reference's ids and payloads in its order, with its scores within
//! 1e-5.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sf_manifest::format::npy;
use sf_manifest::format::vector::{Chunk, VectorId, VectorMeta, VectorSharding, f32s};
use sf_manifest::{Classified, Manifest};
use sf_router::vector::{ClusterRouter, Hit, LshRouter, TopK, check_vector, distance, merge};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/shardyfusion-vector")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(root().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

fn vector(hex_text: &Value) -> Vec<f32> {
    let bytes = hex::decode(hex_text.as_str().expect("hex")).expect("hex decodes");
    f32s(&bytes).collect()
}

/// One shard file, decoded: rowid -> (vector, id, payload).
struct Shard {
    rows: BTreeMap<i64, (Vec<f32>, VectorId, Option<Value>)>,
}

fn read_shard(path: &Path, dim: usize) -> Shard {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut vectors = BTreeMap::new();
    let mut stmt = conn
        .prepare(
            "SELECT c.validity, c.rowids, v.vectors FROM vec_index_chunks c \
             JOIN vec_index_vector_chunks00 v ON v.rowid = c.chunk_id ORDER BY c.chunk_id",
        )
        .expect("chunks query");
    let chunks = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .expect("chunks")
        .collect::<Result<Vec<_>, _>>()
        .expect("chunk rows");
    assert!(!chunks.is_empty(), "{}: no chunks", path.display());
    for (validity, rowids, blob) in &chunks {
        let chunk = Chunk::new(validity, rowids, blob, dim).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (rowid, v) in chunk.live() {
            assert!(
                vectors.insert(rowid, f32s(v).collect::<Vec<f32>>()).is_none(),
                "rowid {rowid} twice"
            );
        }
    }
    let ids: BTreeMap<i64, VectorId> = conn
        .prepare("SELECT internal_id, original_id FROM vec_id_map")
        .expect("id map")
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .expect("id rows")
        .map(|r| {
            let (rowid, text) = r.expect("id row");
            (
                rowid,
                VectorId::decode(&text).unwrap_or_else(|e| panic!("rowid {rowid}: {e}")),
            )
        })
        .collect();
    let payloads: BTreeMap<i64, Value> = conn
        .prepare("SELECT rowid, payload FROM vec_payloads")
        .expect("payloads")
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .expect("payload rows")
        .map(|r| {
            let (rowid, text) = r.expect("payload row");
            (rowid, serde_json::from_str(&text).expect("payload JSON"))
        })
        .collect();
    let rows = vectors
        .into_iter()
        .map(|(rowid, v)| {
            // A rowid missing from the id map is its own id, as the
            // reference reads it.
            let id = ids.get(&rowid).cloned().unwrap_or(VectorId::Int(rowid));
            (rowid, (v, id, payloads.get(&rowid).cloned()))
        })
        .collect();
    Shard { rows }
}

fn local(set: &Value, url: &str) -> PathBuf {
    let s3 = set["s3_prefix"].as_str().expect("s3_prefix");
    let rest = url
        .strip_prefix(s3)
        .unwrap_or_else(|| panic!("{url} is not under {s3}"));
    root()
        .join(set["local_prefix"].as_str().expect("local_prefix"))
        .join(rest.trim_start_matches('/'))
}

enum Routing {
    Unified,
    Cluster(ClusterRouter),
    Lsh(LshRouter),
}

impl Routing {
    fn probes(&self, q: &[f32], n: usize) -> Vec<u32> {
        match self {
            Routing::Unified => unreachable!("unified snapshots are not routed by vector"),
            Routing::Cluster(r) => r.probes(q, n),
            Routing::Lsh(r) => r.probes(q, n),
        }
    }

    fn assign(&self, v: &[f32]) -> u32 {
        match self {
            Routing::Unified => unreachable!("unified snapshots are not routed by vector"),
            Routing::Cluster(r) => r.assign(v),
            Routing::Lsh(r) => r.assign(v),
        }
    }
}

fn check_set(name: &str, set: &Value) {
    // The manifest the reference wrote, decoded by ShardForge.
    let current: Value = serde_json::from_slice(
        &std::fs::read(local(
            set,
            &format!("{}/_CURRENT", set["s3_prefix"].as_str().expect("fixture field")),
        ))
        .expect("_CURRENT"),
    )
    .expect("_CURRENT JSON");
    let manifest_path = local(set, current["manifest_ref"].as_str().expect("manifest_ref"));
    let manifest = Manifest::from_sqlite_bytes(&std::fs::read(&manifest_path).expect("manifest"), name)
        .unwrap_or_else(|e| panic!("{name}: the manifest decodes: {e}"));
    let meta = VectorMeta::from_custom(&manifest.build.custom)
        .expect("custom.vector parses")
        .expect("custom.vector is there");
    let dim = meta.dim as usize;
    assert_eq!(meta.unified, set["mode"] == "unified", "{name}");
    let num_dbs = manifest.build.num_dbs;

    let routing = match (meta.unified, meta.sharding) {
        (true, _) => Routing::Unified,
        (false, VectorSharding::Cluster) => {
            let url = meta.centroids_ref.as_deref().expect("centroids_ref");
            let m = npy::read(&std::fs::read(local(set, url)).expect("centroids"), url).expect("centroids decode");
            assert_eq!(
                (m.rows, m.cols),
                (num_dbs as usize, dim),
                "{name}: one centroid per shard"
            );
            let want: Vec<f32> = set["routing_artifact"]["values"]
                .as_array()
                .expect("fixture field")
                .iter()
                .flat_map(|r| {
                    r.as_array()
                        .expect("fixture field")
                        .iter()
                        .map(|x| x.as_f64().expect("fixture field") as f32)
                })
                .collect();
            assert_eq!(m.values, want, "{name}: the centroids' values");
            Routing::Cluster(ClusterRouter::new(m, meta.metric))
        }
        (false, VectorSharding::Lsh) => {
            let url = meta.hyperplanes_ref.as_deref().expect("hyperplanes_ref");
            let m = npy::read(&std::fs::read(local(set, url)).expect("hyperplanes"), url).expect("hyperplanes decode");
            assert_eq!(Some(m.rows as u32), meta.num_hash_bits, "{name}");
            Routing::Lsh(LshRouter::new(m, num_dbs).expect("router"))
        }
        (false, other) => panic!("{name}: no fixture of {other:?}"),
    };

    // Every shard file decodes to the rows the reference stored there.
    let mut shards: BTreeMap<u32, Shard> = BTreeMap::new();
    for s in set["shards"].as_array().expect("shards") {
        let db = s["db_id"].as_u64().expect("fixture field") as u32;
        let path = root()
            .join(s["local_dir"].as_str().expect("fixture field"))
            .join("shard.db");
        shards.insert(db, read_shard(&path, dim));
    }
    let rows = set["rows"].as_array().expect("rows");
    for row in rows {
        let db = row["db_id"].as_u64().expect("fixture field") as u32;
        let rowid = row["rowid"].as_i64().expect("fixture field");
        let v = vector(&row["vector_f32le_hex"]);
        let (stored, id, payload) = &shards[&db].rows[&rowid];
        assert_eq!(stored, &v, "{name}: shard {db} rowid {rowid}");
        assert_eq!(&id.to_json(), &row["id"], "{name}: shard {db} rowid {rowid}");
        assert_eq!(
            payload.as_ref().unwrap_or(&Value::Null),
            &row["payload"],
            "{name}: rowid {rowid}"
        );
        check_vector(meta.metric, dim, &v).unwrap_or_else(|e| panic!("{name}: a stored vector {e}"));
        if !meta.unified {
            assert_eq!(routing.assign(&v), db, "{name}: row {} routes to its shard", row["id"]);
        }
    }
    assert_eq!(shards.values().map(|s| s.rows.len()).sum::<usize>(), rows.len());

    let top_k = 5;
    let mut searched = 0;
    for q in set["queries"].as_array().expect("queries") {
        let query = vector(&q["vector_f32le_hex"]);
        if !meta.unified {
            let want: Vec<u32> = serde_json::from_value(q["route_default"].clone()).expect("route_default");
            assert_eq!(
                routing.probes(&query, meta.num_probes as usize),
                want,
                "{name} {}",
                q["name"]
            );
        }
        for search in q["searches"].as_array().expect("searches") {
            let targets: Vec<u32> = if let Some(ids) = search["shard_ids"].as_array() {
                ids.iter().map(|i| i.as_u64().expect("fixture field") as u32).collect()
            } else if meta.unified {
                manifest.shards.iter().map(|s| s.db_id.0).collect()
            } else {
                let n = search["num_probes"]
                    .as_u64()
                    .map_or(meta.num_probes as usize, |n| n as usize);
                let probes = routing.probes(&query, n);
                assert_eq!(
                    serde_json::to_value(&probes).expect("fixture field"),
                    search["route"],
                    "{name} {}: probes with {n}",
                    q["name"]
                );
                probes
            };
            assert_eq!(
                targets.len() as u64,
                search["num_shards_queried"].as_u64().expect("fixture field"),
                "{name}"
            );
            let per_shard = targets
                .iter()
                .filter_map(|db| shards.get(db).map(|s| (db, s)))
                .map(|(db, s)| {
                    let mut top = TopK::new(top_k);
                    for (rowid, (v, _, _)) in &s.rows {
                        top.push(Hit {
                            shard: *db,
                            rowid: *rowid,
                            score: distance(meta.metric, &query, v),
                        });
                    }
                    top.into_sorted()
                });
            let hits = merge(per_shard, top_k);
            let want = search["results"].as_array().expect("results");
            assert_eq!(hits.len(), want.len(), "{name} {}", q["name"]);
            for (hit, w) in hits.iter().zip(want) {
                let (_, id, payload) = &shards[&hit.shard].rows[&hit.rowid];
                assert_eq!(&id.to_json(), &w["id"], "{name} {}: {hits:?}", q["name"]);
                assert_eq!(payload.as_ref().unwrap_or(&Value::Null), &w["payload"], "{name}");
                let score = w["score"].as_f64().expect("fixture field");
                assert!(
                    (hit.score - score).abs() < 1e-5,
                    "{name} {}: {} vs {score}",
                    q["name"],
                    hit.score
                );
            }
            searched += 1;
        }
    }
    assert!(searched >= 10, "{name}: {searched} searches");
}

#[test]
fn the_references_vector_snapshots_route_decode_and_search_as_it_does() {
    let expected = expected();
    let sets = expected["sets"].as_object().expect("sets");
    assert_eq!(sets.len(), 4);
    for (name, set) in sets {
        check_set(name, set);
    }
}

/// The key-value half of the reference's unified snapshots reads as any
/// snapshot does, in every mode: every stored key's value, and a key that
/// is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_value_half_of_a_unified_snapshot_reads_in_every_mode() {
    let expected = expected();
    for name in ["unified_hash", "unified_l2"] {
        let set = &expected["sets"][name];
        let prefix = root().join(set["local_prefix"].as_str().expect("local_prefix"));
        let rows = set["rows"].as_array().expect("rows").clone();
        sf_tests::readers::read_in_every_mode(
            &prefix.display().to_string(),
            &sf_tests::readers::SQLITE_MODES,
            async |reader| {
                let keys: Vec<sf_manifest::Key> = rows
                    .iter()
                    .map(|r| reader.parse_key(&key_text(&r["key"])).expect("key"))
                    .collect();
                let values = reader.multi_get(&keys).await.expect("multi_get");
                for (row, got) in rows.iter().zip(values) {
                    let want = row["value"]["__bytes__"].as_str().expect("value");
                    assert_eq!(got.as_deref(), Some(want.as_bytes()), "{name} key {}", row["key"]);
                }
                let one = &rows[rows.len() / 2];
                let key = reader.parse_key(&key_text(&one["key"])).expect("key");
                assert_eq!(
                    reader.get(&key).await.expect("get").as_deref(),
                    Some(one["value"]["__bytes__"].as_str().expect("value").as_bytes())
                );
                let absent = reader.parse_key("100000").expect("key");
                assert_eq!(reader.get(&absent).await.expect("get"), None, "{name}");
            },
        )
        .await;
    }
}

/// A key as `sf-read` takes it on the command line.
fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A vector-only snapshot opens as a snapshot of no keys: its `kv` tables
/// are empty, and its filler routing (`raw` keys, hash) answers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vector_only_snapshot_opens_with_no_keys() {
    let expected = expected();
    for name in ["vec_cluster", "vec_lsh"] {
        let set = &expected["sets"][name];
        let prefix = root().join(set["local_prefix"].as_str().expect("local_prefix"));
        sf_tests::readers::read_in_every_mode(
            &prefix.display().to_string(),
            &sf_tests::readers::SQLITE_MODES,
            async |reader| {
                assert_eq!(
                    reader.info().row_count,
                    set["rows"].as_array().expect("rows").len() as u64,
                    "{name}"
                );
                let key = reader.parse_key("doc-00001").expect("key");
                assert_eq!(reader.get(&key).await.expect("get"), None, "{name}");
            },
        )
        .await;
    }
}

/// `Reader::search` on the reference's four vector snapshots, in every
/// mode: every search `expected.json` records returns the reference's
/// ids, payloads and order, its scores within 1e-5, and the shards it
/// asked (the probe order for vector-only snapshots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readers_search_the_references_vector_snapshots_as_it_does() {
    let expected = expected();
    for (name, set) in expected["sets"].as_object().expect("sets") {
        let prefix = root().join(set["local_prefix"].as_str().expect("local_prefix"));
        let unified = set["mode"] == "unified";
        sf_tests::readers::read_in_every_mode(
            &prefix.display().to_string(),
            &sf_tests::readers::SQLITE_MODES,
            async |reader| {
                let mut searched = 0;
                for q in set["queries"].as_array().expect("queries") {
                    let query = vector(&q["vector_f32le_hex"]);
                    for search in q["searches"].as_array().expect("searches") {
                        let options = sf_reader::SearchOptions {
                            top_k: 5,
                            num_probes: search["num_probes"].as_u64().map(|n| n as u32),
                            shard_ids: search["shard_ids"].as_array().map(|ids| {
                                ids.iter()
                                    .map(|i| sf_manifest::DbId(i.as_u64().expect("id") as u32))
                                    .collect()
                            }),
                            ..Default::default()
                        };
                        let got = reader
                            .search(&query, &options)
                            .await
                            .unwrap_or_else(|e| panic!("{name}: {e}"));
                        let want = search["results"].as_array().expect("results");
                        assert_eq!(got.hits.len(), want.len(), "{name} {}", q["name"]);
                        for (hit, w) in got.hits.iter().zip(want) {
                            assert_eq!(hit.id.to_json(), w["id"], "{name} {}: {:?}", q["name"], got.hits);
                            assert_eq!(hit.payload.as_ref().unwrap_or(&Value::Null), &w["payload"], "{name}");
                            let score = w["score"].as_f64().expect("score");
                            assert!((hit.score - score).abs() < 1e-5, "{name}: {} vs {score}", hit.score);
                        }
                        assert_eq!(
                            got.shards.len() as u64,
                            search["num_shards_queried"].as_u64().expect("count"),
                            "{name}"
                        );
                        if !unified && search["shard_ids"].is_null() {
                            let route: Vec<u32> = got.shards.iter().map(|d| d.0).collect();
                            assert_eq!(serde_json::to_value(&route).expect("json"), search["route"], "{name}");
                        }
                        searched += 1;
                    }
                }
                assert!(searched >= 10, "{name}");
            },
        )
        .await;
    }
}

/// A set's vector metadata and its shards, decoded from the files.
fn decoded(name: &str, set: &Value) -> (VectorMeta, BTreeMap<u32, Shard>) {
    let current: Value = serde_json::from_slice(
        &std::fs::read(local(
            set,
            &format!("{}/_CURRENT", set["s3_prefix"].as_str().expect("fixture field")),
        ))
        .expect("_CURRENT"),
    )
    .expect("_CURRENT JSON");
    let manifest = Manifest::from_sqlite_bytes(
        &std::fs::read(local(set, current["manifest_ref"].as_str().expect("manifest_ref"))).expect("manifest"),
        name,
    )
    .expect("manifest");
    let meta = VectorMeta::from_custom(&manifest.build.custom)
        .expect("custom.vector")
        .expect("vectors");
    let mut shards: BTreeMap<u32, Shard> = BTreeMap::new();
    for s in set["shards"].as_array().expect("shards") {
        let db = s["db_id"].as_u64().expect("fixture field") as u32;
        let path = root()
            .join(s["local_dir"].as_str().expect("fixture field"))
            .join("shard.db");
        shards.insert(db, read_shard(&path, meta.dim as usize));
    }
    (meta, shards)
}

/// Every hit of `query` over all of `shards`, nearest first, that `keep`
/// keeps (given its payload).
fn exhaustive(meta: &VectorMeta, shards: &BTreeMap<u32, Shard>, query: &[f32], keep: &Keep) -> Vec<Hit> {
    let mut hits: Vec<Hit> = shards
        .iter()
        .flat_map(|(db, s)| {
            s.rows
                .iter()
                .filter(|(_, (_, _, payload))| keep(payload.as_ref()))
                .map(|(rowid, (v, _, _))| Hit {
                    shard: *db,
                    rowid: *rowid,
                    score: distance(meta.metric, query, v),
                })
        })
        .collect();
    hits.sort_by(Hit::order);
    hits
}

/// What a test's own filter keeps, given a hit's payload.
type Keep = dyn Fn(Option<&Value>) -> bool;

/// A payload filter keeps the `top_k` nearest hits that match, in every
/// mode: the hits of an exhaustive search the test filters itself (so a
/// filter applied after the cut, which returns fewer, fails), for a
/// filter on a text field and a number, on a unified and a vector-only
/// snapshot; a payload without the field, and a hit without a payload,
/// never match; a filter that does not compile is refused saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_filter_keeps_the_nearest_matching_hits_in_every_mode() {
    let expected = expected();
    let field = |p: Option<&Value>, name: &str| p.and_then(|p| p.get(name)).cloned();
    let cases: [(&str, &str, Box<Keep>); 3] = [
        (
            "unified_hash",
            r#"tag == "red" && k >= 100"#,
            Box::new(move |p| {
                field(p, "tag") == Some(Value::from("red"))
                    && field(p, "k").and_then(|k| k.as_i64()).is_some_and(|k| k >= 100)
            }),
        ),
        (
            "unified_l2",
            r#"tag != "red""#,
            Box::new(move |p| field(p, "tag").is_some_and(|t| t != "red")),
        ),
        (
            "vec_cluster",
            "i % 3 == 1",
            Box::new(move |p| field(p, "i").and_then(|i| i.as_i64()).is_some_and(|i| i % 3 == 1)),
        ),
    ];
    for (name, filter, keep) in &cases {
        let set = &expected["sets"][*name];
        let (meta, shards) = decoded(name, set);
        let all: Vec<sf_manifest::DbId> = shards.keys().map(|d| sf_manifest::DbId(*d)).collect();
        let prefix = root().join(set["local_prefix"].as_str().expect("local_prefix"));
        sf_tests::readers::read_in_every_mode(
            &prefix.display().to_string(),
            &sf_tests::readers::SQLITE_MODES,
            async |reader| {
                for q in set["queries"].as_array().expect("queries") {
                    let query = vector(&q["vector_f32le_hex"]);
                    let want = exhaustive(&meta, &shards, &query, keep.as_ref());
                    let unfiltered = exhaustive(&meta, &shards, &query, &|_| true);
                    assert!(
                        want.len() >= 8 && want.len() < unfiltered.len(),
                        "{name}: {} of {} match",
                        want.len(),
                        unfiltered.len()
                    );
                    for top_k in [8, want.len() + 5] {
                        let options = sf_reader::SearchOptions {
                            top_k,
                            shard_ids: Some(all.clone()),
                            filter: Some(filter.to_string()),
                            ..Default::default()
                        };
                        let got = reader.search(&query, &options).await.expect("search");
                        let got: Vec<(u32, Option<Value>)> =
                            got.hits.iter().map(|h| (h.db_id.0, h.payload.clone())).collect();
                        let want: Vec<(u32, Option<Value>)> = want
                            .iter()
                            .take(top_k)
                            .map(|h| (h.shard, shards[&h.shard].rows[&h.rowid].2.clone()))
                            .collect();
                        assert_eq!(got, want, "{name} top {top_k} with {filter}");
                    }
                }
                let options = sf_reader::SearchOptions {
                    filter: Some("tag ==".into()),
                    shard_ids: Some(all.clone()),
                    ..Default::default()
                };
                let query = vector(&set["queries"][0]["vector_f32le_hex"]);
                let e = reader.search(&query, &options).await.expect_err("bad filter");
                assert_eq!(e.kind(), sf_manifest::ErrorKind::Config, "{e}");
                assert!(e.to_string().contains("does not compile"), "{e}");
            },
        )
        .await;
    }
}

/// Every mode searches exactly: for every query of the four reference
/// snapshots, a search of all shards returns, in download, range and
/// memory mode alike, the hits of an exhaustive search the test computes
/// over the decoded shard files (ids, payloads, order; scores within
/// 1e-6), for a short and a full top-k. Memory mode answers from the
/// vector arena it loads on the first search (the reader's memory grows
/// then, and not on later searches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_returns_the_exhaustive_search() {
    let expected = expected();
    for (name, set) in expected["sets"].as_object().expect("sets") {
        let prefix = root().join(set["local_prefix"].as_str().expect("local_prefix"));
        let current: Value = serde_json::from_slice(
            &std::fs::read(local(
                set,
                &format!("{}/_CURRENT", set["s3_prefix"].as_str().expect("fixture field")),
            ))
            .expect("_CURRENT"),
        )
        .expect("_CURRENT JSON");
        let manifest = Manifest::from_sqlite_bytes(
            &std::fs::read(local(set, current["manifest_ref"].as_str().expect("manifest_ref"))).expect("manifest"),
            name,
        )
        .expect("manifest");
        let meta = VectorMeta::from_custom(&manifest.build.custom)
            .expect("custom.vector")
            .expect("vectors");
        let mut shards: BTreeMap<u32, Shard> = BTreeMap::new();
        for s in set["shards"].as_array().expect("shards") {
            let db = s["db_id"].as_u64().expect("fixture field") as u32;
            let path = root()
                .join(s["local_dir"].as_str().expect("fixture field"))
                .join("shard.db");
            shards.insert(db, read_shard(&path, meta.dim as usize));
        }
        let total: usize = shards.values().map(|s| s.rows.len()).sum();
        let all: Vec<sf_manifest::DbId> = shards.keys().map(|d| sf_manifest::DbId(*d)).collect();
        let queries: Vec<Vec<f32>> = set["queries"]
            .as_array()
            .expect("queries")
            .iter()
            .map(|q| vector(&q["vector_f32le_hex"]))
            .collect();
        let mut by_mode = Vec::new();
        for mode in sf_tests::readers::SQLITE_MODES {
            let cache = tempfile::tempdir().expect("cache");
            let reader = sf_tests::readers::open(
                &prefix.display().to_string(),
                sf_tests::readers::settings(mode, cache.path()),
            )
            .await;
            let mut answers = Vec::new();
            let mut memory_after_first = None;
            for query in &queries {
                let mut exhaustive: Vec<Hit> = shards
                    .iter()
                    .flat_map(|(db, s)| {
                        s.rows.iter().map(|(rowid, (v, _, _))| Hit {
                            shard: *db,
                            rowid: *rowid,
                            score: distance(meta.metric, query, v),
                        })
                    })
                    .collect();
                exhaustive.sort_by(Hit::order);
                for top_k in [7, total] {
                    let options = sf_reader::SearchOptions {
                        top_k,
                        shard_ids: Some(all.clone()),
                        ..sf_reader::SearchOptions::default()
                    };
                    let got = reader
                        .search(query, &options)
                        .await
                        .unwrap_or_else(|e| panic!("{name} {mode:?}: {e}"));
                    assert_eq!(got.hits.len(), top_k.min(total), "{name} {mode:?}");
                    for (hit, want) in got.hits.iter().zip(&exhaustive) {
                        let (_, id, payload) = &shards[&want.shard].rows[&want.rowid];
                        assert_eq!(
                            (&hit.id, hit.db_id.0, &hit.payload),
                            (id, want.shard, payload),
                            "{name} {mode:?} top {top_k}"
                        );
                        assert!(
                            (hit.score - want.score).abs() < 1e-6,
                            "{name} {mode:?}: {} vs {}",
                            hit.score,
                            want.score
                        );
                    }
                    answers.push(got.hits);
                    let memory = reader.stats().memory_bytes;
                    match memory_after_first {
                        None => memory_after_first = Some(memory),
                        Some(first) => assert_eq!(memory, first, "{name} {mode:?}: the arena loads once"),
                    }
                }
            }
            if mode == sf_reader::SqliteMode::Memory {
                // The kv index alone of a fresh reader, then the arena.
                let fresh_cache = tempfile::tempdir().expect("cache");
                let fresh = sf_tests::readers::open(
                    &prefix.display().to_string(),
                    sf_tests::readers::settings(mode, fresh_cache.path()),
                )
                .await;
                for db in &all {
                    fresh.scan_shard(*db, None, 1).await.expect("open by a scan");
                }
                let opened = fresh.stats().memory_bytes;
                let options = sf_reader::SearchOptions {
                    shard_ids: Some(all.clone()),
                    ..Default::default()
                };
                fresh.search(&queries[0], &options).await.expect("search");
                let vectors = shards.values().map(|s| s.rows.len()).sum::<usize>() * meta.dim as usize * 4;
                assert!(
                    fresh.stats().memory_bytes >= opened + vectors as u64,
                    "{name}: {} bytes held after the search, {opened} before, {vectors} bytes of vectors",
                    fresh.stats().memory_bytes
                );
                assert_eq!(fresh.stats().memory_fallbacks, 0);
                fresh.close();
            }
            reader.close();
            by_mode.push(answers);
        }
        assert!(
            by_mode.windows(2).all(|w| w[0] == w[1]),
            "{name}: every mode answers alike"
        );
    }
}

/// `search_then_get` on the reference's unified snapshots, in every mode:
/// the search's hits, each with the value stored under its id (the key),
/// the values of the fixture's rows; on a vector-only snapshot it is
/// refused, saying there are no values to get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_then_get_returns_each_hits_value_from_the_same_snapshot() {
    let expected = expected();
    for name in ["unified_hash", "unified_l2"] {
        let set = &expected["sets"][name];
        let values: BTreeMap<String, String> = set["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                (
                    key_text(&r["id"]),
                    r["value"]["__bytes__"].as_str().expect("value").to_string(),
                )
            })
            .collect();
        let prefix = root().join(set["local_prefix"].as_str().expect("local_prefix"));
        sf_tests::readers::read_in_every_mode(
            &prefix.display().to_string(),
            &sf_tests::readers::SQLITE_MODES,
            async |reader| {
                for q in set["queries"].as_array().expect("queries") {
                    let query = vector(&q["vector_f32le_hex"]);
                    let options = sf_reader::SearchOptions {
                        top_k: 6,
                        ..Default::default()
                    };
                    let got = reader.search_then_get(&query, &options).await.expect("search_then_get");
                    assert_eq!(
                        got.results,
                        reader.search(&query, &options).await.expect("search"),
                        "{name}"
                    );
                    assert_eq!(got.values.len(), 6);
                    for (hit, value) in got.results.hits.iter().zip(&got.values) {
                        let want = &values[&hit.id.to_string()];
                        assert_eq!(value.as_deref(), Some(want.as_bytes()), "{name} id {}", hit.id);
                    }
                }
            },
        )
        .await;
    }
    let set = &expected["sets"]["vec_cluster"];
    let prefix = root().join(set["local_prefix"].as_str().expect("local_prefix"));
    let cache = tempfile::tempdir().expect("cache");
    let reader = sf_tests::readers::open(
        &prefix.display().to_string(),
        sf_tests::readers::settings(sf_reader::SqliteMode::Download, cache.path()),
    )
    .await;
    let e = reader
        .search_then_get(
            &vector(&set["queries"][0]["vector_f32le_hex"]),
            &sf_reader::SearchOptions::default(),
        )
        .await
        .expect_err("vector-only");
    assert_eq!(e.kind(), sf_manifest::ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("vector-only"), "{e}");
}

/// What a search refuses, with the reason: a query of the wrong length,
/// with a NaN, zero under cosine; a top_k of 0; a shard the snapshot does
/// not have; a snapshot without vectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_refuses_bad_queries_and_snapshots_without_vectors_clearly() {
    let expected = expected();
    let set = &expected["sets"]["unified_hash"];
    let prefix = root().join(set["local_prefix"].as_str().expect("local_prefix"));
    let cache = tempfile::tempdir().expect("cache");
    let reader = sf_tests::readers::open(
        &prefix.display().to_string(),
        sf_tests::readers::settings(sf_reader::SqliteMode::Download, cache.path()),
    )
    .await;
    let options = sf_reader::SearchOptions::default();
    let refused = async |query: &[f32], options: &sf_reader::SearchOptions| {
        let e = reader.search(query, options).await.expect_err("refused");
        assert_eq!(e.kind(), sf_manifest::ErrorKind::Config, "{e}");
        e.to_string()
    };
    assert!(
        refused(&[1.0; 7], &options)
            .await
            .contains("has 7 components, the snapshot's dimension is 8")
    );
    let mut nan = [1.0f32; 8];
    nan[3] = f32::NAN;
    assert!(refused(&nan, &options).await.contains("component 3 is NaN"));
    assert!(refused(&[0.0; 8], &options).await.contains("is zero"));
    let zero_k = sf_reader::SearchOptions {
        top_k: 0,
        ..options.clone()
    };
    assert!(refused(&[1.0; 8], &zero_k).await.contains("top_k"));
    let far = sf_reader::SearchOptions {
        shard_ids: Some(vec![sf_manifest::DbId(3)]),
        ..options.clone()
    };
    assert!(
        refused(&[1.0; 8], &far)
            .await
            .contains("shard 3 is not one of the snapshot's 3")
    );
    reader.close();

    // A key-value snapshot of the reference has no custom.vector.
    let kv = sf_tests::fixture_dir().join("sqlite-bucket-golden/hash_int");
    let reader = sf_tests::readers::open(
        &kv.display().to_string(),
        sf_tests::readers::settings(sf_reader::SqliteMode::Download, cache.path()),
    )
    .await;
    let e = reader.search(&[1.0; 8], &options).await.expect_err("no vectors");
    assert!(e.to_string().contains("holds no vectors"), "{e}");
}

/// `sf-read search` on the real binary: the reference's results for a
/// query given with `--vector`, one result line per query from stdin, and
/// a query of the wrong length or that is not JSON refused (exit 2),
/// saying why.
#[test]
fn sf_read_searches_from_the_command_line_and_stdin() {
    let expected = expected();
    let set = &expected["sets"]["vec_cluster"];
    let prefix = root().join(set["local_prefix"].as_str().expect("local_prefix"));
    let cache = tempfile::tempdir().expect("cache");
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = std::process::Command::new(sf_tests::writer_support::binary("sf-read"));
        cmd.arg("--current-url")
            .arg(&prefix)
            .args(args)
            .env("SF_CACHE_DIR", cache.path())
            .env_remove("SF_CURRENT_URL");
        sf_tests::writer_support::output_with_input(&mut cmd, stdin)
    };
    let queries = set["queries"].as_array().expect("queries");
    let text = |q: &Value| serde_json::to_string(&q["vector"]).expect("json");
    let check = |line: &str, q: &Value| {
        let got: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(got["op"], "search", "{line}");
        // The default search: the manifest's num_probes.
        let want = q["searches"]
            .as_array()
            .expect("searches")
            .iter()
            .find(|s| {
                (s["num_probes"].is_null() || s["num_probes"] == set["manifest"]["custom"]["vector"]["num_probes"])
                    && s["shard_ids"].is_null()
            })
            .expect("a default search");
        let ids: Vec<&Value> = got["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| &r["id"])
            .collect();
        let want_ids: Vec<&Value> = want["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| &r["id"])
            .collect();
        assert_eq!(ids, want_ids, "{line}");
    };
    let out = run(&["search", "--vector", &text(&queries[0]), "--top-k", "5"], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check(stdout.trim(), &queries[0]);

    let input = format!("{}\n\n{}\n", text(&queries[1]), text(&queries[2]));
    let out = run(&["search", "--vector", "-", "--top-k", "5"], Some(&input));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    check(lines[0], &queries[1]);
    check(lines[1], &queries[2]);

    // A payload filter: every hit matches it, and there are top_k of them.
    let out = run(
        &[
            "search",
            "--vector",
            &text(&queries[0]),
            "--top-k",
            "5",
            "--filter",
            "i % 3 == 1",
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).expect("a result line");
    let results = got["results"].as_array().expect("results");
    assert_eq!(results.len(), 5, "{got}");
    assert!(
        results.iter().all(|r| r["payload"]["i"].as_i64().expect("i") % 3 == 1),
        "{got}"
    );
    let out = run(&["search", "--vector", &text(&queries[0]), "--filter", "i %"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("does not compile"), "{err}");

    let out = run(&["search", "--vector", "[1, 2]"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("has 2 components, the snapshot's dimension is 8"), "{err}");
    let out = run(&["search", "--vector", "[1, oops]"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--vector") && err.contains("not a JSON array of numbers"),
        "{err}"
    );
}

/// `sf-read search --exact` on the reference's CLUSTER snapshot: after
/// each query's results a `recall` line whose recall@10 is the one the
/// test computes (the exact top 10 over every shard against the top 10 of
/// the query's one nearest shard, from the decoded files), then the mean;
/// with one probe some of the exact hits are missed, with every shard
/// probed none is.
#[test]
fn sf_read_search_exact_prints_recall_against_the_exhaustive_search() {
    let expected = expected();
    let set = &expected["sets"]["vec_cluster"];
    let (meta, shards) = decoded("vec_cluster", set);
    let centroids: Vec<f32> = set["routing_artifact"]["values"]
        .as_array()
        .expect("centroids")
        .iter()
        .flat_map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("value") as f32)
        })
        .collect();
    let router = ClusterRouter::new(
        npy::Matrix {
            rows: shards.len(),
            cols: meta.dim as usize,
            values: centroids,
        },
        meta.metric,
    );
    let prefix = root().join(set["local_prefix"].as_str().expect("local_prefix"));
    let cache = tempfile::tempdir().expect("cache");
    let queries = set["queries"].as_array().expect("queries");
    let input: String = queries
        .iter()
        .map(|q| format!("{}\n", serde_json::to_string(&q["vector"]).expect("json")))
        .collect();
    let k = 10;
    let run = |probes: usize| {
        let mut cmd = std::process::Command::new(sf_tests::writer_support::binary("sf-read"));
        cmd.arg("--current-url")
            .arg(&prefix)
            .args(["search", "--vector", "-", "--exact", "--top-k", "10", "--num-probes"])
            .arg(probes.to_string())
            .env("SF_CACHE_DIR", cache.path())
            .env_remove("SF_CURRENT_URL");
        let out = sf_tests::writer_support::output_with_input(&mut cmd, Some(&input));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect::<Vec<Value>>()
    };
    let mut means = Vec::new();
    for probes in [1, shards.len()] {
        let lines = run(probes);
        assert_eq!(lines.len(), 2 * queries.len() + 1, "{lines:?}");
        let mut sum = 0.0;
        for (i, q) in queries.iter().enumerate() {
            let query = vector(&q["vector_f32le_hex"]);
            let exact: Vec<Hit> = exhaustive(&meta, &shards, &query, &|_| true)
                .into_iter()
                .take(k)
                .collect();
            let probed = router.probes(&query, probes);
            let routed: Vec<Hit> = exhaustive(&meta, &shards, &query, &|_| true)
                .into_iter()
                .filter(|h| probed.contains(&h.shard))
                .take(k)
                .collect();
            let want = exact.iter().filter(|h| routed.contains(h)).count() as f64 / exact.len() as f64;
            sum += want;
            let (results, recall) = (&lines[2 * i], &lines[2 * i + 1]);
            assert_eq!(results["op"], "search");
            assert_eq!(results["results"].as_array().expect("results").len(), k);
            assert_eq!(recall["op"], "recall", "{recall}");
            assert_eq!(recall["query"], i as u64 + 1);
            assert_eq!(recall["k"], k as u64);
            assert_eq!(recall["shards"], probes as u64);
            assert_eq!(recall["exact_shards"], shards.len() as u64);
            let got = recall["recall"].as_f64().expect("recall");
            assert!(
                (got - want).abs() < 1e-12,
                "query {i} with {probes} probes: {got} vs {want}"
            );
        }
        let last = lines.last().expect("the mean");
        assert_eq!(last["op"], "recall_mean", "{last}");
        assert_eq!(last["queries"], queries.len() as u64);
        let mean = last["mean_recall"].as_f64().expect("mean");
        assert!((mean - sum / queries.len() as f64).abs() < 1e-12, "{mean}");
        means.push(mean);
    }
    assert!(means[0] < 1.0, "one probe misses some exact hits: {means:?}");
    assert_eq!(means[1], 1.0, "every shard probed finds them all");
}

/// `POST /v1/snapshots/{name}/search` on the real `sf-serve`: one query
/// and a batch answer with the reference's results and the run id, a
/// shard list narrows the search, a query of the wrong length is a 400
/// saying why, and the route is counted in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lookup_service_answers_searches_over_http() {
    use sf_tests::serve::{ServeProcess, call, metric};
    let expected = expected();
    let set = &expected["sets"]["unified_hash"];
    let prefix = root().join(set["local_prefix"].as_str().expect("local_prefix"));
    let url = prefix.display().to_string();
    let serve = ServeProcess::serving(&[("vecs", url.as_str())], &[]);
    serve.wait_ready().await;
    let queries = set["queries"].as_array().expect("queries");
    let search_of = |q: &Value, shard_ids: Value| {
        q["searches"]
            .as_array()
            .expect("searches")
            .iter()
            .find(|s| s["shard_ids"] == shard_ids)
            .cloned()
            .expect("a search")
    };
    let ids = |results: &Value| -> Vec<Value> {
        results
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["id"].clone())
            .collect()
    };
    let run = set["write"]["run_id"].as_str().expect("run id").to_string();

    let body = serde_json::json!({ "vector": queries[0]["vector"], "top_k": 5 });
    let (status, header_run, answer) = call(serve.post_json("/v1/snapshots/vecs/search", &body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(header_run.as_deref(), Some(run.as_str()));
    assert_eq!(answer["run_id"], run.as_str());
    let want = search_of(&queries[0], Value::Null);
    assert_eq!(ids(&answer["results"]), ids(&want["results"]), "{answer}");
    assert_eq!(answer["shards"].as_array().expect("shards").len(), 3);

    let body = serde_json::json!({ "vectors": [queries[1]["vector"], queries[2]["vector"]], "top_k": 5 });
    let (status, _, answer) = call(serve.post_json("/v1/snapshots/vecs/search", &body)).await;
    assert_eq!(status, 200, "{answer}");
    let batches = answer["batches"].as_array().expect("batches");
    assert_eq!(batches.len(), 2);
    for (b, q) in batches.iter().zip(&queries[1..3]) {
        assert_eq!(ids(&b["results"]), ids(&search_of(q, Value::Null)["results"]));
    }

    let body = serde_json::json!({ "vector": queries[0]["vector"], "top_k": 5, "shard_ids": [1] });
    let (status, _, answer) = call(serve.post_json("/v1/snapshots/vecs/search", &body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        ids(&answer["results"]),
        ids(&search_of(&queries[0], serde_json::json!([1]))["results"])
    );

    let body = serde_json::json!({ "vector": queries[0]["vector"], "top_k": 5, "filter": "tag == \"red\"" });
    let (status, _, answer) = call(serve.post_json("/v1/snapshots/vecs/search", &body)).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 5, "{answer}");
    assert!(results.iter().all(|r| r["payload"]["tag"] == "red"), "{answer}");
    // With values: each hit's value under its id (the key), from the same run.
    let body = serde_json::json!({ "vector": queries[0]["vector"], "top_k": 4, "with_values": true });
    let (status, header_run, answer) = call(serve.post_json("/v1/snapshots/vecs/search", &body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(header_run.as_deref(), Some(run.as_str()));
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 4, "{answer}");
    for r in results {
        assert_eq!(r["value"], format!("v{}", r["id"]), "{answer}");
    }
    let body = serde_json::json!({ "vector": queries[0]["vector"], "filter": "tag ==" });
    let (status, _, answer) = call(serve.post_json("/v1/snapshots/vecs/search", &body)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("does not compile"), "{answer}");

    let body = serde_json::json!({ "vector": [1.0, 2.0] });
    let (status, _, answer) = call(serve.post_json("/v1/snapshots/vecs/search", &body)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("the snapshot's dimension is 8"), "{answer}");
    let body = serde_json::json!({ "vector": [1.0], "vectors": [[1.0]] });
    let (status, _, answer) = call(serve.post_json("/v1/snapshots/vecs/search", &body)).await;
    assert_eq!(status, 400, "{answer}");

    // Past the batch bound, and a body that is not a search: one clear
    // error for that request, and the server answers the next.
    let many: Vec<&Value> = std::iter::repeat_n(&queries[0]["vector"], 257).collect();
    let (status, _, answer) =
        call(serve.post_json("/v1/snapshots/vecs/search", &serde_json::json!({ "vectors": many }))).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.to_string().contains("more than 256 queries"), "{answer}");
    let (status, _, answer) =
        call(serve.post_json("/v1/snapshots/vecs/search", &serde_json::json!({ "vector": ["x"] }))).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("the body is not valid"), "{answer}");
    let body = serde_json::json!({ "vector": queries[0]["vector"], "top_k": 5 });
    let (status, _, _) = call(serve.post_json("/v1/snapshots/vecs/search", &body)).await;
    assert_eq!(status, 200);

    let samples = serve.metrics(None).await;
    assert!(
        metric(
            &samples,
            "sf_serve_requests_total",
            &[("route", "search"), ("status", "200")]
        ) >= 3.0,
        "{samples:?}"
    );
}

/// gRPC `Search` on the real `sf-serve`: without a token it is refused
/// before its message is read; with one, one query and a batch answer
/// with the reference's results and the run id (in the message and the
/// metadata), a shard list and `num_probes` narrow the search as the
/// reference narrowed it, a query of the wrong length is INVALID_ARGUMENT
/// saying why, a batch past 256 RESOURCE_EXHAUSTED, and the calls are
/// counted as `grpc_search`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lookup_service_answers_searches_over_grpc() {
    use sf_server::grpc::proto::{Query, SearchRequest, search_hit};
    use sf_tests::serve::{ServeProcess, metric, with_token, write_tokens};
    let expected = expected();
    let folder = tempfile::tempdir().expect("tokens");
    let tokens = write_tokens(folder.path(), &["search-secret"]);
    let unified = &expected["sets"]["unified_hash"];
    let cluster = &expected["sets"]["vec_cluster"];
    let url = |set: &Value| {
        root()
            .join(set["local_prefix"].as_str().expect("prefix"))
            .display()
            .to_string()
    };
    let (u, c) = (url(unified), url(cluster));
    let serve = ServeProcess::serving(
        &[("vecs", u.as_str()), ("clustered", c.as_str())],
        &["--grpc-listen", "127.0.0.1:0", "--auth-token-file", &tokens],
    );
    serve.wait_ready().await;
    let mut g = serve.grpc_client().await;
    let query = |v: &Value| Query {
        vector: vector(&v["vector_f32le_hex"]),
    };
    let ids = |hits: &[sf_server::grpc::proto::SearchHit]| -> Vec<Value> {
        hits.iter()
            .map(|h| match h.id.clone().expect("an id") {
                search_hit::Id::IntId(i) => Value::from(i),
                search_hit::Id::StrId(s) => Value::from(s),
            })
            .collect()
    };
    let want_ids = |search: &Value| -> Vec<Value> {
        search["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["id"].clone())
            .collect()
    };
    let search_of = |q: &Value, pick: &dyn Fn(&Value) -> bool| -> Value {
        q["searches"]
            .as_array()
            .expect("searches")
            .iter()
            .find(|s| pick(s))
            .cloned()
            .expect("a search")
    };
    let queries = unified["queries"].as_array().expect("queries");
    let request = |snapshot: &str, qs: Vec<Query>| SearchRequest {
        snapshot: snapshot.into(),
        queries: qs,
        top_k: 5,
        ..Default::default()
    };

    let e = g
        .search(request("vecs", vec![query(&queries[0])]))
        .await
        .expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    let run = unified["write"]["run_id"].as_str().expect("run id");
    let answer = g
        .search(with_token(request("vecs", vec![query(&queries[0])]), "search-secret"))
        .await
        .expect("search");
    assert_eq!(
        answer.metadata().get("sf-run-id").and_then(|v| v.to_str().ok()),
        Some(run)
    );
    let answer = answer.into_inner();
    assert_eq!(answer.run_id, run);
    assert_eq!(answer.results.len(), 1);
    let want = search_of(&queries[0], &|s| s["shard_ids"].is_null());
    assert_eq!(ids(&answer.results[0].hits), want_ids(&want));
    for (hit, w) in answer.results[0]
        .hits
        .iter()
        .zip(want["results"].as_array().expect("results"))
    {
        assert!((hit.score - w["score"].as_f64().expect("score")).abs() < 1e-5);
        let payload: Value = hit
            .payload
            .as_deref()
            .map_or(Value::Null, |p| serde_json::from_str(p).expect("payload JSON"));
        assert_eq!(payload, w["payload"]);
    }
    assert_eq!(answer.results[0].shards.len(), 3);

    let batch = g
        .search(with_token(
            request("vecs", queries[1..3].iter().map(query).collect()),
            "search-secret",
        ))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.results.len(), 2);
    for (r, q) in batch.results.iter().zip(&queries[1..3]) {
        assert_eq!(ids(&r.hits), want_ids(&search_of(q, &|s| s["shard_ids"].is_null())));
    }

    let narrowed = g
        .search(with_token(
            SearchRequest {
                shard_ids: vec![1],
                ..request("vecs", vec![query(&queries[0])])
            },
            "search-secret",
        ))
        .await
        .expect("shard_ids")
        .into_inner();
    assert_eq!(narrowed.results[0].shards, vec![1]);
    assert_eq!(
        ids(&narrowed.results[0].hits),
        want_ids(&search_of(&queries[0], &|s| s["shard_ids"] == serde_json::json!([1])))
    );

    let filtered = g
        .search(with_token(
            SearchRequest {
                filter: r#"tag == "red""#.into(),
                ..request("vecs", vec![query(&queries[0])])
            },
            "search-secret",
        ))
        .await
        .expect("filter")
        .into_inner();
    let hits = &filtered.results[0].hits;
    assert_eq!(hits.len(), 5);
    for h in hits {
        let payload: Value = serde_json::from_str(h.payload.as_deref().expect("a payload")).expect("JSON");
        assert_eq!(payload["tag"], "red");
    }

    let valued = g
        .search(with_token(
            SearchRequest {
                with_values: true,
                ..request("vecs", vec![query(&queries[0])])
            },
            "search-secret",
        ))
        .await
        .expect("with values")
        .into_inner();
    for h in &valued.results[0].hits {
        let value = h.value.clone().expect("a value");
        assert!(value.found);
        let id = ids(std::slice::from_ref(h))[0].clone();
        assert_eq!(value.value, format!("v{id}").into_bytes());
    }
    assert!(filtered.results[0].hits.iter().all(|h| h.value.is_none()));
    let e = g
        .search(with_token(
            SearchRequest {
                with_values: true,
                ..request("clustered", vec![query(&cluster["queries"][0])])
            },
            "search-secret",
        ))
        .await
        .expect_err("a vector-only snapshot has no values");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("vector-only"), "{e:?}");

    // A CLUSTER snapshot: each recorded num_probes probes the shards the
    // reference probed, and finds its results.
    let mut probed = 0;
    for q in cluster["queries"].as_array().expect("queries") {
        for search in q["searches"].as_array().expect("searches") {
            let Some(n) = search["num_probes"].as_u64() else {
                continue;
            };
            let answer = g
                .search(with_token(
                    SearchRequest {
                        num_probes: n as u32,
                        ..request("clustered", vec![query(q)])
                    },
                    "search-secret",
                ))
                .await
                .expect("probes")
                .into_inner();
            assert_eq!(
                serde_json::to_value(&answer.results[0].shards).expect("json"),
                search["route"]
            );
            assert_eq!(ids(&answer.results[0].hits), want_ids(search));
            probed += 1;
        }
    }
    assert!(probed > 0);

    let e = g
        .search(with_token(
            request("vecs", vec![Query { vector: vec![1.0, 2.0] }]),
            "search-secret",
        ))
        .await
        .expect_err("wrong length");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("the snapshot's dimension is 8"), "{e:?}");
    let e = g
        .search(with_token(request("vecs", Vec::new()), "search-secret"))
        .await
        .expect_err("no query");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let many = std::iter::repeat_n(query(&queries[0]), 257).collect();
    let e = g
        .search(with_token(request("vecs", many), "search-secret"))
        .await
        .expect_err("past the bound");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("more than 256 queries"), "{e:?}");

    let samples = serve.metrics(Some("search-secret")).await;
    assert!(
        metric(
            &samples,
            "sf_serve_requests_total",
            &[("route", "grpc_search"), ("status", "ok")]
        ) >= 4.0,
        "{samples:?}"
    );
    assert!(
        metric(
            &samples,
            "sf_serve_requests_total",
            &[("route", "grpc_search"), ("status", "unauthenticated")]
        ) >= 1.0,
        "{samples:?}"
    );
}

/// A broken routing artifact in the bucket (the centroids cut short, and
/// then far longer than its shape allows) costs one clear error for the
/// search, naming the file, and nothing else: gets keep working, and a
/// search after the artifact is mended succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_routing_artifact_fails_the_search_clearly_and_nothing_else() {
    let expected = expected();
    let set = &expected["sets"]["vec_cluster"];
    let copy = tempfile::tempdir().expect("scratch");
    let prefix = copy.path().join("vec_cluster");
    sf_tests::snapshots::copy_tree(&root().join(set["local_prefix"].as_str().expect("prefix")), &prefix);
    let artifact = prefix.join(
        set["routing_artifact"]["local_path"]
            .as_str()
            .expect("path")
            .split_once("vec_cluster/")
            .expect("under the set")
            .1,
    );
    let good = std::fs::read(&artifact).expect("centroids");
    let query = vector(&set["queries"][0]["vector_f32le_hex"]);
    let cache = tempfile::tempdir().expect("cache");
    let open = async || {
        sf_tests::readers::open(
            &prefix.display().to_string(),
            sf_tests::readers::settings(sf_reader::SqliteMode::Download, cache.path()),
        )
        .await
    };
    for (broken, want) in [
        (
            good[..good.len() - 5].to_vec(),
            "needs 128 data bytes, the file has 123",
        ),
        ([good.clone(), vec![0u8; 200_000]].concat(), "above the cap of"),
    ] {
        std::fs::write(&artifact, &broken).expect("break");
        let reader = open().await;
        let e = reader
            .search(&query, &sf_reader::SearchOptions::default())
            .await
            .expect_err("a broken artifact");
        let text = e.to_string();
        assert!(text.contains("centroids.npy"), "{text}");
        assert!(text.contains(want), "{text}");
        assert_eq!(
            reader.get(&reader.parse_key("1").expect("key")).await.expect("get"),
            None
        );
        std::fs::write(&artifact, &good).expect("mend");
        assert!(
            !reader
                .search(&query, &sf_reader::SearchOptions::default())
                .await
                .expect("a search once mended")
                .hits
                .is_empty()
        );
        reader.close();
    }
}
