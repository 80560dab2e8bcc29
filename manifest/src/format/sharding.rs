//! The routing contract's types: key encodings, keys, the sharding spec.
//!
//! These are plain data with serde mappings that match docs/FORMAT.md byte for
//! byte; `sf-router` implements the behaviour on top of them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The manifest's `format_version` this build writes and reads.
pub const FORMAT_VERSION: i64 = 4;

/// How keys are stored in a shard (`k` column of SQLite, SlateDB keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyEncoding {
    /// 8-byte big-endian unsigned integer.
    #[serde(rename = "u64be")]
    U64Be,
    /// 4-byte big-endian unsigned integer.
    #[serde(rename = "u32be")]
    U32Be,
    /// UTF-8 text.
    #[serde(rename = "utf8")]
    Utf8,
    /// Bytes as they are.
    #[serde(rename = "raw")]
    Raw,
}

impl KeyEncoding {
    /// All encodings, in documentation order.
    pub const ALL: [KeyEncoding; 4] = [
        KeyEncoding::U64Be,
        KeyEncoding::U32Be,
        KeyEncoding::Utf8,
        KeyEncoding::Raw,
    ];

    /// The name stored in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyEncoding::U64Be => "u64be",
            KeyEncoding::U32Be => "u32be",
            KeyEncoding::Utf8 => "utf8",
            KeyEncoding::Raw => "raw",
        }
    }

    /// Whether keys of this encoding are integers.
    pub fn is_integer(self) -> bool {
        matches!(self, KeyEncoding::U64Be | KeyEncoding::U32Be)
    }
}

impl fmt::Display for KeyEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyEncoding {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        KeyEncoding::ALL.into_iter().find(|e| e.as_str() == s).ok_or_else(|| {
            Error::invalid(
                "key_encoding",
                format!("{s:?}; expected one of u64be, u32be, utf8, raw"),
            )
        })
    }
}

/// A key value as a user gives it and as the manifest records bounds.
///
/// Integers that fit `i64` are always [`Key::Int`]; [`Key::UInt`] holds only
/// values above `i64::MAX` (use [`Key::from_u64`] to keep that invariant).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// A signed integer.
    Int(i64),
    /// An unsigned integer above `i64::MAX`.
    UInt(u64),
    /// Text.
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

/// Prefix that marks hex-encoded bytes where only text fits (manifest key
/// bounds, routing tokens, CLI arguments for `raw` keys).
pub const HEX_PREFIX: &str = "hex:";

impl Key {
    /// An unsigned integer, normalised to [`Key::Int`] when it fits.
    pub fn from_u64(v: u64) -> Key {
        match i64::try_from(v) {
            Ok(i) => Key::Int(i),
            Err(_) => Key::UInt(v),
        }
    }

    /// The key as JSON the way the manifest's `min_key`/`max_key` store it:
    /// a number for integers; a string for text; for bytes, their text when
    /// they are UTF-8 (as the reference writes them), else `"hex:<hex>"`.
    /// Text that itself starts with `hex:` is hex-encoded too, so decoding
    /// is unambiguous for `raw` keys.
    pub fn to_json(&self) -> Value {
        match self {
            Key::Int(i) => Value::from(*i),
            Key::UInt(u) => Value::from(*u),
            Key::Str(s) => Value::from(s.clone()),
            Key::Bytes(b) => Value::from(bytes_as_text(b)),
        }
    }

    /// Reads a manifest key bound back, typed by the snapshot's key encoding.
    pub fn from_json(v: &Value, encoding: KeyEncoding) -> Result<Key> {
        match (v, encoding) {
            (Value::Number(n), _) => {
                if let Some(i) = n.as_i64() {
                    Ok(Key::Int(i))
                } else if let Some(u) = n.as_u64() {
                    Ok(Key::UInt(u))
                } else {
                    Err(Error::invalid("key", format!("{n} is not an integer")))
                }
            }
            (Value::String(s), KeyEncoding::Raw) => Ok(Key::Bytes(text_as_bytes(s)?)),
            (Value::String(s), _) => Ok(Key::Str(s.clone())),
            (other, _) => Err(Error::invalid(
                "key",
                format!("{other} is neither a number nor a string"),
            )),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::UInt(u) => write!(f, "{u}"),
            Key::Str(s) => f.write_str(s),
            Key::Bytes(b) => f.write_str(&bytes_as_text(b)),
        }
    }
}

/// Bytes as text: themselves when UTF-8 and not `hex:`-prefixed, else `hex:<hex>`.
pub fn bytes_as_text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.starts_with(HEX_PREFIX) => s.to_string(),
        _ => format!("{HEX_PREFIX}{}", hex::encode(b)),
    }
}

/// The inverse of [`bytes_as_text`].
pub fn text_as_bytes(s: &str) -> Result<Vec<u8>> {
    match s.strip_prefix(HEX_PREFIX) {
        Some(h) => hex::decode(h).map_err(|e| Error::invalid("key", format!("{s:?} is not valid hex: {e}"))),
        None => Ok(s.as_bytes().to_vec()),
    }
}

/// Routing strategy named in the manifest's `sharding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardingStrategy {
    /// `xxh3_64(canonical key bytes) % num_dbs`.
    Hash,
    /// A CEL expression, direct or categorical.
    Cel,
}

/// The only hash algorithm of format v4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum HashAlgorithm {
    /// xxh3, 64-bit, seed 0.
    #[default]
    #[serde(rename = "xxh3_64")]
    Xxh3_64,
}

/// The type of a column a CEL expression reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CelType {
    /// Signed 64-bit integer.
    Int,
    /// Unsigned 64-bit integer.
    Uint,
    /// UTF-8 text.
    String,
    /// Bytes.
    Bytes,
    /// 64-bit float.
    Double,
    /// Boolean.
    Bool,
}

impl CelType {
    /// The name used in `cel_columns`.
    pub fn as_str(self) -> &'static str {
        match self {
            CelType::Int => "int",
            CelType::Uint => "uint",
            CelType::String => "string",
            CelType::Bytes => "bytes",
            CelType::Double => "double",
            CelType::Bool => "bool",
        }
    }
}

impl fmt::Display for CelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CelType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        serde_json::from_value(Value::from(s)).map_err(|_| {
            Error::invalid(
                "cel column type",
                format!("{s:?}; expected int, uint, string, bytes, double or bool"),
            )
        })
    }
}

/// One categorical routing token. Bytes tokens are stored as text
/// (see [`bytes_as_text`]); a bytes-valued expression matches them by bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RoutingValue {
    /// An integer token.
    Int(i64),
    /// A text (or text-encoded bytes) token.
    Str(String),
}

impl fmt::Display for RoutingValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoutingValue::Int(i) => write!(f, "{i}"),
            RoutingValue::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// The manifest's `sharding` column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardingSpec {
    /// Hash or CEL.
    pub strategy: ShardingStrategy,
    /// Always `xxh3_64` in format v4.
    #[serde(default)]
    pub hash_algorithm: HashAlgorithm,
    /// The CEL expression (CEL strategy only).
    #[serde(default)]
    pub cel_expr: Option<String>,
    /// Column name -> type the expression reads (CEL strategy only).
    #[serde(default)]
    pub cel_columns: Option<BTreeMap<String, CelType>>,
    /// Categorical tokens; `db_id` is a token's index (CEL categorical only).
    #[serde(default)]
    pub routing_values: Option<Vec<RoutingValue>>,
}

impl ShardingSpec {
    /// Hash routing.
    pub fn hash() -> Self {
        ShardingSpec {
            strategy: ShardingStrategy::Hash,
            hash_algorithm: HashAlgorithm::Xxh3_64,
            cel_expr: None,
            cel_columns: None,
            routing_values: None,
        }
    }

    /// CEL routing; categorical when `routing_values` is given.
    pub fn cel(
        expr: impl Into<String>,
        columns: BTreeMap<String, CelType>,
        routing_values: Option<Vec<RoutingValue>>,
    ) -> Self {
        ShardingSpec {
            strategy: ShardingStrategy::Cel,
            hash_algorithm: HashAlgorithm::Xxh3_64,
            cel_expr: Some(expr.into()),
            cel_columns: Some(columns),
            routing_values,
        }
    }

    /// Checks the fields agree with the strategy and with `num_dbs`.
    pub fn validate(&self, num_dbs: u32) -> Result<()> {
        if num_dbs == 0 {
            return Err(Error::invalid("num_dbs", "must be at least 1"));
        }
        match self.strategy {
            ShardingStrategy::Hash => {
                if self.cel_expr.is_some() || self.cel_columns.is_some() || self.routing_values.is_some() {
                    return Err(Error::invalid(
                        "sharding",
                        "hash routing takes no cel_expr, cel_columns or routing_values",
                    ));
                }
            }
            ShardingStrategy::Cel => {
                match &self.cel_expr {
                    Some(e) if !e.trim().is_empty() => {}
                    _ => return Err(Error::invalid("sharding.cel_expr", "CEL routing needs an expression")),
                }
                match &self.cel_columns {
                    Some(c) if !c.is_empty() => {}
                    _ => {
                        return Err(Error::invalid(
                            "sharding.cel_columns",
                            "CEL routing needs at least one typed column",
                        ));
                    }
                }
                if let Some(values) = &self.routing_values {
                    validate_routing_values(values)?;
                    if values.len() != num_dbs as usize {
                        return Err(Error::invalid(
                            "sharding.routing_values",
                            format!(
                                "{} values for num_dbs {num_dbs}; categorical routing needs one value per shard",
                                values.len()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The JSON object stored in the manifest (all five keys, nulls included).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("sharding spec is plain data")
    }
}

/// Routing values must be non-empty, of one type, and unique.
pub fn validate_routing_values(values: &[RoutingValue]) -> Result<()> {
    if values.is_empty() {
        return Err(Error::invalid("routing_values", "must hold at least one value"));
    }
    let ints = values.iter().filter(|v| matches!(v, RoutingValue::Int(_))).count();
    if ints != 0 && ints != values.len() {
        return Err(Error::invalid("routing_values", "must be all integers or all strings"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for v in values {
        if !seen.insert(v) {
            return Err(Error::invalid("routing_values", format!("{v} appears more than once")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::json::{JsonStyle, to_sorted_string};

    #[test]
    fn sharding_json_has_the_reference_shape() {
        let hash = ShardingSpec::hash();
        assert_eq!(
            to_sorted_string(&hash.to_json(), JsonStyle::Python),
            r#"{"cel_columns": null, "cel_expr": null, "hash_algorithm": "xxh3_64", "routing_values": null, "strategy": "hash"}"#
        );
        let cat = ShardingSpec::cel(
            "region",
            BTreeMap::from([("region".to_string(), CelType::String)]),
            Some(vec![
                RoutingValue::Str("ap".into()),
                RoutingValue::Str("eu".into()),
                RoutingValue::Str("us".into()),
            ]),
        );
        let text = to_sorted_string(&cat.to_json(), JsonStyle::Python);
        assert_eq!(
            text,
            r#"{"cel_columns": {"region": "string"}, "cel_expr": "region", "hash_algorithm": "xxh3_64", "routing_values": ["ap", "eu", "us"], "strategy": "cel"}"#
        );
        let back: ShardingSpec = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, cat);
        cat.validate(3).expect("valid");
        assert!(cat.validate(4).is_err());
    }

    #[test]
    fn sharding_rejects_unknown_keys_and_algorithms() {
        let unknown = r#"{"strategy": "hash", "hash_algorithm": "xxh3_64", "extra": 1}"#;
        assert!(serde_json::from_str::<ShardingSpec>(unknown).is_err());
        let algo = r#"{"strategy": "hash", "hash_algorithm": "murmur3"}"#;
        assert!(serde_json::from_str::<ShardingSpec>(algo).is_err());
    }

    #[test]
    fn routing_values_must_be_homogeneous_and_unique() {
        let mixed = [RoutingValue::Int(1), RoutingValue::Str("a".into())];
        assert!(validate_routing_values(&mixed).is_err());
        let dup = [RoutingValue::Int(1), RoutingValue::Int(1)];
        assert!(
            validate_routing_values(&dup)
                .unwrap_err()
                .to_string()
                .contains("more than once")
        );
        assert!(validate_routing_values(&[]).is_err());
    }

    #[test]
    fn key_bounds_are_safe_for_any_bytes() {
        let cases = [
            Key::Bytes(vec![0xff, 0x00, 0x80]),
            Key::Bytes(b"plain".to_vec()),
            Key::Bytes(b"hex:looks-like-hex".to_vec()),
            Key::Bytes(vec![]),
        ];
        for k in cases {
            let j = k.to_json();
            assert!(j.is_string(), "{j}");
            assert_eq!(Key::from_json(&j, KeyEncoding::Raw).expect("decode"), k);
        }
        assert_eq!(Key::Bytes(vec![0xff]).to_json(), Value::from("hex:ff"));
        assert_eq!(Key::from_u64(u64::MAX).to_json(), serde_json::json!(u64::MAX));
        assert_eq!(
            Key::from_json(&serde_json::json!(u64::MAX), KeyEncoding::U64Be).expect("u64"),
            Key::UInt(u64::MAX)
        );
        assert_eq!(
            Key::from_json(&Value::from("user:0"), KeyEncoding::Utf8).expect("str"),
            Key::Str("user:0".into())
        );
    }

    #[test]
    fn encodings_parse_by_name() {
        for e in KeyEncoding::ALL {
            assert_eq!(e.as_str().parse::<KeyEncoding>().expect("parse"), e);
        }
        assert!(
            "u16be"
                .parse::<KeyEncoding>()
                .unwrap_err()
                .to_string()
                .contains("u64be")
        );
    }
}
