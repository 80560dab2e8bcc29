//! The object stores a scheduler or executor reads and writes through.
//!
//! A Ballista process knows nothing in advance about the buckets a job
//! uses, so its DataFusion runtime gets a [`JobStoreRegistry`]: a URL it has
//! not seen is resolved on first use with ShardForge's own resolver
//! (`sf_manifest::resolve`), from the job's shipped storage options
//! (credentials excluded) and this process's environment (`AWS_*`,
//! `GOOGLE_*`, `AZURE_*`), which is where credentials come from.

use std::path::Path;
use std::sync::Arc;

use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::SessionConfig;
use object_store::ObjectStore;
use sf_manifest::StorageOptions;
use url::Url;

use crate::options::ShardForgeOptions;

/// Resolves unknown cloud URLs with the job's storage options.
#[derive(Debug)]
pub struct JobStoreRegistry {
    inner: DefaultObjectStoreRegistry,
    options: StorageOptions,
}

impl JobStoreRegistry {
    /// A registry resolving with `options` (and the environment).
    pub fn new(options: StorageOptions) -> Self {
        JobStoreRegistry {
            inner: DefaultObjectStoreRegistry::new(),
            options,
        }
    }
}

impl ObjectStoreRegistry for JobStoreRegistry {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.inner.get_store(url) {
            return Ok(store);
        }
        let base = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
        let location = sf_manifest::resolve(&base, &self.options)
            .map_err(|e| DataFusionError::Configuration(format!("object store for {base}: {e}")))?;
        let base_url = Url::parse(&base).map_err(|e| DataFusionError::Configuration(format!("{base}: {e}")))?;
        self.inner.register_store(&base_url, Arc::clone(&location.store));
        Ok(location.store)
    }
}

/// The runtime of one task or planning session: a [`JobStoreRegistry`]
/// from the session's `shardforge.*` settings, the job's memory limit per
/// task (sorts spill beyond it), and spill files under `temp_dir`.
pub fn runtime_for(config: &SessionConfig, temp_dir: Option<&Path>) -> DfResult<Arc<RuntimeEnv>> {
    let options = config
        .options()
        .extensions
        .get::<ShardForgeOptions>()
        .cloned()
        .unwrap_or_default();
    let mut builder =
        RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(JobStoreRegistry::new(options.storage_options())));
    if let Some(mib) = options.memory_limit_mib() {
        builder = builder.with_memory_limit((mib as usize) << 20, 1.0);
    }
    if let Some(dir) = temp_dir {
        builder = builder.with_temp_file_path(dir);
    }
    builder.build_arc()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_urls_resolve_once_and_local_files_stay_local() {
        let registry = JobStoreRegistry::new(StorageOptions::new());
        let file = registry
            .get_store(&Url::parse("file:///tmp/x").expect("url"))
            .expect("file store");
        assert!(file.to_string().contains("LocalFileSystem"), "{file}");
        let url = Url::parse("memory://registry-test/a/b").expect("url");
        let first = registry.get_store(&url).expect("memory store");
        let second = registry.get_store(&url).expect("memory store again");
        assert!(Arc::ptr_eq(&first, &second), "resolved once, then cached");
        assert!(registry.get_store(&Url::parse("ftp://host/x").expect("url")).is_err());
    }
}
