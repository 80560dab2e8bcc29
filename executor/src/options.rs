//! Job settings that travel with every Ballista session, and the rule that
//! keeps credentials out of everything shipped to the cluster.
//!
//! Ballista forwards a session's configuration entries from the client to
//! the scheduler and to every task on the executors. [`ShardForgeOptions`]
//! is a DataFusion config extension (prefix `shardforge`) carrying what the
//! scheduler and executors need to build their own runtime for a job: the
//! job's `[storage]` options (without credentials) for the object stores
//! they read inputs from, and the per-task memory limit.

use std::any::Any;
use std::collections::BTreeMap;

use datafusion::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::error::{DataFusionError, Result as DfResult};
use sf_manifest::StorageOptions;

/// Key prefix of [`ShardForgeOptions`] in a session configuration.
pub const PREFIX: &str = "shardforge";
const STORAGE: &str = "storage.";
const MEMORY_LIMIT: &str = "memory_limit_mib";

/// Whether a storage option names a credential.
///
/// Such options are never shipped to the scheduler or executors (in plans
/// or session settings); the cluster's processes take credentials from
/// their own environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`) or instance
/// identity. The test is deliberately broad: a setting wrongly taken for a
/// secret only has to be given to the executors' environment too.
pub fn is_secret_option(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    const WORDS: [&str; 9] = [
        "secret",
        "token",
        "password",
        "credential",
        "sas",
        "signature",
        "private",
        "access_key",
        "account_key",
    ];
    WORDS.iter().any(|w| k.contains(w)) || k == "key" || k.ends_with("_key")
}

/// `options` without the entries [`is_secret_option`] names.
pub fn without_secrets(options: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    options
        .iter()
        .filter(|(k, _)| !is_secret_option(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The `shardforge.*` session settings.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ShardForgeOptions {
    storage: BTreeMap<String, String>,
    memory_limit_mib: Option<u64>,
}

impl std::fmt::Debug for ShardForgeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys only, like StorageOptions: values are not for logs.
        f.debug_struct("ShardForgeOptions")
            .field("storage", &self.storage.keys().collect::<Vec<_>>())
            .field("memory_limit_mib", &self.memory_limit_mib)
            .finish()
    }
}

impl ShardForgeOptions {
    /// Settings for a job: its storage options minus credentials, and its
    /// memory limit per task.
    pub fn for_job(storage: &BTreeMap<String, String>, memory_limit_mib: u64) -> Self {
        ShardForgeOptions {
            storage: without_secrets(storage),
            memory_limit_mib: Some(memory_limit_mib),
        }
    }

    /// The storage options (never holding credentials).
    pub fn storage_options(&self) -> StorageOptions {
        self.storage.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Memory one task may use before sorts spill, in MiB.
    pub fn memory_limit_mib(&self) -> Option<u64> {
        self.memory_limit_mib
    }
}

impl ExtensionOptions for ShardForgeOptions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> DfResult<()> {
        if let Some(option) = key.strip_prefix(STORAGE) {
            if option.is_empty() {
                return Err(DataFusionError::Configuration(format!(
                    "{PREFIX}.{key}: empty storage option name"
                )));
            }
            if is_secret_option(option) {
                return Err(DataFusionError::Configuration(format!(
                    "{PREFIX}.{key} names a credential; credentials are not shipped to the cluster, \
                     give them to the scheduler and executors through their environment"
                )));
            }
            self.storage.insert(option.to_ascii_lowercase(), value.to_string());
            return Ok(());
        }
        if key == MEMORY_LIMIT {
            let mib = value.parse::<u64>().map_err(|e| {
                DataFusionError::Configuration(format!("{PREFIX}.{key}: {value:?} is not a number of MiB: {e}"))
            })?;
            self.memory_limit_mib = Some(mib);
            return Ok(());
        }
        Err(DataFusionError::Configuration(format!(
            "{PREFIX}.{key} is not a ShardForge setting (known: {PREFIX}.{MEMORY_LIMIT}, {PREFIX}.{STORAGE}<option>)"
        )))
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        // Full keys: Ballista sends these to the scheduler and executors,
        // which set them back through `ConfigOptions::set`.
        let mut out: Vec<ConfigEntry> = self
            .storage
            .iter()
            .map(|(k, v)| ConfigEntry {
                key: format!("{PREFIX}.{STORAGE}{k}"),
                value: Some(v.clone()),
                description: "object_store option for the job's URLs (credentials excluded)",
            })
            .collect();
        out.push(ConfigEntry {
            key: format!("{PREFIX}.{MEMORY_LIMIT}"),
            value: self.memory_limit_mib.map(|m| m.to_string()),
            description: "memory one task may use before sorts spill, in MiB",
        });
        out
    }
}

impl ConfigExtension for ShardForgeOptions {
    const PREFIX: &'static str = PREFIX;
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionConfig;

    use super::*;

    #[test]
    fn credentials_are_recognised() {
        for k in [
            "aws_secret_access_key",
            "secret_access_key",
            "aws_access_key_id",
            "access_key_id",
            "aws_session_token",
            "token",
            "google_service_account_key",
            "azure_storage_account_key",
            "azure_storage_sas_key",
            "azure_client_secret",
            "bearer_token",
            "password",
        ] {
            assert!(is_secret_option(k), "{k} is a credential");
        }
        for k in [
            "endpoint",
            "aws_endpoint",
            "region",
            "aws_region",
            "allow_http",
            "aws_virtual_hosted_style_request",
            "google_service_account",
        ] {
            assert!(!is_secret_option(k), "{k} is not a credential");
        }
    }

    #[test]
    fn settings_round_trip_through_session_entries_without_secrets() {
        let storage = BTreeMap::from([
            ("endpoint".to_string(), "http://127.0.0.1:9000".to_string()),
            ("aws_secret_access_key".to_string(), "hush-7f3a".to_string()),
        ]);
        let sent = SessionConfig::new().with_option_extension(ShardForgeOptions::for_job(&storage, 64));
        let entries = sent.options().entries();
        assert!(
            entries
                .iter()
                .all(|e| !e.value.as_deref().unwrap_or("").contains("hush-7f3a")),
            "the secret is not among the entries"
        );
        // What a scheduler or executor does with the entries it receives.
        let mut received = SessionConfig::new().with_option_extension(ShardForgeOptions::default());
        for e in entries.iter().filter(|e| e.key.starts_with("shardforge.")) {
            if let Some(v) = &e.value {
                received.options_mut().set(&e.key, v).expect("set");
            }
        }
        let got = received
            .options()
            .extensions
            .get::<ShardForgeOptions>()
            .expect("extension")
            .clone();
        assert_eq!(got.memory_limit_mib(), Some(64));
        assert_eq!(
            got.storage_options(),
            StorageOptions::new().with("endpoint", "http://127.0.0.1:9000")
        );
        let e = received
            .options_mut()
            .set("shardforge.storage.aws_secret_access_key", "x")
            .expect_err("credentials are refused");
        assert!(e.to_string().contains("credential"), "{e}");
        assert!(received.options_mut().set("shardforge.nope", "1").is_err());
    }
}
