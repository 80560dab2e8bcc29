//! The row router: one key (or one routing context) -> one db id.

use std::collections::BTreeMap;

use sf_manifest::{BuildMeta, CelType, DbId, Key, KeyEncoding, ShardingSpec, ShardingStrategy};

use crate::cel::{CelRouting, ContextValue, Routed};
use crate::error::{Error, Result};
use crate::key::{encode_key, encode_key_into, shard_hash};

/// Name a CEL expression uses for the key when `cel_columns` is `{"key": ..}`.
pub const KEY_VARIABLE: &str = "key";

/// Routes keys to shards exactly as the snapshot's writer did.
///
/// Built once per snapshot (CEL is compiled here); `Send + Sync`.
#[derive(Debug)]
pub struct Router {
    num_dbs: u32,
    key_encoding: KeyEncoding,
    cel: Option<CelRouting>,
    fast_mod: FastMod,
}

impl Router {
    /// A router for `spec` over `num_dbs` shards.
    pub fn new(spec: &ShardingSpec, num_dbs: u32, key_encoding: KeyEncoding) -> Result<Self> {
        spec.validate(num_dbs).map_err(|e| Error::Spec(e.to_string()))?;
        let cel = match spec.strategy {
            ShardingStrategy::Hash => None,
            ShardingStrategy::Cel => {
                let expr = spec.cel_expr.as_deref().unwrap_or_default();
                let columns = spec.cel_columns.clone().unwrap_or_default();
                Some(CelRouting::compile(
                    expr,
                    &columns,
                    spec.routing_values.as_deref(),
                    num_dbs,
                )?)
            }
        };
        Ok(Router {
            num_dbs,
            key_encoding,
            cel,
            fast_mod: FastMod::new(num_dbs),
        })
    }

    /// Hash routing over `num_dbs` shards.
    pub fn hash(num_dbs: u32, key_encoding: KeyEncoding) -> Result<Self> {
        Self::new(&ShardingSpec::hash(), num_dbs, key_encoding)
    }

    /// The router a manifest's build metadata describes.
    pub fn for_build(build: &BuildMeta) -> Result<Self> {
        Self::new(&build.sharding, build.num_dbs, build.key_encoding)
    }

    /// Number of shards.
    pub fn num_dbs(&self) -> u32 {
        self.num_dbs
    }

    /// Key encoding of the snapshot.
    pub fn key_encoding(&self) -> KeyEncoding {
        self.key_encoding
    }

    /// The CEL program, on the CEL path.
    pub fn cel(&self) -> Option<&CelRouting> {
        self.cel.as_ref()
    }

    /// Whether a lookup needs routing columns besides the key: CEL routing
    /// whose `cel_columns` is anything but exactly `{"key": ..}`.
    pub fn needs_context(&self) -> bool {
        self.cel
            .as_ref()
            .is_some_and(|c| !(c.columns().len() == 1 && c.columns().contains_key(KEY_VARIABLE)))
    }

    /// The bytes a shard stores for `key`.
    pub fn encode_key(&self, key: &Key) -> Result<Vec<u8>> {
        encode_key(key, self.key_encoding)
    }

    /// [`encode_key`](Self::encode_key), appended to `out` (which an error
    /// leaves as it was).
    pub fn encode_key_into(&self, key: &Key, out: &mut Vec<u8>) -> Result<()> {
        encode_key_into(key, self.key_encoding, out)
    }

    /// `hash % num_dbs`.
    #[inline]
    pub fn reduce(&self, hash: u64) -> u32 {
        self.fast_mod.reduce(hash)
    }

    /// The `hash % num_dbs` reducer, to copy into a hot loop.
    #[inline]
    pub(crate) fn reducer(&self) -> FastMod {
        self.fast_mod
    }

    /// Routes a key. For categorical CEL an unknown token is
    /// [`Routed::UnknownToken`] (a miss on read, an error on write).
    pub fn route_key(&self, key: &Key) -> Result<Routed> {
        match &self.cel {
            None => Ok(Routed::Db(self.reduce(shard_hash(key)?))),
            Some(cel) => {
                if self.needs_context() {
                    return Err(Error::MissingColumn {
                        column: cel.columns().keys().cloned().collect::<Vec<_>>().join(", "),
                        hint: "; this snapshot routes by CEL over those columns, so a lookup needs their values as routing context".into(),
                    });
                }
                let ty = cel.columns()[KEY_VARIABLE];
                let mut scope = cel.scope();
                scope.set(KEY_VARIABLE, key_as_context(key, ty)?);
                scope.route()
            }
        }
    }

    /// Routes by a routing context (CEL over non-key columns). Every
    /// declared column must be present.
    pub fn route_context(&self, context: &BTreeMap<String, ContextValue>) -> Result<Routed> {
        let Some(cel) = &self.cel else {
            return Err(Error::Spec("hash routing takes the key, not a routing context".into()));
        };
        let mut scope = cel.scope();
        for name in cel.columns().keys() {
            let v = context.get(name).ok_or_else(|| Error::MissingColumn {
                column: name.clone(),
                hint: " from the routing context".into(),
            })?;
            scope.set(name, v.clone());
        }
        scope.route()
    }

    /// Like [`route_key`](Self::route_key) but an unknown token is an error,
    /// as it is for a writer.
    pub fn route_key_strict(&self, key: &Key) -> Result<DbId> {
        match self.route_key(key)? {
            Routed::Db(d) => Ok(DbId(d)),
            Routed::UnknownToken => Err(Error::UnknownToken {
                token: key.to_string(),
                row: None,
            }),
        }
    }
}

/// A key as the value of the `key` CEL column of type `ty`.
pub fn key_as_context(key: &Key, ty: CelType) -> Result<ContextValue> {
    let wrong = || Error::WrongType {
        what: "key for CEL column \"key\"".into(),
        expected: ty.to_string(),
        found: crate::key::describe(key),
    };
    Ok(match (ty, key) {
        (CelType::Int, Key::Int(i)) => ContextValue::Int(*i),
        (CelType::Uint, Key::Int(i)) => ContextValue::UInt(u64::try_from(*i).map_err(|_| wrong())?),
        (CelType::Uint, Key::UInt(u)) => ContextValue::UInt(*u),
        (CelType::String, Key::Str(s)) => ContextValue::Str(s.clone()),
        (CelType::String, Key::Bytes(b)) => ContextValue::Str(String::from_utf8(b.clone()).map_err(|_| wrong())?),
        (CelType::Bytes, Key::Bytes(b)) => ContextValue::Bytes(b.clone()),
        (CelType::Bytes, Key::Str(s)) => ContextValue::Bytes(s.as_bytes().to_vec()),
        (CelType::Double, Key::Int(i)) => ContextValue::Double(*i as f64),
        _ => return Err(wrong()),
    })
}

/// `x % d` for a fixed `d`, without a hardware division on the hot path
/// (Lemire, Kaser, Kurz: "Faster remainder by direct computation", 2019,
/// extended to 64-bit numerators with a 128-bit magic number).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastMod {
    d: u64,
    m: u128,
}

impl FastMod {
    pub(crate) fn new(d: u32) -> Self {
        let d = u64::from(d.max(1));
        FastMod {
            d,
            m: (u128::MAX / u128::from(d)).wrapping_add(1),
        }
    }

    #[inline]
    pub(crate) fn reduce(&self, x: u64) -> u32 {
        if self.d == 1 {
            return 0;
        }
        let low = self.m.wrapping_mul(u128::from(x));
        // High 64 bits of the 192-bit product low * d.
        let lo = u128::from(low as u64) * u128::from(self.d);
        let hi = (low >> 64) * u128::from(self.d);
        ((hi + (lo >> 64)) >> 64) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_router_reports_its_shards_and_encodes_by_its_encoding() {
        let r = Router::hash(7, KeyEncoding::U32Be).expect("router");
        assert_eq!(r.num_dbs(), 7);
        assert_eq!(r.key_encoding(), KeyEncoding::U32Be);
        assert_eq!(r.encode_key(&Key::Int(258)).expect("u32"), vec![0, 0, 1, 2]);
        assert!(r.encode_key(&Key::Str("x".into())).is_err());
    }

    #[test]
    fn keys_become_the_key_column_of_each_cel_type() {
        let ok = |ty, key: Key| key_as_context(&key, ty).expect("fits");
        assert_eq!(ok(CelType::Int, Key::Int(-2)), ContextValue::Int(-2));
        assert_eq!(ok(CelType::Uint, Key::Int(5)), ContextValue::UInt(5));
        assert_eq!(ok(CelType::Uint, Key::UInt(u64::MAX)), ContextValue::UInt(u64::MAX));
        assert_eq!(ok(CelType::String, Key::Str("a".into())), ContextValue::Str("a".into()));
        assert_eq!(
            ok(CelType::String, Key::Bytes(b"b".to_vec())),
            ContextValue::Str("b".into())
        );
        assert_eq!(
            ok(CelType::Bytes, Key::Bytes(vec![0xff])),
            ContextValue::Bytes(vec![0xff])
        );
        assert_eq!(
            ok(CelType::Bytes, Key::Str("c".into())),
            ContextValue::Bytes(b"c".to_vec())
        );
        assert_eq!(ok(CelType::Double, Key::Int(3)), ContextValue::Double(3.0));
        assert!(key_as_context(&Key::Int(-1), CelType::Uint).is_err());
        assert!(key_as_context(&Key::Bytes(vec![0xff]), CelType::String).is_err());
        assert!(key_as_context(&Key::Str("x".into()), CelType::Int).is_err());
    }

    #[test]
    fn fast_mod_equals_remainder() {
        let xs = [
            0u64,
            1,
            2,
            3,
            7,
            1 << 32,
            (1 << 32) + 5,
            u64::MAX,
            u64::MAX - 1,
            0x9e37_79b9_7f4a_7c15,
        ];
        for d in [1u32, 2, 3, 4, 7, 10, 1000, 65_537, u32::MAX, u32::MAX - 1, 1 << 31] {
            let f = FastMod::new(d);
            for x in xs {
                assert_eq!(u64::from(f.reduce(x)), x % u64::from(d), "{x} % {d}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(50_000))]

        /// The reduction checked against the hardware remainder, which
        /// shares no code with it, over any divisor a spec can hold and any
        /// hash (the kernel and the row router both use `reduce`, so their
        /// agreement alone would not catch a bug here).
        #[test]
        fn fast_mod_agrees_with_the_remainder_for_any_divisor(d in 1u32..=u32::MAX, x in proptest::prelude::any::<u64>()) {
            proptest::prop_assert_eq!(u64::from(FastMod::new(d).reduce(x)), x % u64::from(d));
        }

        /// Small divisors (the usual shard counts) near the edges of the
        /// hash range, where a carry in the 192-bit product would show.
        #[test]
        fn fast_mod_agrees_near_the_edges(d in 1u32..=4096, delta in 0u64..1 << 20) {
            let f = FastMod::new(d);
            for x in [delta, u64::MAX - delta, (1u64 << 63) ^ delta, (1u64 << 32).wrapping_sub(delta)] {
                proptest::prop_assert_eq!(u64::from(f.reduce(x)), x % u64::from(d), "{} % {}", x, d);
            }
        }
    }

    #[test]
    fn context_routing_needs_every_column() {
        let spec = ShardingSpec::cel(
            "region",
            BTreeMap::from([("region".to_string(), CelType::String)]),
            Some(vec![sf_manifest::RoutingValue::Str("eu".into())]),
        );
        let r = Router::new(&spec, 1, KeyEncoding::U64Be).expect("router");
        assert!(r.needs_context());
        let e = r.route_key(&Key::Int(1)).unwrap_err();
        assert!(e.to_string().contains("routing context"), "{e}");
        let e = r.route_context(&BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("region"), "{e}");
        let ctx = BTreeMap::from([("region".to_string(), ContextValue::Str("eu".into()))]);
        assert_eq!(r.route_context(&ctx).expect("route"), Routed::Db(0));
    }
}
