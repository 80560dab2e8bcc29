//! A remote SQLite file read by byte ranges, through the shared block cache.
//!
//! SQLite calls the VFS synchronously, so [`RemoteFile::read_at`] blocks
//! its thread on the async object store with `Handle::block_on`. Queries of
//! range-mode shards therefore always run on tokio's blocking pool (see
//! `ShardHandle::get`), never on a runtime worker; were one to get here
//! from a worker, `block_on` panics, the VFS turns the panic into an I/O
//! error, and the query fails instead of stalling the runtime.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use object_store::ObjectStore;
use object_store::path::Path;
use sf_manifest::ErrorKind;
use tokio::runtime::Handle;

use crate::block_cache::BlockCache;
use crate::stats::{Counters, bump};

/// One remote SQLite file; see the module docs.
#[derive(Debug)]
pub(crate) struct RemoteFile {
    pub(crate) id: u64,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) path: Path,
    pub(crate) url: String,
    pub(crate) size: u64,
    pub(crate) block: u64,
    pub(crate) cache: Arc<BlockCache>,
    pub(crate) runtime: Handle,
    pub(crate) counters: Arc<Counters>,
    last_error: Mutex<Option<RangeError>>,
}

impl RemoteFile {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        store: Arc<dyn ObjectStore>,
        path: Path,
        url: String,
        size: u64,
        block: u64,
        cache: Arc<BlockCache>,
        runtime: Handle,
        counters: Arc<Counters>,
    ) -> Self {
        RemoteFile {
            id,
            store,
            path,
            url,
            size,
            block,
            cache,
            runtime,
            counters,
            last_error: Mutex::new(None),
        }
    }

    /// Fills `out` from `offset`; returns how many bytes the file had there
    /// (fewer than asked at its end).
    pub(crate) fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<usize, RangeError> {
        if offset >= self.size || out.is_empty() {
            return Ok(0);
        }
        let end = (offset + out.len() as u64).min(self.size);
        let first = offset / self.block;
        let last = (end - 1) / self.block;
        let mut blocks: Vec<Option<Bytes>> = (first..=last).map(|b| self.cache.get((self.id, b))).collect();
        if let (Some(lo), Some(hi)) = (
            blocks.iter().position(Option::is_none),
            blocks.iter().rposition(Option::is_none),
        ) {
            // One GET for the span of missing blocks (SQLite reads a page at
            // a time, so this is nearly always a single block).
            let start = (first + lo as u64) * self.block;
            let stop = ((first + hi as u64 + 1) * self.block).min(self.size);
            let data = self.fetch(start, stop)?;
            for (i, slot) in blocks.iter_mut().enumerate().take(hi + 1).skip(lo) {
                let b_start = (first + i as u64) * self.block - start;
                let b_end = (b_start + self.block).min(data.len() as u64);
                let block = data.slice(b_start as usize..b_end as usize);
                self.cache.insert((self.id, first + i as u64), block.clone());
                *slot = Some(block);
            }
        }
        let mut written = 0usize;
        for (i, block) in blocks.into_iter().enumerate() {
            let block = block.ok_or_else(|| RangeError {
                kind: ErrorKind::Internal,
                message: "block missing after fetch".into(),
            })?;
            let b_start = (first + i as u64) * self.block;
            let from = offset.max(b_start) - b_start;
            let to = (end.min(b_start + block.len() as u64)).saturating_sub(b_start);
            if from >= to {
                continue;
            }
            let chunk = &block[from as usize..to as usize];
            out[written..written + chunk.len()].copy_from_slice(chunk);
            written += chunk.len();
        }
        Ok(written)
    }

    fn fetch(&self, start: u64, stop: u64) -> Result<Bytes, RangeError> {
        let store = Arc::clone(&self.store);
        let path = self.path.clone();
        let data = self
            .runtime
            .block_on(async move { store.get_range(&path, start..stop).await })
            .map_err(|e| RangeError {
                kind: sf_manifest::store_error_kind(&e),
                message: format!("ranged read {start}..{stop} of {}: {e}", self.url),
            })?;
        if (data.len() as u64) != stop - start {
            return Err(RangeError {
                kind: ErrorKind::Data,
                message: format!(
                    "ranged read {start}..{stop} of {} returned {} bytes; the object changed or is shorter than its {} bytes",
                    self.url,
                    data.len(),
                    self.size
                ),
            });
        }
        bump(&self.counters.range_requests, 1);
        bump(&self.counters.range_bytes, data.len() as u64);
        Ok(data)
    }

    /// Remembers why the last read failed, for the error SQLite's generic
    /// "disk I/O error" replaces.
    pub(crate) fn set_error(&self, e: RangeError) {
        *sf_manifest::sync::lock(&self.last_error) = Some(e);
    }

    /// Takes the last read failure.
    pub(crate) fn take_error(&self) -> Option<RangeError> {
        sf_manifest::sync::lock(&self.last_error).take()
    }
}

/// Why a ranged read failed, with the class of the failure (the store's,
/// classified as every object-store error is), since SQLite reports only
/// a generic I/O error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RangeError {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
}

impl std::fmt::Display for RangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::PutPayload;
    use object_store::memory::InMemory;

    #[test]
    fn reads_any_span_through_blocks() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("f");
        rt.block_on(store.put(&path, PutPayload::from(data.clone())))
            .expect("put");
        let counters = Arc::new(Counters::default());
        let f = RemoteFile::new(
            1,
            store,
            path,
            "memory://f".into(),
            data.len() as u64,
            4096,
            Arc::new(BlockCache::new(1 << 20)),
            rt.handle().clone(),
            Arc::clone(&counters),
        );
        for (off, len) in [(0usize, 100usize), (4000, 200), (8190, 5000), (9999, 1), (0, 10_000)] {
            let mut out = vec![0u8; len];
            let n = f.read_at(off as u64, &mut out).expect("read");
            let want = &data[off..(off + len).min(data.len())];
            assert_eq!(n, want.len());
            assert_eq!(&out[..n], want, "{off}+{len}");
        }
        let mut out = [0u8; 4];
        assert_eq!(f.read_at(20_000, &mut out).expect("past end"), 0);
        let requests = counters.snapshot().range_requests;
        assert!(requests <= 3, "blocks are fetched once: {requests}");
    }
}
