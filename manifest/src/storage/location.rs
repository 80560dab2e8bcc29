//! The one place that turns a storage URL and its options into an object
//! store and a path inside it.
//!
//! | URL | store |
//! |---|---|
//! | `file:///abs/dir`, `/abs/dir`, `./rel/dir` | local file system (with compare-and-swap, see [`LocalStore`]) |
//! | `memory://name/dir` | a process-wide in-memory store per `name` |
//! | `s3://bucket/dir` (also `s3a://`) | Amazon S3 or compatible |
//! | `gs://bucket/dir` | Google Cloud Storage |
//! | `az://container/dir` (also `abfs[s]://`, `azure://`) | Azure Blob Storage |
//!
//! Cloud stores take their settings from the usual environment variables
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*`) and from [`StorageOptions`], which win.
//! Emulators are reached the same way: Azurite with
//! `AZURE_STORAGE_USE_EMULATOR=true` and `AZURITE_BLOB_STORAGE_URL`, a GCS
//! emulator through a service account file (`GOOGLE_SERVICE_ACCOUNT`) that
//! holds its `gcs_base_url` and `"disable_oauth": true` (docs/storage.md).
//! Option values are never formatted into errors or logs: [`StorageOptions`]'s
//! `Debug` shows keys only.
//!
//! Two options are ShardForge's own and apply to every cloud store: how
//! often a failing request is retried and for how long, before the failure
//! is reported (and classified, see [`crate::store_error_kind`]):
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `max_retries` | 10 | retries of one request (network errors, timeouts, 5xx, throttling) |
//! | `retry_timeout` | `3m` | give up retrying one request after this long (`30s`, `2m`, ...) |
//!
//! Idle pooled connections are dropped after 4 s ([`POOL_IDLE_TIMEOUT`])
//! unless `pool_idle_timeout` says otherwise.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

use crate::error::{Error, Result};
use crate::storage::local::LocalStore;

/// Settings for a store, by object_store's configuration key names
/// (`aws_endpoint` or `endpoint`, `aws_region` or `region`,
/// `aws_allow_http`, `google_service_account`, `azure_storage_account_name`,
/// ...). Credentials are best left to the environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StorageOptions(BTreeMap<String, String>);

impl StorageOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces one option.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Adds or replaces one option.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into().to_ascii_lowercase(), value.into());
    }

    /// Parses `key=value` (as given on a command line).
    pub fn insert_pair(&mut self, pair: &str) -> Result<()> {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Error::invalid("storage option", format!("{:?} is not key=value", redact_pair(pair))))?;
        if k.trim().is_empty() {
            return Err(Error::invalid("storage option", "empty key"));
        }
        self.insert(k.trim(), v);
        Ok(())
    }

    /// Whether there are no options.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The options, values included: handle with care.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for StorageOptions {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut o = StorageOptions::new();
        for (k, v) in iter {
            o.insert(k, v);
        }
        o
    }
}

impl fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys only: values may be secrets.
        f.debug_set().entries(self.0.keys()).finish()
    }
}

fn redact_pair(pair: &str) -> String {
    match pair.split_once('=') {
        Some((k, _)) => format!("{k}=***"),
        None if pair.len() > 32 => format!("{}...", pair.chars().take(8).collect::<String>()),
        None => pair.to_string(),
    }
}

/// A store and a path in it, with the URL they came from.
#[derive(Clone)]
pub struct Location {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The path inside the store (no leading or trailing `/`).
    pub path: Path,
    /// The normalised URL: scheme, authority and path without a trailing `/`.
    pub url: String,
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Location")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Location {
    /// The location of `key` below this one.
    pub fn child(&self, key: &str) -> Location {
        let mut path = self.path.clone();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            path = path.child(part);
        }
        Location {
            store: Arc::clone(&self.store),
            path,
            url: crate::format::layout::join_url(&self.url, key),
        }
    }

    /// Path of `key` below this location.
    pub fn path_of(&self, key: &str) -> Path {
        self.child(key).path
    }

    /// The file behind this location when it is on the local file system
    /// (a `file://` URL or a plain path, not a registered store): a writer
    /// with a finished local file can then place it without copying bytes.
    pub fn local_file(&self) -> Option<std::path::PathBuf> {
        let local: &Arc<dyn ObjectStore> = &LOCAL_STORE;
        if !std::ptr::addr_eq(Arc::as_ptr(&self.store), Arc::as_ptr(local)) {
            return None;
        }
        LOCAL.path_to_filesystem(&self.path).ok()
    }
}

static REGISTERED: LazyLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = LazyLock::new(Default::default);

/// Makes [`resolve`] return `store` for every URL under `base`
/// (`scheme://authority`, any scheme): a way to hand in a preconfigured or
/// wrapped store (a custom client, a fault-injecting wrapper in tests).
pub fn register_store(base: &str, store: Arc<dyn ObjectStore>) {
    crate::sync::lock(&REGISTERED).insert(base.trim_end_matches('/').to_string(), store);
}

/// Undoes [`register_store`].
pub fn unregister_store(base: &str) {
    crate::sync::lock(&REGISTERED).remove(base.trim_end_matches('/'));
}

static MEMORY_STORES: LazyLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = LazyLock::new(Default::default);
static CLOUD_STORES: LazyLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = LazyLock::new(Default::default);
static LOCAL: LazyLock<Arc<LocalStore>> = LazyLock::new(|| Arc::new(LocalStore::new()));
static LOCAL_STORE: LazyLock<Arc<dyn ObjectStore>> = LazyLock::new(|| Arc::clone(&*LOCAL) as Arc<dyn ObjectStore>);

/// Resolves `url` with `options` into a [`Location`].
///
/// Cloud stores are cached per bucket and options, so resolving many URLs
/// in one bucket shares one client and its connection pool.
pub fn resolve(url: &str, options: &StorageOptions) -> Result<Location> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    if url.trim().is_empty() {
        return Err(invalid("empty URL".into()));
    }
    if !url.contains("://") {
        return resolve_local_path(std::path::Path::new(url), options, url);
    }
    let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::InvalidUrl {
            url: format!("{}://***@{}", parsed.scheme(), parsed.host_str().unwrap_or("")),
            reason: "credentials in URLs are not accepted; use the environment or storage options".into(),
        });
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(
            "query strings and fragments are not part of a storage URL".into(),
        ));
    }
    let scheme = parsed.scheme().to_ascii_lowercase();
    let base = format!("{scheme}://{}", parsed.host_str().unwrap_or(""));
    let registered = crate::sync::lock(&REGISTERED).get(&base).cloned();
    if let Some(store) = registered {
        let path = url_path(&parsed).map_err(invalid)?;
        return Ok(Location {
            store,
            url: normalised(&base, &path),
            path,
        });
    }
    match scheme.as_str() {
        "file" => {
            let path = parsed
                .to_file_path()
                .map_err(|_| invalid("not an absolute local path".into()))?;
            resolve_local_path(&path, options, url)
        }
        "memory" => {
            no_options(options, "memory://", url)?;
            let name = parsed.host_str().unwrap_or("").to_string();
            let store = {
                let mut stores = crate::sync::lock(&MEMORY_STORES);
                Arc::clone(
                    stores
                        .entry(name.clone())
                        .or_insert_with(|| Arc::new(InMemory::new()) as Arc<dyn ObjectStore>),
                )
            };
            let path = url_path(&parsed).map_err(invalid)?;
            Ok(Location {
                store,
                url: normalised(&format!("memory://{name}"), &path),
                path,
            })
        }
        "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "azure" | "adl" => {
            let bucket = parsed
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| invalid("no bucket or container".into()))?
                .to_string();
            let cache_key = format!("{scheme}://{bucket}\u{0}{}", options_fingerprint(options));
            let store = {
                let mut stores = crate::sync::lock(&CLOUD_STORES);
                match stores.get(&cache_key) {
                    Some(s) => Arc::clone(s),
                    None => {
                        let s = build_cloud(&scheme, &bucket, url, options)?;
                        stores.insert(cache_key, Arc::clone(&s));
                        s
                    }
                }
            };
            let path = url_path(&parsed).map_err(invalid)?;
            Ok(Location {
                store,
                url: normalised(&format!("{scheme}://{bucket}"), &path),
                path,
            })
        }
        other => Err(invalid(format!(
            "unsupported scheme {other:?}; use file://, s3://, gs://, az:// or memory://"
        ))),
    }
}

fn resolve_local_path(path: &std::path::Path, options: &StorageOptions, url: &str) -> Result<Location> {
    no_options(options, "file://", url)?;
    let abs = std::path::absolute(path).map_err(|e| Error::InvalidUrl {
        url: url.to_string(),
        reason: format!("cannot make the path absolute: {e}"),
    })?;
    let text = abs.to_str().ok_or_else(|| Error::InvalidUrl {
        url: url.to_string(),
        reason: "local paths must be UTF-8".into(),
    })?;
    let path = Path::parse(text.trim_start_matches('/')).map_err(|e| Error::InvalidUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Location {
        store: Arc::clone(&LOCAL_STORE),
        url: normalised("file://", &path),
        path,
    })
}

fn no_options(options: &StorageOptions, scheme: &str, url: &str) -> Result<()> {
    if options.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidUrl {
            url: url.to_string(),
            reason: format!("{scheme} takes no storage options (given: {options:?})"),
        })
    }
}

fn url_path(parsed: &url::Url) -> std::result::Result<Path, String> {
    Path::from_url_path(parsed.path()).map_err(|e| e.to_string())
}

/// `base` is `scheme://authority` (empty authority for `file://`).
fn normalised(base: &str, path: &Path) -> String {
    if path.as_ref().is_empty() && base.ends_with("//") {
        format!("{base}/")
    } else {
        format!("{base}/{path}").trim_end_matches('/').to_string()
    }
}

fn options_fingerprint(options: &StorageOptions) -> String {
    // Distinguishes stores built with different options without keeping
    // values in a readable key.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in options.iter() {
        for b in k.bytes().chain([0]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The store option that sets how many times a request is retried.
pub const MAX_RETRIES: &str = "max_retries";
/// The store option that bounds how long one request is retried.
pub const RETRY_TIMEOUT: &str = "retry_timeout";

/// ShardForge's retry options (see the module docs), and the others.
fn retry_config(options: &StorageOptions, url: &str) -> Result<(RetryConfig, Vec<(String, String)>)> {
    let mut retry = RetryConfig::default();
    let mut rest = Vec::new();
    for (k, v) in options.iter() {
        match k {
            MAX_RETRIES => {
                retry.max_retries = v.trim().parse().map_err(|_| Error::InvalidUrl {
                    url: url.to_string(),
                    reason: format!("storage option {MAX_RETRIES} must be a whole number, not {v:?}"),
                })?;
            }
            RETRY_TIMEOUT => {
                retry.retry_timeout = crate::format::duration::parse_duration(v).map_err(|e| Error::InvalidUrl {
                    url: url.to_string(),
                    reason: format!("storage option {RETRY_TIMEOUT}: {e}"),
                })?;
            }
            _ => rest.push((k.to_string(), v.to_string())),
        }
    }
    Ok((retry, rest))
}

fn build_cloud(scheme: &str, bucket: &str, url: &str, options: &StorageOptions) -> Result<Arc<dyn ObjectStore>> {
    let unknown = |k: &str| Error::InvalidUrl {
        url: url.to_string(),
        reason: format!("unknown storage option {k:?} for {scheme}://"),
    };
    let (retry, options) = retry_config(options, url)?;
    // Every cloud store sends reads again whose request never reached the
    // server (`crate::storage::resend`).
    let built = |r: object_store::Result<Arc<dyn ObjectStore>>| {
        r.map(|store| crate::storage::resend::ResendReads::new(store) as Arc<dyn ObjectStore>)
            .map_err(|e| Error::InvalidUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })
    };
    let base_url = format!("{scheme}://{bucket}");
    match scheme {
        "s3" | "s3a" => {
            let mut b = AmazonS3Builder::from_env()
                .with_url(base_url.replace("s3a://", "s3://"))
                .with_retry(retry)
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::PoolIdleTimeout), POOL_IDLE);
            for (k, v) in &options {
                if let Ok(key) = AmazonS3ConfigKey::from_str(k) {
                    b = b.with_config(key, v);
                } else if let Ok(key) = ClientConfigKey::from_str(k) {
                    // On the builder's own client options, which the
                    // environment (`AWS_ALLOW_HTTP`, ...) filled too.
                    b = b.with_config(AmazonS3ConfigKey::Client(key), v);
                } else {
                    return Err(unknown(k));
                }
            }
            built(b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>))
        }
        "gs" => {
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_url(base_url)
                .with_retry(retry)
                .with_config(GoogleConfigKey::Client(ClientConfigKey::PoolIdleTimeout), POOL_IDLE);
            for (k, v) in &options {
                let key = GoogleConfigKey::from_str(k).map_err(|_| unknown(k))?;
                b = b.with_config(key, v);
            }
            built(b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>))
        }
        _ => {
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_url(base_url)
                .with_retry(retry)
                .with_config(AzureConfigKey::Client(ClientConfigKey::PoolIdleTimeout), POOL_IDLE);
            for (k, v) in &options {
                let key = AzureConfigKey::from_str(k).map_err(|_| unknown(k))?;
                b = b.with_config(key, v);
            }
            built(b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>))
        }
    }
}

/// How long an idle pooled connection is kept: below the keep-alive of
/// common servers (Node.js servers such as Azurite close idle connections
/// after 5 s), so that a request never goes out on a connection the server
/// has just closed, which fails as "error sending request" without a
/// retry. Set on the builder's own client options, so the environment's
/// (`AWS_ALLOW_HTTP`, ...) stay; `pool_idle_timeout` in the storage options
/// overrides it.
pub const POOL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);
const POOL_IDLE: &str = "4s";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_pool_timeout_is_a_default_the_options_override() {
        assert_eq!(humantime_secs(POOL_IDLE), POOL_IDLE_TIMEOUT.as_secs());
        for url in ["s3://b/p", "gs://b/p", "az://b/p"] {
            let mut opts = StorageOptions::new().with("pool_idle_timeout", "30s");
            if url.starts_with("az") {
                opts = opts.with("azure_storage_account_name", "acct");
            }
            resolve(url, &opts).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    fn humantime_secs(text: &str) -> u64 {
        text.trim_end_matches('s').parse().expect("seconds")
    }

    #[test]
    fn local_paths_and_file_urls_agree() {
        let a = resolve("file:///tmp/sf/x", &StorageOptions::new()).expect("file url");
        let b = resolve("/tmp/sf/x/", &StorageOptions::new()).expect("path");
        assert_eq!(a.url, "file:///tmp/sf/x");
        assert_eq!(a.url, b.url);
        assert_eq!(a.path.as_ref(), "tmp/sf/x");
        assert_eq!(a.child("manifests/m").url, "file:///tmp/sf/x/manifests/m");
        assert_eq!(
            a.child("db=00001/shard.db").local_file(),
            Some(std::path::PathBuf::from("/tmp/sf/x/db=00001/shard.db"))
        );
        let memory = resolve("memory://shared/x", &StorageOptions::new()).expect("memory");
        assert_eq!(memory.local_file(), None, "only the local file system has files");
    }

    #[test]
    fn memory_urls_share_a_store_per_name() {
        let a = resolve("memory://shared/a", &StorageOptions::new()).expect("a");
        let b = resolve("memory://shared/b", &StorageOptions::new()).expect("b");
        assert!(Arc::ptr_eq(&a.store, &b.store));
        assert_eq!(a.url, "memory://shared/a");
        let c = resolve("memory://other/a", &StorageOptions::new()).expect("c");
        assert!(!Arc::ptr_eq(&a.store, &c.store));
    }

    #[test]
    fn secrets_never_reach_errors_or_debug() {
        let opts = StorageOptions::new()
            .with("aws_secret_access_key", "SUPERSECRET")
            .with("bogus_key", "SUPERSECRET");
        assert!(!format!("{opts:?}").contains("SUPERSECRET"));
        let err = resolve("s3://bucket/p", &opts).expect_err("unknown key").to_string();
        assert!(err.contains("bogus_key"), "{err}");
        assert!(!err.contains("SUPERSECRET"), "{err}");
        let err = resolve("s3://AKIA:SUPERSECRET@bucket/p", &StorageOptions::new())
            .expect_err("userinfo")
            .to_string();
        assert!(!err.contains("SUPERSECRET"), "{err}");
        let mut o = StorageOptions::new();
        let err = o
            .insert_pair("SUPERSECRETSUPERSECRETSUPERSECRETSUPERSECRET")
            .expect_err("no =")
            .to_string();
        assert!(!err.contains("SUPERSECRETSUPERSECRET"), "{err}");
    }

    #[test]
    fn registered_stores_win() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        register_store("custom://box", Arc::clone(&store));
        let l = resolve("custom://box/a/b", &StorageOptions::new()).expect("registered");
        assert!(Arc::ptr_eq(&l.store, &store));
        assert_eq!(l.url, "custom://box/a/b");
        unregister_store("custom://box");
        assert!(resolve("custom://box/a/b", &StorageOptions::new()).is_err());
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, want) in [
            ("ftp://x/y", "unsupported scheme"),
            ("s3:///nobucket", "no bucket"),
            ("", "empty"),
            ("memory://m/p?x=1", "query"),
        ] {
            let err = resolve(url, &StorageOptions::new()).expect_err(url).to_string();
            assert!(err.contains(want), "{url}: {err}");
        }
        let err = resolve("/tmp/x", &StorageOptions::new().with("region", "x"))
            .expect_err("opts")
            .to_string();
        assert!(err.contains("takes no storage options"), "{err}");
    }

    #[test]
    fn retry_options_are_ours_and_checked() {
        let ok = StorageOptions::new()
            .with("aws_region", "us-east-1")
            .with(MAX_RETRIES, "0")
            .with(RETRY_TIMEOUT, "2s");
        resolve("s3://retry-ok/p", &ok).expect("retry options are understood");
        for (k, v, want) in [(MAX_RETRIES, "many", "whole number"), (RETRY_TIMEOUT, "soon", "soon")] {
            let opts = StorageOptions::new().with("aws_region", "us-east-1").with(k, v);
            let err = resolve("s3://retry-bad/p", &opts).expect_err(k).to_string();
            assert!(err.contains(k) && err.contains(want), "{err}");
        }
    }
}
