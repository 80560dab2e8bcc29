//! The local cache of downloaded SQLite shards.
//!
//! ```text
//! <cache_dir>/sqlite/<key>.db      the shard file (never modified once there)
//! <cache_dir>/sqlite/<key>.sum     "<xxh3_128:hex> <size>" of that file
//! <cache_dir>/sqlite/.tmp-...      downloads in progress
//! ```
//!
//! `<key>` identifies the content: a SHA-256 of the shard's full URL, its
//! `checkpoint_id`, its checksum and its `db_bytes`, as the manifest
//! records them. Two snapshots never share a file unless all four agree
//! (a manifest that claims another's `checkpoint_id` gets a file of its
//! own). A download streams into a temporary file while hashing, is
//! checked (size against `db_bytes`, digest against the manifest's
//! checksum when there is one), and is then renamed into place: readers in
//! this or any other process see a whole file or none, and reuse it. A
//! temporary file is removed on every path that does not rename it
//! (errors, a body longer than announced, a checksum mismatch, and a
//! download dropped halfway, by a guard). A cached file is checked against
//! the manifest's checksum, or the digest its download recorded, before
//! use; a damaged one is fetched again.
//!
//! What stays in the folder, and eviction under `cache_max_bytes`:
//! `cache_files.rs`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use xxhash_rust::xxh3::Xxh3;

use super::cache_files::{self, Folder, Hold};
use super::spec::ShardIdentity;
use super::spec::ShardSpec;
use crate::error::{Error, Result};
use crate::stats::{Counters, bump};
use sf_manifest::format::checksum::{Coverage, Recorded, file_checksum};
use sf_manifest::format::manifest::SQLITE_MAGIC;

/// Temporary files older than this are leftovers of dead processes.
const STALE_TMP: Duration = Duration::from_secs(3600);
/// Bytes a download gathers before each write to its file.
const DOWNLOAD_BUFFER: usize = 1 << 20;

/// The cache key of a shard's content (see the module docs): its fields
/// length-prefixed, so that no two different identities hash the same
/// text.
pub(crate) fn cache_key(id: &ShardIdentity) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"sf-shard-cache-1");
    let mut field = |value: Option<&[u8]>| match value {
        None => h.update([0u8]),
        Some(v) => {
            h.update([1u8]);
            h.update((v.len() as u64).to_be_bytes());
            h.update(v);
        }
    };
    field(Some(id.url.as_bytes()));
    field(id.checkpoint_id.as_deref().map(str::as_bytes));
    field(id.checksum.as_deref().map(str::as_bytes));
    field(Some(&id.db_bytes.to_be_bytes()[..]));
    hex::encode(h.finalize())
}

/// Removes a temporary file when dropped, unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn new(path: PathBuf) -> Self {
        TempFile { path, armed: true }
    }

    /// The file was renamed away: nothing to remove.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One reader's view of the cache: the folder (shared with the process's
/// other readers of it), whether cached files are verified before use,
/// the bound, and the counters a download or a reuse bumps.
#[derive(Debug)]
pub(crate) struct DownloadCache {
    dir: PathBuf,
    folder: Arc<Folder>,
    verify_checksums: bool,
    max_bytes: Option<u64>,
    counters: Arc<Counters>,
}

/// The folder of cached SQLite files, created if needed; removes temporary
/// files that dead processes left behind.
fn prepare_dir(cache_dir: &Path) -> Result<PathBuf> {
    let dir = cache_dir.join("sqlite");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating the shard cache", &dir, e))?;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| sf_manifest::format::ids::system_now().duration_since(t).ok())
                .is_some_and(|age| age > STALE_TMP);
            if name.to_string_lossy().starts_with(".tmp-") && stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(dir)
}

struct Digest {
    checksum: String,
    size: u64,
}

fn read_sum(path: &Path) -> Option<Digest> {
    let text = std::fs::read_to_string(path).ok()?;
    let (checksum, size) = text.trim().split_once(' ')?;
    Some(Digest {
        checksum: checksum.to_string(),
        size: size.parse().ok()?,
    })
}

fn hash_file(path: &Path) -> std::io::Result<Digest> {
    let (checksum, size) = sf_manifest::format::checksum::hash_file(path)?;
    Ok(Digest { checksum, size })
}

/// Why a cached file cannot be used, or `None` when it can.
fn damage(db: &Path, sum: &Path, expected: Option<&Recorded>, db_bytes: u64, full_check: bool) -> Option<String> {
    let meta = match std::fs::metadata(db) {
        Ok(m) => m,
        Err(e) => return Some(format!("it cannot be read: {e}")),
    };
    if db_bytes > 0 && meta.len() != db_bytes {
        return Some(format!("it has {} bytes, the manifest records {db_bytes}", meta.len()));
    }
    let mut head = [0u8; 16];
    let header_ok = std::fs::File::open(db)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == SQLITE_MAGIC);
    if !header_ok {
        return Some("it has no SQLite header".into());
    }
    if !full_check {
        return None;
    }
    let want = match expected {
        Some(r) => Digest {
            checksum: r.text.clone(),
            size: meta.len(),
        },
        None => match read_sum(sum) {
            Some(d) => d,
            None => return Some("its digest file is missing or unreadable".into()),
        },
    };
    match hash_file(db) {
        Ok(found) if found.checksum == want.checksum && found.size == want.size => None,
        Ok(found) => Some(format!(
            "its content hashes to {} ({} bytes), expected {} ({} bytes)",
            found.checksum, found.size, want.checksum, want.size
        )),
        Err(e) => Some(format!("reading it failed: {e}")),
    }
}

impl DownloadCache {
    /// The cache under `cache_dir` (see `prepare_dir`), bounded by
    /// `max_bytes`.
    pub(crate) fn open(
        cache_dir: &Path,
        verify_checksums: bool,
        max_bytes: Option<u64>,
        counters: Arc<Counters>,
    ) -> Result<Self> {
        let dir = prepare_dir(cache_dir)?;
        Ok(DownloadCache {
            folder: Folder::shared(&dir),
            dir,
            verify_checksums,
            max_bytes,
            counters,
        })
    }

    /// Holds the files of these shards until the hold is dropped (see
    /// `cache_files.rs`).
    pub(crate) fn hold<'a>(&self, ids: impl IntoIterator<Item = &'a ShardIdentity>) -> Hold {
        self.folder.hold(
            ids.into_iter().map(cache_key).collect(),
            self.max_bytes,
            Arc::clone(&self.counters),
        )
    }

    /// An eviction pass (on the blocking pool) when the cache is bounded.
    /// Without a bound there is nothing to evict, and a pass after each
    /// download would list the folder once per shard.
    pub(crate) async fn evict(&self) {
        let Some(bound) = self.max_bytes else {
            return;
        };
        let (folder, counters) = (Arc::clone(&self.folder), Arc::clone(&self.counters));
        let _ = tokio::task::spawn_blocking(move || folder.evict(Some(bound), &counters)).await;
    }

    /// The local path of the shard's SQLite file, downloading it if needed,
    /// and a hold on it for as long as it is read; `None` when the store
    /// has no `shard.db` for it.
    pub(crate) async fn cached_file(&self, spec: &ShardSpec<'_>) -> Result<Option<(PathBuf, Hold)>> {
        let identity = ShardIdentity::of(spec.row, spec.url);
        // Held before it is looked at, so no eviction pass removes it
        // between the check (or the download) and the open.
        let hold = self.hold([&identity]);
        let key = cache_key(&identity);
        let found = self.find_or_fetch(spec, &key).await?;
        if found.is_some() {
            self.folder.touch(&key);
        }
        Ok(found.map(|db| (db, hold)))
    }

    async fn find_or_fetch(&self, spec: &ShardSpec<'_>, key: &str) -> Result<Option<PathBuf>> {
        let dir = self.dir.clone();
        let db = dir.join(format!("{key}.{}", cache_files::DB_EXT));
        let sum = dir.join(format!("{key}.{}", cache_files::SUM_EXT));
        let expected = spec.expected_checksum(Coverage::File);
        let verify = self.verify_checksums;

        if db.exists() {
            let (db2, sum2, exp2, bytes) = (db.clone(), sum.clone(), expected.clone(), spec.row.db_bytes);
            let problem = tokio::task::spawn_blocking(move || damage(&db2, &sum2, exp2.as_ref(), bytes, verify))
                .await
                .map_err(|e| Error::Internal(format!("cache check task failed: {e}")))?;
            match problem {
                None => {
                    bump(&self.counters.cache_hits, 1);
                    return Ok(Some(db));
                }
                Some(why) => {
                    tracing::warn!(shard = %spec.db_id, url = %spec.url, file = %db.display(), "cached shard file is damaged ({why}); fetching it again");
                    bump(&self.counters.cache_repairs, 1);
                    let _ = tokio::fs::remove_file(&db).await;
                }
            }
        }

        let file = spec.location.child(sf_manifest::format::layout::SQLITE_SHARD_FILE);
        let res = match file.store.get(&file.path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(spec.store_error(format!("reading {}: {e}", file.url), e)),
        };
        // A file of another size than the manifest records is refused before
        // a byte of it is downloaded (and a body longer than announced is
        // refused as soon as it passes the recorded size, below).
        let declared = spec.row.db_bytes;
        if declared > 0 && res.meta.size != declared {
            return Err(spec.open_error(format!(
                "{} has {} bytes, the manifest records db_bytes {declared}",
                file.url, res.meta.size
            )));
        }
        let tmp = dir.join(format!(".tmp-{key}-{}", sf_manifest::format::ids::unique_hex()));
        let mut tmp_guard = TempFile::new(tmp.clone());
        let result = async {
            // tokio::fs: file writes and the fsync run on the blocking pool,
            // not on the runtime's workers.
            // Buffered: a network body arrives in pieces of a few KiB, and
            // every write of a tokio file is a task on the blocking pool.
            let mut out = tokio::io::BufWriter::with_capacity(
                DOWNLOAD_BUFFER,
                tokio::fs::File::create(&tmp)
                    .await
                    .map_err(|e| Error::io("creating a download file", &tmp, e))?,
            );
            let mut hasher = Xxh3::new();
            let mut size = 0u64;
            let mut stream = sf_manifest::storage::body::body_chunks(res);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| spec.store_error(format!("downloading {}: {e}", file.url), e))?;
                size += chunk.len() as u64;
                if declared > 0 && size > declared {
                    return Err(spec.open_error(format!(
                        "{} is longer than the {declared} bytes the manifest records (db_bytes); \
                         the download stopped at {size} bytes",
                        file.url
                    )));
                }
                hasher.update(&chunk);
                out.write_all(&chunk)
                    .await
                    .map_err(|e| Error::io("writing a download file", &tmp, e))?;
            }
            out.flush()
                .await
                .map_err(|e| Error::io("writing a download file", &tmp, e))?;
            out.get_ref()
                .sync_all()
                .await
                .map_err(|e| Error::io("syncing a download file", &tmp, e))?;
            drop(out);
            let found = file_checksum(&hasher);
            if spec.row.db_bytes > 0 && size != spec.row.db_bytes {
                return Err(spec.open_error(format!(
                    "{} has {size} bytes, the manifest records db_bytes {}",
                    file.url, spec.row.db_bytes
                )));
            }
            if verify
                && let Some(exp) = &expected
                && exp.text != found
            {
                return Err(Error::ChecksumMismatch {
                    db_id: spec.db_id,
                    url: file.url.clone(),
                    expected: exp.text.clone(),
                    found,
                });
            }
            // The digest first, then the file: a file in place always has one.
            let sum_tmp = dir.join(format!(".tmp-{key}-{}.sum", sf_manifest::format::ids::unique_hex()));
            let mut sum_guard = TempFile::new(sum_tmp.clone());
            tokio::fs::write(&sum_tmp, format!("{found} {size}\n"))
                .await
                .map_err(|e| Error::io("writing a cache digest", &sum_tmp, e))?;
            tokio::fs::rename(&sum_tmp, &sum)
                .await
                .map_err(|e| Error::io("writing a cache digest", &sum, e))?;
            sum_guard.disarm();
            tokio::fs::rename(&tmp, &db)
                .await
                .map_err(|e| Error::io("moving a download into the cache", &db, e))?;
            tmp_guard.disarm();
            bump(&self.counters.downloads, 1);
            bump(&self.counters.download_bytes, size);
            Ok(())
        }
        .await;
        // The guard removes the temporary file (off the runtime's workers)
        // unless it was renamed into place.
        if tmp_guard.armed {
            let _ = tokio::task::spawn_blocking(move || drop(tmp_guard)).await;
        }
        result?;
        self.evict().await;
        Ok(Some(db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::PutPayload;
    use sf_manifest::{Attempt, DbId, ShardRow, StorageOptions, WriterInfo, resolve};

    fn row(db_bytes: u64) -> ShardRow {
        ShardRow {
            db_id: DbId(0),
            db_url: None,
            attempt: Attempt(0),
            row_count: 1,
            db_bytes,
            min_key: None,
            max_key: None,
            checkpoint_id: Some("abc".into()),
            writer_info: WriterInfo::default(),
        }
    }

    #[tokio::test]
    async fn a_shard_of_another_size_than_declared_is_refused_without_being_kept() {
        let location = resolve("memory://dl-test/snap/shards/db=00000", &StorageOptions::new()).expect("resolve");
        let file = location.child(sf_manifest::format::layout::SQLITE_SHARD_FILE);
        let mut body = SQLITE_MAGIC.to_vec();
        body.resize(8192, 0);
        file.store.put(&file.path, PutPayload::from(body)).await.expect("put");
        let cache_dir = tempfile::tempdir().expect("tmp");
        let cache = DownloadCache::open(cache_dir.path(), true, None, Arc::new(Counters::default())).expect("cache");
        for declared in [4096u64, 16384] {
            let row = row(declared);
            let spec = ShardSpec {
                db_id: DbId(0),
                row: &row,
                location: &location,
                url: &location.url,
                whole_snapshot_fits: false,
            };
            let e = cache.cached_file(&spec).await.expect_err("wrong size");
            assert_eq!(sf_manifest::Classified::kind(&e), sf_manifest::ErrorKind::Data);
            let text = e.to_string();
            assert!(text.contains(&format!("db_bytes {declared}")), "{text}");
        }
        let left: Vec<_> = std::fs::read_dir(cache_dir.path().join("sqlite"))
            .expect("list")
            .collect();
        assert!(left.is_empty(), "nothing is kept: {left:?}");
    }

    #[test]
    fn a_temporary_file_goes_with_its_guard_unless_renamed() {
        let dir = tempfile::tempdir().expect("tmp");
        let (gone, kept) = (dir.path().join(".tmp-a"), dir.path().join(".tmp-b"));
        for p in [&gone, &kept] {
            std::fs::write(p, b"partial").expect("write");
        }
        drop(TempFile::new(gone.clone()));
        let mut renamed = TempFile::new(kept.clone());
        renamed.disarm();
        drop(renamed);
        assert!(!gone.exists() && kept.exists());
    }

    #[test]
    fn the_key_changes_with_every_part_of_the_identity() {
        let row = row(4096);
        let base = ShardIdentity::of(&row, "s3://b/a/shards/db=00000/attempt=00");
        let mut variants = vec![base.clone()];
        let mut v = base.clone();
        v.url = "s3://b/other/shards/db=00000/attempt=00".into();
        variants.push(v);
        let mut v = base.clone();
        v.checkpoint_id = Some("abd".into());
        variants.push(v);
        let mut v = base.clone();
        v.checkpoint_id = None;
        variants.push(v);
        let mut v = base.clone();
        v.checksum = Some("xxh3_128:00".into());
        variants.push(v);
        let mut v = base.clone();
        v.db_bytes = 4097;
        variants.push(v);
        let keys: std::collections::BTreeSet<String> = variants.iter().map(cache_key).collect();
        assert_eq!(keys.len(), variants.len(), "{keys:?}");
        assert_eq!(
            cache_key(&base),
            cache_key(&base.clone()),
            "the same identity, the same key"
        );
        assert!(cache_key(&base).bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
