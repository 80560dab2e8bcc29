//! The manifest store: publish protocol, `_CURRENT`, history, run records.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};

use crate::error::{Error, Result};
use crate::format::current::CurrentPointer;
use crate::format::ids::{RunId, Timestamp};
use crate::format::layout;
use crate::format::manifest::Manifest;
use crate::format::run_record::RunRecord;
use crate::storage::location::{Location, StorageOptions, resolve};

/// The version of `_CURRENT` a caller observed (its ETag, or the store's
/// object version). Hand it back to [`ManifestStore::swap_current`] to
/// replace exactly that version and nothing newer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentVersion {
    e_tag: Option<String>,
    version: Option<String>,
}

impl CurrentVersion {
    pub fn describe(&self) -> String {
        match (&self.e_tag, &self.version) {
            (Some(e), _) => format!("ETag {e}"),
            (None, Some(v)) => format!("version {v}"),
            (None, None) => "an unversioned object".to_string(),
        }
    }
}

impl fmt::Display for CurrentVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// `_CURRENT` as read, with the version to swap it against.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentState {
    /// The decoded pointer.
    pub pointer: CurrentPointer,
    /// Its version.
    pub version: CurrentVersion,
}

/// A manifest object written by [`ManifestStore::put_manifest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedManifest {
    /// Full URL of the manifest (what `_CURRENT.manifest_ref` holds).
    pub manifest_ref: String,
    /// Key relative to the prefix.
    pub key: String,
    /// Timestamp in the manifest's folder name.
    pub published_at: Timestamp,
}

/// The outcome of a successful [`ManifestStore::publish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The manifest object.
    pub manifest: PublishedManifest,
    /// The pointer now in `_CURRENT`.
    pub pointer: CurrentPointer,
    /// Its version, for a later swap.
    pub version: CurrentVersion,
}

/// One manifest of a prefix's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// 0 is the newest.
    pub offset: usize,
    /// The run that built it.
    pub run_id: RunId,
    /// Timestamp of its folder name.
    pub published_at: Timestamp,
    /// Full URL.
    pub manifest_ref: String,
}

/// Where snapshots are published, and the protocol that publishes them.
///
/// ```text
///   shard data (all attempts done)
///        │
///        ▼
///   manifests/<ts>_run_id=R/manifest   ← created only if absent, never changed
///        │
///        ▼
///   _CURRENT  ── compare-and-swap on the version the publisher saw ──▶ new pointer
/// ```
///
/// # Guarantees
///
/// - A manifest object is written once: [`put_manifest`](Self::put_manifest)
///   creates it only if nothing is at its key, and fails otherwise.
/// - `_CURRENT` only changes through [`swap_current`](Self::swap_current),
///   which replaces exactly the version the caller observed (or creates
///   `_CURRENT` when the caller observed none). If anyone changed `_CURRENT`
///   in between, the swap fails with [`Error::Conflict`] and writes nothing:
///   of any set of publishers that observed the same version, exactly one
///   wins, and no update is lost or overwritten blindly.
/// - Readers see either the old or the new pointer, never a mix: the object
///   is replaced whole.
///
/// These rest on the store's conditional writes: `If-None-Match`/`If-Match`
/// on S3 and compatible stores, generation preconditions on GCS and Azure,
/// the in-memory store's own checks, and a folder lock on the local file
/// system ([`LocalStore`](crate::storage::local::LocalStore)).
#[async_trait]
pub trait ManifestStore: Send + Sync + fmt::Debug {
    /// URL of the snapshot prefix.
    fn prefix_url(&self) -> &str;

    /// Writes `manifest` under `manifests/`, only if absent.
    async fn put_manifest(&self, manifest: &Manifest) -> Result<PublishedManifest>;

    /// Reads `_CURRENT`; `None` when nothing was ever published.
    async fn load_current(&self) -> Result<Option<CurrentState>>;

    /// Replaces `_CURRENT` if it still is `expected` (`None`: if it does not
    /// exist yet). Fails with [`Error::Conflict`] otherwise.
    async fn swap_current(&self, next: &CurrentPointer, expected: Option<&CurrentVersion>) -> Result<CurrentVersion>;

    /// Reads and decodes the manifest at `manifest_ref` (a full URL under
    /// this prefix, or under the prefix the snapshot was written at).
    async fn load_manifest(&self, manifest_ref: &str) -> Result<Manifest>;

    /// All manifests under `manifests/`, newest first.
    async fn history(&self) -> Result<Vec<HistoryEntry>>;

    /// Writes (or rewrites) a run record at `key`.
    async fn put_run_record(&self, key: &str, record: &RunRecord) -> Result<()>;

    /// All run records under `runs/`, with their keys.
    async fn list_run_records(&self) -> Result<Vec<(String, RunRecord)>>;

    /// The publish protocol: the manifest (create-if-absent), then a
    /// compare-and-swap of `_CURRENT` against `expected`.
    ///
    /// When `_CURRENT` has already moved past `expected`, nothing is written
    /// and the result is [`Error::Conflict`]. If it moves between the
    /// manifest write and the swap, the manifest stays (immutable, visible
    /// in history, publishable by rollback) and the result is the conflict.
    async fn publish(&self, manifest: &Manifest, expected: Option<&CurrentVersion>) -> Result<Published> {
        let observed = self.load_current().await?;
        let observed_version = observed.as_ref().map(|c| &c.version);
        if observed_version != expected {
            return Err(Error::Conflict {
                location: layout::join_url(self.prefix_url(), layout::CURRENT),
                expected: expected.map(CurrentVersion::describe),
                found: observed_version.map(CurrentVersion::describe),
            });
        }
        let written = self.put_manifest(manifest).await?;
        let pointer = CurrentPointer::new(written.manifest_ref.clone(), manifest.build.run_id.clone());
        let version = self.swap_current(&pointer, expected).await?;
        Ok(Published {
            manifest: written,
            pointer,
            version,
        })
    }
}

/// [`ManifestStore`] over any object_store store.
#[derive(Clone)]
pub struct ObjectManifestStore {
    location: Location,
}

impl fmt::Debug for ObjectManifestStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectManifestStore")
            .field("prefix", &self.location.url)
            .finish()
    }
}

impl ObjectManifestStore {
    /// A store for the prefix at `location`.
    pub fn new(location: Location) -> Self {
        ObjectManifestStore { location }
    }

    /// Resolves `prefix_url` and opens the store there.
    pub fn open(prefix_url: &str, options: &StorageOptions) -> Result<Self> {
        Ok(Self::new(resolve(prefix_url, options)?))
    }

    /// The prefix location.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.location.store
    }

    fn path(&self, key: &str) -> Path {
        self.location.path_of(key)
    }

    fn url(&self, key: &str) -> String {
        layout::join_url(&self.location.url, key)
    }

    /// The location of `url` (a ref stored in a manifest or `_CURRENT`)
    /// relative to this prefix; see [`layout::locate`].
    pub fn locate(&self, url: &str, written_prefix: Option<&str>) -> Result<Location> {
        Ok(self
            .location
            .child(&layout::locate(&self.location.url, written_prefix, url)?))
    }

    async fn get_bytes(&self, key: &str, what: &'static str) -> Result<Bytes> {
        get_bytes(&self.location.store, &self.path(key), what, &self.url(key)).await
    }
}

/// The largest `_CURRENT` a reader accepts. The pointer is a few hundred
/// bytes of JSON; anything near this is not a pointer.
pub const MAX_CURRENT_BYTES: u64 = 64 << 10;

/// The largest manifest a reader accepts. A manifest costs a few hundred
/// bytes per shard, so this admits [`MAX_NUM_DBS`](crate::format::manifest::MAX_NUM_DBS)
/// shards with room to spare, and keeps a hostile object from costing the
/// reader its memory.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 30;

/// Starts reading an object, turning "not found" into [`Error::NotFound`]
/// naming `what`.
async fn get_object(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    what: &'static str,
    url: &str,
) -> Result<object_store::GetResult> {
    match store.get(path).await {
        Ok(r) => Ok(r),
        Err(object_store::Error::NotFound { .. }) => Err(Error::NotFound {
            what,
            location: url.to_string(),
        }),
        Err(e) => Err(Error::store("read", url, e)),
    }
}

/// Reads a whole object, turning "not found" into [`Error::NotFound`] naming `what`.
pub async fn get_bytes(store: &Arc<dyn ObjectStore>, path: &Path, what: &'static str, url: &str) -> Result<Bytes> {
    let res = get_object(store, path, what, url).await?;
    res.bytes().await.map_err(|e| Error::store("read", url, e))
}

/// The error for an object larger than `cap`.
fn too_large(what: &'static str, url: &str, size: u64, cap: u64) -> Error {
    Error::corrupt(
        what,
        url,
        format!("it has {size} bytes or more, above the cap of {cap} bytes for a {what}"),
    )
}

/// The body of `res`, refused as soon as its announced size or the bytes
/// read pass `cap` (never read to its end when it is larger).
async fn capped_body(res: object_store::GetResult, what: &'static str, url: &str, cap: u64) -> Result<Bytes> {
    use futures::StreamExt;
    let size = res.meta.size;
    if size > cap {
        return Err(too_large(what, url, size, cap));
    }
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut stream = crate::storage::body::body_chunks(res);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::store("read", url, e))?;
        let read = (out.len() + chunk.len()) as u64;
        if read > cap {
            return Err(too_large(what, url, read, cap));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// [`get_bytes`] for an object of at most `cap` bytes: a larger one is
/// [`Error::Corrupt`] naming the URL and the cap, and is not read whole.
pub async fn get_bytes_capped(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    what: &'static str,
    url: &str,
    cap: u64,
) -> Result<Bytes> {
    let res = get_object(store, path, what, url).await?;
    capped_body(res, what, url, cap).await
}

#[async_trait]
impl ManifestStore for ObjectManifestStore {
    fn prefix_url(&self) -> &str {
        &self.location.url
    }

    async fn put_manifest(&self, manifest: &Manifest) -> Result<PublishedManifest> {
        self.put_manifest_at(manifest, Timestamp::now()).await
    }

    async fn load_current(&self) -> Result<Option<CurrentState>> {
        let url = self.url(layout::CURRENT);
        let res = match self.location.store.get(&self.path(layout::CURRENT)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::store("read", url, e)),
        };
        let version = CurrentVersion {
            e_tag: res.meta.e_tag.clone(),
            version: res.meta.version.clone(),
        };
        let bytes = capped_body(res, "_CURRENT", &url, MAX_CURRENT_BYTES).await?;
        let pointer = CurrentPointer::from_json_bytes(&bytes, &url)?;
        Ok(Some(CurrentState { pointer, version }))
    }

    async fn swap_current(&self, next: &CurrentPointer, expected: Option<&CurrentVersion>) -> Result<CurrentVersion> {
        let url = self.url(layout::CURRENT);
        let path = self.path(layout::CURRENT);
        let mode = match expected {
            _ if crate::publish::failpoint::sabotaged("ignore-cas-version") => PutMode::Overwrite,
            None => PutMode::Create,
            Some(v) => PutMode::Update(UpdateVersion {
                e_tag: v.e_tag.clone(),
                version: v.version.clone(),
            }),
        };
        let payload = PutPayload::from(next.to_json_bytes());
        match self
            .location
            .store
            .put_opts(&path, payload, PutOptions::from(mode))
            .await
        {
            Ok(r) => Ok(CurrentVersion {
                e_tag: r.e_tag,
                version: r.version,
            }),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotFound { .. },
            ) => {
                let found = match self.location.store.head(&path).await {
                    Ok(meta) => Some(
                        CurrentVersion {
                            e_tag: meta.e_tag,
                            version: meta.version,
                        }
                        .describe(),
                    ),
                    Err(_) => None,
                };
                Err(Error::Conflict {
                    location: url,
                    expected: expected.map(CurrentVersion::describe),
                    found,
                })
            }
            Err(e) => Err(Error::store("compare-and-swap", url, e)),
        }
    }

    async fn load_manifest(&self, manifest_ref: &str) -> Result<Manifest> {
        let loc = self.locate(manifest_ref, None)?;
        let bytes = get_bytes_capped(&loc.store, &loc.path, "manifest", manifest_ref, MAX_MANIFEST_BYTES).await?;
        // Decoding runs SQLite over the file (up to its step budget): on
        // the blocking pool, never on a runtime worker.
        let location = manifest_ref.to_owned();
        tokio::task::spawn_blocking(move || Manifest::from_sqlite_bytes(&bytes, &location))
            .await
            .map_err(|e| Error::Internal(format!("the task decoding manifest {manifest_ref} failed: {e}")))?
    }

    async fn history(&self) -> Result<Vec<HistoryEntry>> {
        let base = self.path(layout::MANIFESTS);
        let metas: Vec<_> = self
            .location
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| Error::store("list", self.url(layout::MANIFESTS), e))?;
        let mut found: Vec<(Timestamp, RunId, String)> = metas
            .into_iter()
            .filter_map(|m| {
                let parts: Vec<_> = m.location.parts().collect();
                let n = parts.len();
                if n < 2 || parts[n - 1].as_ref() != layout::MANIFEST_FILE {
                    return None;
                }
                let dir = parts[n - 2].as_ref().to_string();
                let (ts, run) = layout::parse_manifest_dir_name(&dir)?;
                Some((
                    ts,
                    run,
                    format!("{}/{dir}/{}", layout::MANIFESTS, layout::MANIFEST_FILE),
                ))
            })
            .collect();
        found.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
        Ok(found
            .into_iter()
            .enumerate()
            .map(|(offset, (published_at, run_id, key))| HistoryEntry {
                offset,
                run_id,
                published_at,
                manifest_ref: self.url(&key),
            })
            .collect())
    }

    async fn put_run_record(&self, key: &str, record: &RunRecord) -> Result<()> {
        let url = self.url(key);
        self.location
            .store
            .put(&self.path(key), PutPayload::from(record.to_yaml().into_bytes()))
            .await
            .map(|_| ())
            .map_err(|e| Error::store("write", url, e))
    }

    async fn list_run_records(&self) -> Result<Vec<(String, RunRecord)>> {
        let base = self.path(layout::RUNS);
        let metas: Vec<_> = self
            .location
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| Error::store("list", self.url(layout::RUNS), e))?;
        let mut out = Vec::new();
        let prefix_len = self.location.path.parts().count();
        for m in metas {
            if m.location.filename() != Some(layout::RUN_RECORD_FILE) {
                continue;
            }
            let key = m
                .location
                .parts()
                .skip(prefix_len)
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/");
            let url = self.url(&key);
            let bytes = get_bytes(&self.location.store, &m.location, "run record", &url).await?;
            let text = String::from_utf8_lossy(&bytes);
            out.push((key, RunRecord::from_yaml(&text, &url)?));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

impl ObjectManifestStore {
    /// Writes `manifest` into the folder named for `published_at`, only if
    /// absent ([`ManifestStore::put_manifest`] uses the current time).
    pub async fn put_manifest_at(&self, manifest: &Manifest, published_at: Timestamp) -> Result<PublishedManifest> {
        let bytes = manifest.to_sqlite_bytes()?;
        let key = layout::manifest_key(published_at, &manifest.build.run_id);
        let url = self.url(&key);
        let opts = PutOptions::from(PutMode::Create);
        match self
            .location
            .store
            .put_opts(&self.path(&key), PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(PublishedManifest {
                manifest_ref: url,
                key,
                published_at,
            }),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Err(Error::AlreadyExists {
                    what: "manifest",
                    location: url,
                })
            }
            Err(e) => Err(Error::store("create", url, e)),
        }
    }

    /// Reads one run record.
    pub async fn load_run_record(&self, key: &str) -> Result<RunRecord> {
        let bytes = self.get_bytes(key, "run record").await?;
        RunRecord::from_yaml(&String::from_utf8_lossy(&bytes), &self.url(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::sharding::{KeyEncoding, ShardingSpec};
    use crate::storage::location::StorageOptions;
    use crate::{BuildMeta, Classified, ErrorKind};

    fn memory_store(name: &str) -> ObjectManifestStore {
        ObjectManifestStore::open(&format!("memory://{name}/snap"), &StorageOptions::new()).expect("open")
    }

    #[tokio::test]
    async fn an_oversized_current_is_refused_naming_the_url_and_the_cap() {
        let store = memory_store("big-current");
        let big = vec![b' '; MAX_CURRENT_BYTES as usize + 1];
        store
            .object_store()
            .put(&store.path(layout::CURRENT), PutPayload::from(big))
            .await
            .expect("put");
        let e = store.load_current().await.expect_err("too large");
        assert_eq!(e.kind(), ErrorKind::Data);
        let text = e.to_string();
        assert!(
            text.contains("_CURRENT") && text.contains(&MAX_CURRENT_BYTES.to_string()),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_manifest_above_the_cap_is_refused_before_it_is_read_whole() {
        let store = memory_store("big-manifest");
        let key = "manifests/huge/manifest";
        store
            .object_store()
            .put(&store.path(key), PutPayload::from(vec![0u8; 4096]))
            .await
            .expect("put");
        let url = store.url(key);
        let e = get_bytes_capped(store.object_store(), &store.path(key), "manifest", &url, 1024)
            .await
            .expect_err("above the cap");
        assert_eq!(e.kind(), ErrorKind::Data);
        let text = e.to_string();
        assert!(text.contains(&url) && text.contains("1024"), "{text}");
        let within = get_bytes_capped(store.object_store(), &store.path(key), "manifest", &url, 4096)
            .await
            .expect("at the cap");
        assert_eq!(within.len(), 4096);
    }

    #[tokio::test]
    async fn a_manifest_within_the_cap_still_loads() {
        let store = memory_store("ok-manifest");
        let run = RunId::new("r1").expect("id");
        let manifest = Manifest {
            build: BuildMeta::new(
                run,
                4,
                "memory://ok-manifest/snap",
                "k",
                ShardingSpec::hash(),
                KeyEncoding::U64Be,
            ),
            shards: vec![],
        };
        let published = store.publish(&manifest, None).await.expect("publish");
        let loaded = store
            .load_manifest(&published.manifest.manifest_ref)
            .await
            .expect("load");
        assert_eq!(loaded.build.num_dbs, 4);
        assert!(store.load_current().await.expect("current").is_some());
    }

    #[test]
    fn versions_describe_themselves_by_what_the_store_gave() {
        let v = |e: Option<&str>, n: Option<&str>| CurrentVersion {
            e_tag: e.map(str::to_string),
            version: n.map(str::to_string),
        };
        assert_eq!(v(Some("\"e1\""), Some("7")).describe(), "ETag \"e1\"");
        assert_eq!(v(None, Some("7")).to_string(), "version 7");
        assert_eq!(v(None, None).to_string(), "an unversioned object");
    }

    #[tokio::test]
    async fn a_swap_against_a_stale_version_is_a_conflict_and_changes_nothing() {
        let store = memory_store("stale-swap");
        assert_eq!(store.prefix_url(), "memory://stale-swap/snap");
        assert!(format!("{store:?}").contains("memory://stale-swap/snap"));
        let run = RunId::new("r1").expect("run");
        let p = |m: &str| CurrentPointer::new(format!("memory://stale-swap/snap/manifests/{m}/manifest"), run.clone());
        let v1 = store.swap_current(&p("a"), None).await.expect("create");
        let e = store.swap_current(&p("x"), None).await.expect_err("exists");
        assert_eq!(e.kind(), ErrorKind::Conflict);
        let v2 = store.swap_current(&p("b"), Some(&v1)).await.expect("update");
        let e = store.swap_current(&p("c"), Some(&v1)).await.expect_err("stale");
        assert_eq!(e.kind(), ErrorKind::Conflict);
        let now = store.load_current().await.expect("read").expect("current");
        assert_eq!(now.pointer.manifest_ref, p("b").manifest_ref);
        assert_eq!(now.version, v2);
    }

    #[tokio::test]
    async fn run_records_read_back_as_written() {
        let store = memory_store("records");
        let record = RunRecord::start(
            RunId::new("r1").expect("run"),
            store.prefix_url(),
            std::time::Duration::from_secs(60),
        );
        let key = layout::run_record_key(record.started_at, &record.run_id, &"0".repeat(32));
        store.put_run_record(&key, &record).await.expect("put");
        assert_eq!(store.load_run_record(&key).await.expect("load"), record);
        assert_eq!(store.list_run_records().await.expect("list"), vec![(key, record)]);
    }

    #[tokio::test]
    async fn history_lists_manifests_newest_first_and_nothing_else() {
        // A prefix some folders deep: the manifest's folder is found from
        // the end of its key, whatever the depth.
        let store = ObjectManifestStore::open("memory://history/a/b/snap", &StorageOptions::new()).expect("open");
        let now = Timestamp::now().as_micros();
        let manifest = |run: &str| Manifest {
            build: BuildMeta::new(
                RunId::new(run).expect("run"),
                1,
                store.prefix_url(),
                "k",
                ShardingSpec::hash(),
                KeyEncoding::U64Be,
            ),
            shards: Vec::new(),
        };
        for (run, hours) in [("r1", 2), ("r2", 1), ("r3", 3)] {
            let at = Timestamp::from_micros(now - hours * 3_600_000_000).expect("time");
            let written = store.put_manifest_at(&manifest(run), at).await.expect("put");
            // Another object in a manifest's folder is not a manifest.
            let folder = written.key.rsplit_once('/').expect("a folder").0;
            let beside = format!("{folder}/notes.txt");
            store
                .object_store()
                .put(&store.path(&beside), PutPayload::from_static(b"x"))
                .await
                .expect("put");
        }
        let history = store.history().await.expect("history");
        let runs: Vec<(usize, String)> = history.iter().map(|h| (h.offset, h.run_id.to_string())).collect();
        assert_eq!(runs, vec![(0, "r2".into()), (1, "r1".into()), (2, "r3".into())]);
    }

    #[tokio::test]
    async fn a_body_longer_than_announced_is_refused_once_it_passes_the_cap() {
        use futures::StreamExt as _;
        let chunks = vec![Ok(Bytes::from_static(b"a")), Ok(Bytes::from(vec![b'b'; 10]))];
        let res = object_store::GetResult {
            payload: object_store::GetResultPayload::Stream(futures::stream::iter(chunks).boxed()),
            meta: object_store::ObjectMeta {
                location: Path::from("snap/_CURRENT"),
                last_modified: chrono::DateTime::UNIX_EPOCH,
                // The store announces 5 bytes and sends 11.
                size: 5,
                e_tag: None,
                version: None,
            },
            range: 0..5,
            attributes: Default::default(),
        };
        let e = capped_body(res, "_CURRENT", "memory://t/snap/_CURRENT", 10)
            .await
            .expect_err("past the cap");
        assert_eq!(e.kind(), ErrorKind::Data);
        assert!(e.to_string().contains("10"), "{e}");
    }
}
