//! SlateDB shards: a `slatedb::DbReader` rooted at the attempt folder, over
//! the copy-on-write view (`sf_manifest::storage::overlay::CopyOnWriteStore`) so that the
//! shard's prefix is never written.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStore;
use slatedb::DbReader;
use slatedb::config::DbReaderOptions;
use tokio::runtime::Handle;

use super::spec::ShardSpec;
use crate::error::{Error, Result};
use sf_manifest::ErrorKind;
use sf_manifest::format::checksum::{Coverage, KvHasher};
use sf_manifest::storage::overlay::CopyOnWriteStore;

/// An open SlateDB shard.
pub(crate) struct SlateShard {
    reader: Arc<DbReader>,
    runtime: Handle,
}

impl std::fmt::Debug for SlateShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlateShard").finish_non_exhaustive()
    }
}

impl Drop for SlateShard {
    fn drop(&mut self) {
        // DbReader has no Drop of its own: without close() its manifest
        // poller would run on, holding the reader. Closing is async, so it
        // runs as a task on the runtime that opened the shard.
        let reader = Arc::clone(&self.reader);
        self.runtime.spawn(async move {
            if let Err(e) = reader.close().await {
                tracing::debug!("closing a SlateDB shard reader: {e}");
            }
        });
    }
}

/// Whether the attempt folder holds a SlateDB database (a `manifest/` entry).
pub(crate) async fn exists(spec: &ShardSpec<'_>) -> Result<bool> {
    let dir = spec.location.child("manifest");
    let mut listing = dir.store.list(Some(&dir.path));
    match listing.try_next().await {
        Ok(found) => Ok(found.is_some()),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(spec.store_error(format!("listing {}: {e}", dir.url), e)),
    }
}

/// The class of a SlateDB failure: SlateDB says when the store was
/// unavailable; anything else is the shard's own fault.
pub(crate) fn error_kind(e: &slatedb::Error) -> ErrorKind {
    match e.kind() {
        slatedb::ErrorKind::Unavailable => ErrorKind::Unavailable,
        _ => ErrorKind::Data,
    }
}

fn slate_error(spec: &ShardSpec<'_>, doing: &str, e: slatedb::Error) -> Error {
    spec.open_failed(
        format!("SlateDB failed {doing}: {e}"),
        error_kind(&e),
        Some(Box::new(e)),
    )
}

/// Opens the shard read-only; verifies its checksum when asked.
pub(crate) async fn open(spec: &ShardSpec<'_>, verify: bool, runtime: Handle) -> Result<SlateShard> {
    let overlay: Arc<dyn ObjectStore> = Arc::new(CopyOnWriteStore::new(Arc::clone(&spec.location.store)));
    // A published shard never changes: poll its manifest rarely. The
    // checkpoint the reader keeps lives only in the overlay.
    let options = DbReaderOptions {
        manifest_poll_interval: Duration::from_secs(3600),
        checkpoint_lifetime: Duration::from_secs(3 * 3600),
        ..DbReaderOptions::default()
    };
    let reader = DbReader::builder(spec.location.path.clone(), overlay)
        .with_options(options)
        .build()
        .await
        .map_err(|e| slate_error(spec, "opening the database", e))?;
    let shard = SlateShard {
        reader: Arc::new(reader),
        runtime,
    };
    if verify && let Some(expected) = spec.expected_checksum(Coverage::Kv) {
        let mut hasher = KvHasher::default();
        let mut rows = 0u64;
        let mut iter = shard
            .reader
            .scan::<Vec<u8>, _>(..)
            .await
            .map_err(|e| slate_error(spec, "scanning for the checksum", e))?;
        while let Some(kv) = iter
            .next()
            .await
            .map_err(|e| slate_error(spec, "scanning for the checksum", e))?
        {
            hasher.add(&kv.key, &kv.value);
            rows += 1;
        }
        let found = hasher.finish();
        if found != expected.text {
            return Err(Error::ChecksumMismatch {
                db_id: spec.db_id,
                url: spec.url.clone(),
                expected: expected.text,
                found: format!("{found} over {rows} rows"),
            });
        }
    }
    Ok(shard)
}

impl SlateShard {
    pub(crate) async fn get(&self, key: &[u8]) -> std::result::Result<Option<Bytes>, slatedb::Error> {
        // SlateDB returns a slice of a whole 4 KiB block; copy the value so
        // a caller holding it does not pin the block.
        Ok(self.reader.get(key).await?.map(|v| Bytes::copy_from_slice(&v)))
    }

    /// Up to `limit` rows in key order, strictly after `after`.
    pub(crate) async fn scan_page(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> std::result::Result<Vec<(Bytes, Bytes)>, slatedb::Error> {
        use std::ops::Bound;
        let lower = match after {
            Some(k) => Bound::Excluded(k.to_vec()),
            None => Bound::Unbounded,
        };
        let mut iter = self.reader.scan::<Vec<u8>, _>((lower, Bound::Unbounded)).await?;
        let mut out = Vec::with_capacity(limit.min(65_536));
        while out.len() < limit {
            match iter.next().await? {
                Some(kv) => out.push((kv.key, kv.value)),
                None => break,
            }
        }
        Ok(out)
    }
}
