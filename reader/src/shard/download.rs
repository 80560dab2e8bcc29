//! The local cache of downloaded SQLite shards.
//!
//! ```text
//! <cache_dir>/sqlite/<key>.db      the shard file (never modified once there)
//! <cache_dir>/sqlite/<key>.sum     "<xxh3_128:hex> <size>" of that file
//! <cache_dir>/sqlite/.tmp-...      downloads in progress
//! ```
//!
//! `<key>` is the shard's `checkpoint_id` (an identity of its content), or
//! a hash of its URL when the manifest has none. A download streams into a
//! temporary file while hashing, is checked (size against `db_bytes`,
//! digest against the manifest's checksum when there is one), and is then
//! renamed into place: readers in this or any other process see a whole
//! file or none, and reuse it. A cached file is checked against the
//! manifest's checksum, or the digest its download recorded, before use;
//! a damaged one is fetched again.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use xxhash_rust::xxh3::{Xxh3, xxh3_128};

use super::spec::ShardSpec;
use crate::error::{Error, Result};
use crate::stats::{Counters, bump};
use sf_manifest::format::checksum::{Coverage, Recorded, file_checksum};
use sf_manifest::format::manifest::SQLITE_MAGIC;

/// Temporary files older than this are leftovers of dead processes.
const STALE_TMP: Duration = Duration::from_secs(3600);
/// Bytes a download gathers before each write to its file.
const DOWNLOAD_BUFFER: usize = 1 << 20;

fn cache_key(spec: &ShardSpec<'_>) -> String {
    match spec.row.checkpoint_id.as_deref() {
        Some(id)
            if !id.is_empty()
                && id.len() <= 128
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            id.to_string()
        }
        _ => format!(
            "url-{:032x}",
            xxh3_128(format!("{}\u{0}{}", spec.url, spec.row.db_bytes).as_bytes())
        ),
    }
}

/// One reader's view of the cache: the folder, whether cached files are
/// verified before use, and the counters a download or a reuse bumps.
#[derive(Debug)]
pub(crate) struct DownloadCache {
    dir: PathBuf,
    verify_checksums: bool,
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
    /// The cache under `cache_dir` (see `prepare_dir`).
    pub(crate) fn open(cache_dir: &Path, verify_checksums: bool, counters: Arc<Counters>) -> Result<Self> {
        Ok(DownloadCache {
            dir: prepare_dir(cache_dir)?,
            verify_checksums,
            counters,
        })
    }

    /// The local path of the shard's SQLite file, downloading it if needed;
    /// `None` when the store has no `shard.db` for it.
    pub(crate) async fn cached_file(&self, spec: &ShardSpec<'_>) -> Result<Option<PathBuf>> {
        let dir = self.dir.clone();
        let key = cache_key(spec);
        let db = dir.join(format!("{key}.db"));
        let sum = dir.join(format!("{key}.sum"));
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
            tokio::fs::write(&sum_tmp, format!("{found} {size}\n"))
                .await
                .map_err(|e| Error::io("writing a cache digest", &sum_tmp, e))?;
            tokio::fs::rename(&sum_tmp, &sum)
                .await
                .map_err(|e| Error::io("writing a cache digest", &sum, e))?;
            tokio::fs::rename(&tmp, &db)
                .await
                .map_err(|e| Error::io("moving a download into the cache", &db, e))?;
            bump(&self.counters.downloads, 1);
            bump(&self.counters.download_bytes, size);
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result.map(|()| Some(db))
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
        let cache = DownloadCache::open(cache_dir.path(), true, Arc::new(Counters::default())).expect("cache");
        for declared in [4096u64, 16384] {
            let row = row(declared);
            let spec = ShardSpec {
                db_id: DbId(0),
                row: &row,
                location: &location,
                url: &location.url,
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
}
