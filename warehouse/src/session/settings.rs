//! Session settings: what every session of a [`Driver`](super::Driver)
//! gets, applied by the pool's factory when it creates the session.

use std::collections::BTreeMap;

use datafusion::prelude::SessionConfig;

use crate::error::{Error, Result};
use crate::names::{CATALOG_PREFIX, Catalogs};

/// Namespaces a session setting may be in: the engine's two and
/// ShardForge's own.
pub const NAMESPACES: [&str; 3] = ["datafusion.", "ballista.", "sf."];

/// Session settings, `key = value`, keys in [`NAMESPACES`]:
///
/// - `datafusion.*`: DataFusion's options (`datafusion.execution.batch_size`,
///   `datafusion.execution.target_partitions`, ...), set on every session;
///   a key or value DataFusion refuses fails the borrow that creates the
///   session, with the key in the message;
/// - `ballista.*`: Ballista's options, for sessions on a cluster (an
///   embedded session refuses them the same way);
/// - `sf.*`: ShardForge's own: catalogs (`sf.catalog.<name>.warehouse`,
///   their storage options, `sf.catalog.<name>.num_dbs`,
///   `sf.catalog.default`), registered in every session.
///
/// A key set twice keeps the last value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSettings {
    pairs: BTreeMap<String, String>,
}

impl SessionSettings {
    /// No settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`; a key outside [`NAMESPACES`] is refused.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let key = key.trim();
        if !NAMESPACES.iter().any(|ns| key.len() > ns.len() && key.starts_with(ns)) {
            return Err(Error::Setting {
                key: key.to_string(),
                message: "not a session setting: keys are datafusion.*, ballista.* or sf.*".into(),
            });
        }
        if key.starts_with("sf.") && !key.starts_with(CATALOG_PREFIX) {
            return Err(Error::Setting {
                key: key.to_string(),
                message: format!(
                    "not a ShardForge setting (known: {CATALOG_PREFIX}<name>.warehouse and its options, sf.catalog.default)"
                ),
            });
        }
        self.pairs.insert(key.to_string(), value.trim().to_string());
        Ok(())
    }

    /// These settings and `key = value`.
    pub fn with(mut self, key: &str, value: &str) -> Result<Self> {
        self.set(key, value)?;
        Ok(self)
    }

    /// Every setting, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The engine's settings (`datafusion.*`, `ballista.*`).
    pub fn engine(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter().filter(|(k, _)| !k.starts_with("sf."))
    }

    /// ShardForge's settings (`sf.*`).
    pub fn shardforge(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter().filter(|(k, _)| k.starts_with("sf."))
    }

    /// The value of `key`, when set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.get(key).map(String::as_str)
    }

    /// The catalogs the `sf.catalog.*` settings configure.
    pub fn catalogs(&self) -> Result<Catalogs> {
        Catalogs::from_settings(self.shardforge())
    }

    /// Applies the engine's settings to `config`, in key order; the first
    /// the engine refuses is [`Error::Setting`] naming it.
    pub fn apply(&self, config: &mut SessionConfig) -> Result<()> {
        for (key, value) in self.engine() {
            config.options_mut().set(key, value).map_err(|e| Error::Setting {
                key: key.to_string(),
                message: format!("{value:?} was refused by the engine: {e}"),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sf_manifest::Classified;

    #[test]
    fn keys_must_be_in_a_namespace_and_the_engine_checks_its_own() {
        let s = SessionSettings::new()
            .with("datafusion.execution.batch_size", "1234")
            .expect("datafusion")
            .with("sf.catalog.wh.warehouse", "memory://w")
            .expect("catalog");
        assert_eq!(
            s.engine().collect::<Vec<_>>(),
            vec![("datafusion.execution.batch_size", "1234")]
        );
        assert_eq!(s.catalogs().expect("catalogs").default_name(), "wh");
        let mut config = SessionConfig::new();
        s.apply(&mut config).expect("apply");
        assert_eq!(config.batch_size(), 1234);

        for (key, want) in [
            ("spark.sql.shuffle.partitions", "datafusion.*, ballista.* or sf.*"),
            ("datafusion.", "datafusion.*, ballista.* or sf.*"),
            ("sf.memory", "not a ShardForge setting"),
        ] {
            let e = SessionSettings::new().with(key, "1").expect_err(key);
            assert!(matches!(&e, Error::Setting { key: k, .. } if k == key), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
        for (key, value) in [
            ("datafusion.execution.batch_size", "lots"),
            ("datafusion.execution.no_such_option", "1"),
            ("ballista.job.name", "x"),
        ] {
            let s = SessionSettings::new().with(key, value).expect("namespaced");
            let e = s.apply(&mut SessionConfig::new()).expect_err(key);
            assert!(e.to_string().starts_with(&format!("session setting {key}: ")), "{e}");
            assert_eq!(e.kind(), sf_manifest::ErrorKind::Config);
        }
    }
}
