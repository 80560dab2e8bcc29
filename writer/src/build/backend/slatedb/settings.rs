//! `[output.slatedb]`: the bulk-load knobs of SlateDB shards.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use slatedb::config::Settings;

use crate::error::{Error, Result};

const MIB: u64 = 1024 * 1024;

/// "Never stall on L0", as a count SlateDB can do arithmetic with.
const UNLIMITED_L0: usize = 1 << 30;

pub(super) fn mib_to_bytes(mib: u32) -> usize {
    usize::try_from(u64::from(mib) * MIB).unwrap_or(usize::MAX)
}

/// `[output.slatedb]` settings: bulk-load knobs for writing shards.
///
/// There is deliberately no compression setting: shards must stay readable
/// by SlateDB builds without codecs (the reference's Python binding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlateDbSettings {
    /// Size, in MiB, at which the memtable is written out as one L0 SST.
    /// Shards smaller than this become a single SST and need no
    /// compaction; larger values mean fewer, bigger uploads and fewer SSTs
    /// to merge, at the cost of that much memory per shard being uploaded.
    /// Default 64.
    pub l0_sst_size_mib: u32,
    /// Memtables written out but not yet uploaded that may pile up, in MiB,
    /// before writes wait for uploads. Bounds an upload's memory beyond the
    /// active memtable; higher values keep writes going through slow PUTs.
    /// Default 256.
    pub max_unflushed_mib: u32,
    /// Rows per write batch. Rate limits are applied per batch, so smaller
    /// batches follow the limits more smoothly; larger ones cost less per
    /// row. Default 8192.
    pub write_batch_rows: u32,
    /// Upper bound of one write batch's keys and values, in KiB, so that
    /// big values do not make batches huge. Default 4096.
    pub write_batch_kib: u32,
    /// Whether to merge all SSTs of a shard into one sorted run at the end
    /// of the upload (only done when there is more than one). A lookup
    /// then consults one SST instead of every L0 SST (SlateDB knows only
    /// an L0 SST's first key); the price is reading and writing the shard
    /// once more. Default true.
    pub final_compaction: bool,
    /// Largest SST the final compaction writes, in MiB; bigger runs are
    /// split into several SSTs with disjoint key ranges. Fewer, bigger SSTs
    /// mean fewer objects; smaller ones mean smaller indexes for a reader
    /// to load per SST. Default 256.
    pub compacted_sst_size_mib: u32,
    /// Seconds one remote step (opening, one batch, a flush, compaction
    /// without progress, a checkpoint) may take before the attempt fails
    /// as retryable. SlateDB itself retries a failing store forever; this
    /// turns an outage into an error the build can retry. Default 300.
    pub stall_timeout_secs: u64,
}

impl Default for SlateDbSettings {
    fn default() -> Self {
        SlateDbSettings {
            l0_sst_size_mib: 64,
            max_unflushed_mib: 256,
            write_batch_rows: 8192,
            write_batch_kib: 4096,
            final_compaction: true,
            compacted_sst_size_mib: 256,
            stall_timeout_secs: 300,
        }
    }
}

impl SlateDbSettings {
    /// Checks the settings make sense.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("l0_sst_size_mib", u64::from(self.l0_sst_size_mib)),
            ("max_unflushed_mib", u64::from(self.max_unflushed_mib)),
            ("write_batch_rows", u64::from(self.write_batch_rows)),
            ("write_batch_kib", u64::from(self.write_batch_kib)),
            ("compacted_sst_size_mib", u64::from(self.compacted_sst_size_mib)),
            ("stall_timeout_secs", self.stall_timeout_secs),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(Error::config(format!("output.slatedb.{name}"), "must be at least 1"));
            }
        }
        Ok(())
    }

    pub(super) fn stall_timeout(&self) -> Duration {
        Duration::from_secs(self.stall_timeout_secs)
    }

    /// SlateDB settings for bulk loading one shard.
    pub fn db_settings(&self) -> Settings {
        Settings {
            // The spool is the log: a failed upload starts again from it in
            // a new attempt, so a WAL would only write every row twice.
            wal_enabled: false,
            // Flushes happen when the memtable is full and once at the end,
            // not on a timer that would cut small SSTs.
            flush_interval: None,
            l0_sst_size_bytes: mib_to_bytes(self.l0_sst_size_mib),
            max_unflushed_bytes: mib_to_bytes(self.max_unflushed_mib),
            // No compactor runs while writing, so L0 must never refuse
            // another SST (SlateDB would wait forever for a compaction);
            // the final compaction merges them.
            l0_max_ssts: UNLIMITED_L0,
            l0_max_ssts_per_key: UNLIMITED_L0,
            compactor_options: None,
            // Nothing is garbage yet, and a collector must not race the
            // final compaction and checkpoint.
            garbage_collector_options: None,
            compression_codec: None,
            ..Settings::default()
        }
    }
}
