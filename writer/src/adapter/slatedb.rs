//! The SlateDB backend: one SlateDB database per shard, rooted at the
//! attempt folder itself (docs/FORMAT.md).
//!
//! Phase 1 ([`ShardBuilder`]) needs the rows sorted by key, each key once
//! (the shard sorter's output). It streams them to a
//! local spool file of records (`u32` LE key length, key, `u32` LE value
//! length, value), so memory is the write buffer whatever the shard's size.
//! The checksum is xxh3-128 over exactly those records, in key order
//! (`xxh3_128-kv:<hex>`): it describes the logical content, so it can be
//! recomputed from any SlateDB scan of the shard.
//!
//! Phase 2 ([`StagedShard::upload`]) writes the spool into a fresh database
//! and leaves it ready for read-only use:
//!
//! 1. Write with the WAL off (the spool is the log: a failed upload is
//!    redone from it into a new attempt) and no timed flushes; the memtable
//!    becomes an L0 SST each time it reaches `l0_sst_size_mib`, then once
//!    more at the end. Rows go in write batches under the attempt's rate
//!    limits.
//! 2. Close the writer, then, when more than one SST was written, run one
//!    compaction that merges every L0 SST into a single sorted run (a
//!    standalone SlateDB compactor driven by a scheduler that proposes
//!    exactly that merge), so that a lookup reads one SST, and delete the
//!    L0 SSTs it replaced.
//! 3. Record a durable checkpoint (no expiry, named [`CHECKPOINT_NAME`]) of
//!    the final state. Its UUID, in simple hex, is the shard's
//!    `checkpoint_id`.
//!
//! A reader opens the shard without writing to it through
//! `DbReader::builder(attempt_path, store).with_checkpoint_id(uuid)`, where
//! `uuid` is the manifest's `checkpoint_id`: at a checkpoint SlateDB neither
//! records a checkpoint of its own nor polls the manifest or replays a WAL.
//! Shards written by the reference carry a random `checkpoint_id` that names
//! no checkpoint; [`read_all`] shows how to read those without writing to
//! them too.
//!
//! SlateDB retries failing object-store calls forever. Every remote step
//! here therefore has a stall timeout (`stall_timeout_secs`), after which
//! the attempt fails as retryable and SlateDB's store is cut off, so that
//! its background tasks stop too.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};
use serde::{Deserialize, Serialize};
use sf_manifest::checksum::KvHasher;
use sf_manifest::{Attempt, DbId, Location};
use slatedb::admin::{Admin, AdminBuilder};
use slatedb::compactor::{
    CompactionScheduler, CompactionSchedulerSupplier, CompactionSpec, CompactorStateView, SourceId,
};
use slatedb::config::{CheckpointOptions, CompactorOptions, ScanOptions, Settings, WriteOptions};
use slatedb::manifest::SsTableId;
use slatedb::{Checkpoint, CompactorBuilder, Db, DbReader, ErrorKind, VersionedManifest, WriteBatch};
use tokio::io::{AsyncReadExt, BufReader as AsyncBufReader};

use super::{
    AttemptTarget, BuildContext, Row, ShardBackend, ShardBuilder, ShardContent, StagedShard, Uploaded, is_transient,
    show_key,
};
use crate::error::{Error, Result};
use crate::ratelimit::RateLimiter;

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

    fn stall_timeout(&self) -> Duration {
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

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// "Never stall on L0", as a count SlateDB can do arithmetic with.
const UNLIMITED_L0: usize = 1 << 30;

/// Name of the durable checkpoint an upload leaves for readers.
pub const CHECKPOINT_NAME: &str = "shardforge";

/// Write buffer of the local spool (the builder's memory for rows).
const SPOOL_BUFFER: usize = 1 << 20;

/// How often the final compaction is checked on.
const COMPACTION_POLL: Duration = Duration::from_millis(100);

/// Merges the final compaction may try before the upload gives up.
const MAX_COMPACTION_TRIES: u32 = 3;

/// Grace period for closing SlateDB after a step failed.
const CLOSE_AFTER_FAILURE: Duration = Duration::from_secs(5);

fn mib_to_bytes(mib: u32) -> usize {
    usize::try_from(u64::from(mib) * MIB).unwrap_or(usize::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain data, valid even after a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn record_len(bytes: &[u8]) -> u32 {
    // Keys are at most u16::MAX bytes and values are checked against
    // u32::MAX before they get here; saturating keeps this total.
    u32::try_from(bytes.len()).unwrap_or(u32::MAX)
}

/// The SlateDB [`ShardBackend`].
#[derive(Debug, Clone)]
pub struct SlateDbBackend {
    settings: SlateDbSettings,
}

impl SlateDbBackend {
    /// A backend with `settings`.
    pub fn new(settings: SlateDbSettings) -> Self {
        SlateDbBackend { settings }
    }
}

#[async_trait]
impl ShardBackend for SlateDbBackend {
    fn name(&self) -> &'static str {
        "slatedb"
    }

    fn builder(&self, ctx: BuildContext) -> Result<Box<dyn ShardBuilder>> {
        self.settings.validate()?;
        if !ctx.sorted {
            return Err(Error::config(
                "output.slatedb",
                "the slatedb backend needs each shard's rows sorted by key (it streams them to disk in \
                 order); keep sort_within_shard = true, or use the sqlite backend",
            ));
        }
        let spool = ctx.work_dir.join("slatedb.spool");
        let file = File::create(&spool)
            .map_err(|e| Error::io(format!("creating the SlateDB spool {}", spool.display()), e))?;
        Ok(Box::new(SlateDbBuilder {
            out: BufWriter::with_capacity(SPOOL_BUFFER, file),
            spool,
            checksum: KvHasher::default(),
            min_key: None,
            last_key: Vec::new(),
            settings: self.settings.clone(),
            ctx,
        }))
    }

    async fn verify(&self, attempt: &Location, db_id: DbId, expected: &ShardContent) -> Result<()> {
        let ops = Ops::new(Some(db_id), None, attempt, self.settings.stall_timeout());
        verify_attempt(&ops, attempt, db_id, expected).await
    }
}

async fn verify_attempt(ops: &Ops<'_>, attempt: &Location, db_id: DbId, expected: &ShardContent) -> Result<()> {
    let fail = |message: String| Error::Verification {
        db_id,
        url: attempt.url.clone(),
        message,
    };
    let store: Arc<dyn ObjectStore> = ops.guard.clone();
    let admin = AdminBuilder::new(attempt.path.clone(), Arc::clone(&store)).build();
    let Some(latest) = read_manifest(ops, &admin, None).await? else {
        return Err(fail("there is no SlateDB database (no manifest)".into()));
    };
    let Some(checkpoint) = our_checkpoint(&latest) else {
        return Err(fail(format!(
            "the database has no durable checkpoint named {CHECKPOINT_NAME:?}; its upload did not finish"
        )));
    };
    // Readers read at the checkpoint, the reference's readers at the latest
    // state: both must see the same SSTs.
    let Some(at_checkpoint) = read_manifest(ops, &admin, Some(checkpoint.manifest_id)).await? else {
        return Err(fail(format!(
            "manifest {} of checkpoint {} is missing",
            checkpoint.manifest_id, checkpoint.id
        )));
    };
    if at_checkpoint.l0() != latest.l0() || at_checkpoint.compacted() != latest.compacted() {
        return Err(fail(format!(
            "the database was written to after its checkpoint: manifest {} has {} L0 SSTs and {} sorted \
             runs, the checkpoint's manifest {} has {} and {}",
            latest.id(),
            latest.l0().len(),
            latest.compacted().len(),
            at_checkpoint.id(),
            at_checkpoint.l0().len(),
            at_checkpoint.compacted().len(),
        )));
    }
    // Uploads write no WAL; WAL data would be seen by readers that open the
    // latest state (the reference's) and not by those at the checkpoint.
    if let Some(wal) = first_object(ops, &store, &attempt.path.child("wal")).await? {
        return Err(fail(format!(
            "the database has WAL data ({}), which its upload does not write: it was written to later",
            wal.location
        )));
    }
    let mut sum = KvHasher::default();
    let mut min_key: Option<Vec<u8>> = None;
    let mut last_key = Vec::new();
    let mut in_order = true;
    scan(ops, &attempt.path, store, Some(checkpoint.id), |k, v| {
        if min_key.is_none() {
            min_key = Some(k.to_vec());
        } else {
            in_order &= last_key.as_slice() < k;
        }
        last_key.clear();
        last_key.extend_from_slice(k);
        sum.add(k, v);
    })
    .await?;
    let max_key = min_key.is_some().then_some(last_key);
    let mut problems = Vec::new();
    if !in_order {
        problems.push("the scan returned keys out of order".to_string());
    }
    if sum.rows() != expected.row_count {
        problems.push(format!("{} rows, writer reported {}", sum.rows(), expected.row_count));
    }
    let found = sum.finish();
    if found != expected.checksum {
        problems.push(format!("checksum {found}, writer reported {}", expected.checksum));
    }
    if min_key != expected.min_key || max_key != expected.max_key {
        problems.push("its key range differs from the writer's".to_string());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(fail(problems.join("; ")))
    }
}

/// The durable checkpoint an upload leaves, if the latest manifest has one.
fn our_checkpoint(manifest: &VersionedManifest) -> Option<Checkpoint> {
    manifest
        .checkpoints()
        .iter()
        .filter(|c| c.name.as_deref() == Some(CHECKPOINT_NAME) && c.expire_time.is_none())
        .max_by_key(|c| c.manifest_id)
        .cloned()
}

/// Reads every row of a SlateDB shard in key order, without writing to it.
///
/// A shard uploaded by this backend is read at its durable checkpoint,
/// exactly as a reader does. A shard without one (e.g. written by the
/// reference, whose readers record a checkpoint in the manifest when they
/// open a shard) is read at its latest state, WAL included, through a
/// copy-on-write view: whatever SlateDB's reader records lands in memory,
/// never in the shard. Holds every row in memory: meant for tests and small
/// shards.
pub async fn read_all(location: &Location) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let ops = Ops::new(None, None, location, SlateDbSettings::default().stall_timeout());
    read_all_with(&ops, location).await
}

async fn read_all_with(ops: &Ops<'_>, location: &Location) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let store: Arc<dyn ObjectStore> = ops.guard.clone();
    let admin = AdminBuilder::new(location.path.clone(), Arc::clone(&store)).build();
    let Some(latest) = read_manifest(ops, &admin, None).await? else {
        return Err(ops.error(
            format!("{} holds no SlateDB database (no manifest)", location.url),
            false,
        ));
    };
    let mut rows = Vec::new();
    let collect = |k: &[u8], v: &[u8]| rows.push((k.to_vec(), v.to_vec()));
    match our_checkpoint(&latest) {
        Some(checkpoint) => scan(ops, &location.path, store, Some(checkpoint.id), collect).await?,
        None => {
            let overlay: Arc<dyn ObjectStore> = Arc::new(CopyOnWriteStore::new(store));
            scan(ops, &location.path, overlay, None, collect).await?;
        }
    }
    Ok(rows)
}

async fn read_manifest(ops: &Ops<'_>, admin: &Admin, id: Option<u64>) -> Result<Option<VersionedManifest>> {
    ops.within("reading the SlateDB manifest", async {
        admin
            .read_manifest(id)
            .await
            .map_err(|e| ops.slate("reading the manifest", e))
    })
    .await
}

/// Scans the database at `root` in key order (at `checkpoint`, else at its
/// latest state) and hands every row to `visit`.
async fn scan(
    ops: &Ops<'_>,
    root: &Path,
    store: Arc<dyn ObjectStore>,
    checkpoint: Option<uuid::Uuid>,
    mut visit: impl FnMut(&[u8], &[u8]),
) -> Result<()> {
    let mut builder = DbReader::builder(root.clone(), store).with_db_cache_disabled();
    if let Some(id) = checkpoint {
        builder = builder.with_checkpoint_id(id);
    }
    let reader = ops
        .within("opening the database read-only", async {
            builder
                .build()
                .await
                .map_err(|e| ops.slate("opening the database read-only", e))
        })
        .await?;
    let result = async {
        // A scan reads every block once: read ahead, skip the cache.
        let options = ScanOptions::new()
            .with_read_ahead_bytes(mib_to_bytes(1))
            .with_max_fetch_tasks(4)
            .with_cache_blocks(false);
        let mut iter = ops
            .within("starting a scan", async {
                reader
                    .scan_with_options::<Vec<u8>, _>(.., &options)
                    .await
                    .map_err(|e| ops.slate("starting a scan", e))
            })
            .await?;
        // Ends with the data: each step returns a row or the end.
        while let Some(kv) = ops
            .within("scanning", async {
                iter.next().await.map_err(|e| ops.slate("scanning", e))
            })
            .await?
        {
            visit(&kv.key, &kv.value);
        }
        Ok(())
    }
    .await;
    let closed = ops
        .within("closing the reader", async {
            reader.close().await.map_err(|e| ops.slate("closing the reader", e))
        })
        .await;
    result.and(closed)
}

/// Phase 1: sorted rows, each key once, to the spool.
struct SlateDbBuilder {
    out: BufWriter<File>,
    spool: PathBuf,
    checksum: KvHasher,
    min_key: Option<Vec<u8>>,
    /// The last key written.
    last_key: Vec<u8>,
    settings: SlateDbSettings,
    ctx: BuildContext,
}

impl SlateDbBuilder {
    /// Writes a row to the spool.
    fn push(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if self.min_key.is_some() && key <= self.last_key.as_slice() {
            return Err(Error::Internal(format!(
                "shard {}: rows arrived out of key order although sorted ({} after {})",
                self.ctx.db_id,
                show_key(key, self.ctx.key_encoding),
                show_key(&self.last_key, self.ctx.key_encoding),
            )));
        }
        check_row(self.ctx.db_id, self.ctx.key_encoding, key, value)?;
        let spool = &self.spool;
        let io = |e| Error::io(format!("writing the SlateDB spool {}", spool.display()), e);
        self.out.write_all(&record_len(key).to_le_bytes()).map_err(io)?;
        self.out.write_all(key).map_err(io)?;
        self.out.write_all(&record_len(value).to_le_bytes()).map_err(io)?;
        self.out.write_all(value).map_err(io)?;
        self.checksum.add(key, value);
        if self.min_key.is_none() {
            self.min_key = Some(key.to_vec());
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        Ok(())
    }
}

/// SlateDB cannot store empty keys, keys over 64 KiB or values over 4 GiB
/// (it panics); say so before it gets that far.
fn check_row(db_id: DbId, encoding: sf_manifest::KeyEncoding, key: &[u8], value: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::Data(format!(
            "shard {db_id}: SlateDB cannot store an empty key; use the sqlite backend for such keys"
        )));
    }
    if key.len() > usize::from(u16::MAX) {
        return Err(Error::Data(format!(
            "shard {db_id}: key {} has {} bytes; SlateDB stores keys of at most {} bytes",
            show_key(&key[..16], encoding),
            key.len(),
            u16::MAX
        )));
    }
    if u32::try_from(value.len()).is_err() {
        return Err(Error::Data(format!(
            "shard {db_id}: the value of key {} has {} bytes; SlateDB stores values below 4 GiB",
            show_key(key, encoding),
            value.len()
        )));
    }
    Ok(())
}

impl ShardBuilder for SlateDbBuilder {
    fn add(&mut self, rows: &[Row<'_>]) -> Result<()> {
        for (key, value) in rows {
            self.push(key, value)?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Arc<dyn StagedShard>> {
        let spool = self.spool;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(format!("writing the SlateDB spool {}", spool.display()), e.into_error()))?;
        drop(file);
        let max_key = self.min_key.is_some().then_some(self.last_key);
        Ok(Arc::new(StagedSlateDb {
            spool,
            settings: self.settings,
            content: ShardContent {
                row_count: self.checksum.rows(),
                duplicates: 0,
                min_key: self.min_key,
                max_key,
                checksum: self.checksum.finish(),
            },
        }))
    }
}

/// Phase 2: a spool ready to be written into attempt folders.
#[derive(Debug)]
struct StagedSlateDb {
    spool: PathBuf,
    settings: SlateDbSettings,
    content: ShardContent,
}

#[async_trait]
impl StagedShard for StagedSlateDb {
    fn content(&self) -> &ShardContent {
        &self.content
    }

    async fn upload(&self, target: &AttemptTarget) -> Result<Uploaded> {
        let ops = Ops::new(
            Some(target.db_id),
            Some(target.attempt),
            &target.location,
            self.settings.stall_timeout(),
        );
        self.upload_with(&ops, target).await
    }
}

impl StagedSlateDb {
    async fn upload_with(&self, ops: &Ops<'_>, target: &AttemptTarget) -> Result<Uploaded> {
        let started = Instant::now();
        let store: Arc<dyn ObjectStore> = ops.guard.clone();
        let root = target.location.path.clone();
        self.ensure_no_database(ops, &store, &root).await?;

        let db = ops
            .within("opening the database", async {
                Db::builder(root.clone(), Arc::clone(&store))
                    .with_settings(self.settings.db_settings())
                    // The writer never reads.
                    .with_db_cache_disabled()
                    .build()
                    .await
                    .map_err(|e| ops.slate("opening the database", e))
            })
            .await?;
        if let Err(e) = self.fill(ops, &db, target).await {
            // Cut the store first so that closing does not retry a flush.
            ops.guard.trip();
            let _ = tokio::time::timeout(CLOSE_AFTER_FAILURE, db.close()).await;
            return Err(e);
        }
        ops.within("closing the writer", async {
            db.close().await.map_err(|e| ops.slate("closing the writer", e))
        })
        .await?;

        let written = started.elapsed();
        let admin = AdminBuilder::new(root.clone(), Arc::clone(&store)).build();
        let replaced = if self.settings.final_compaction {
            self.compact(ops, &admin, &store, &root).await?
        } else {
            Vec::new()
        };
        if !replaced.is_empty() {
            release_compactor_checkpoints(ops, &admin).await?;
        }
        let checkpoint = ops
            .within("creating the checkpoint", async {
                admin
                    .create_detached_checkpoint(&CheckpointOptions {
                        lifetime: None,
                        source: None,
                        name: Some(CHECKPOINT_NAME.to_string()),
                    })
                    .await
                    .map_err(|e| ops.slate("creating the checkpoint", e))
            })
            .await?;
        let merged = replaced.len();
        if !replaced.is_empty() {
            // Without this the shard would be stored twice.
            delete_replaced_ssts(ops, &admin, &store, &root, replaced).await?;
        }
        tracing::debug!(
            db_id = %target.db_id,
            attempt = %target.attempt,
            rows = self.content.row_count,
            write_ms = written.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            merged_ssts = merged,
            url = %target.location.url,
            "uploaded a SlateDB shard"
        );
        Ok(Uploaded {
            db_bytes: 0,
            checkpoint_id: checkpoint.id.simple().to_string(),
        })
    }

    /// An attempt folder is claimed empty; a database in it means someone
    /// else wrote there, and SlateDB would happily append to it.
    async fn ensure_no_database(&self, ops: &Ops<'_>, store: &Arc<dyn ObjectStore>, root: &Path) -> Result<()> {
        match first_object(ops, store, &root.child("manifest")).await? {
            None => Ok(()),
            Some(meta) => Err(ops.error(
                format!(
                    "the attempt folder already holds a SlateDB database ({}); attempts must start empty",
                    meta.location
                ),
                false,
            )),
        }
    }

    /// Streams the spool into `db` in rate-limited write batches, then
    /// flushes the last memtable.
    async fn fill(&self, ops: &Ops<'_>, db: &Db, target: &AttemptTarget) -> Result<()> {
        let spool_err = |e| Error::io(format!("reading the SlateDB spool {}", self.spool.display()), e);
        let file = tokio::fs::File::open(&self.spool).await.map_err(spool_err)?;
        let mut spool = AsyncBufReader::with_capacity(SPOOL_BUFFER, file);
        let mut limiter = RateLimiter::new(target.limits);
        let max_rows = u64::from(self.settings.write_batch_rows);
        let max_bytes = u64::from(self.settings.write_batch_kib) * KIB;
        // Visibility is not needed until the final flush; waiting for each
        // batch to be durable would wait for a full memtable.
        let write_options = WriteOptions {
            await_durable: false,
            ..WriteOptions::default()
        };
        let mut batch = WriteBatch::new();
        let (mut rows, mut bytes) = (0u64, 0u64);
        // Bounded by the rows the builder spooled.
        for _ in 0..self.content.row_count {
            let key = read_field(&mut spool).await.map_err(spool_err)?;
            let value = read_field(&mut spool).await.map_err(spool_err)?;
            rows += 1;
            bytes += (key.len() + value.len()) as u64;
            batch.put_bytes(Bytes::from(key), Bytes::from(value));
            if rows >= max_rows || bytes >= max_bytes {
                let full = std::mem::replace(&mut batch, WriteBatch::new());
                write_batch(ops, db, &mut limiter, full, rows, bytes, &write_options).await?;
                (rows, bytes) = (0, 0);
            }
        }
        if rows > 0 {
            write_batch(ops, db, &mut limiter, batch, rows, bytes, &write_options).await?;
        }
        // With the WAL off this writes the memtable as an L0 SST and waits
        // until it is in the manifest.
        ops.within("flushing", async {
            db.flush().await.map_err(|e| ops.slate("flushing", e))
        })
        .await
    }

    /// Merges all SSTs into one sorted run when there is more than one.
    /// Returns the SSTs the merge replaced (none when it was not needed).
    async fn compact(
        &self,
        ops: &Ops<'_>,
        admin: &Admin,
        store: &Arc<dyn ObjectStore>,
        root: &Path,
    ) -> Result<Vec<SsTableId>> {
        let Some(manifest) = read_manifest(ops, admin, None).await? else {
            return Err(ops.error("the database has no manifest after closing".into(), false));
        };
        if manifest.l0().len() + manifest.compacted().len() <= 1 {
            return Ok(Vec::new());
        }
        let sources = sst_ids(&manifest);
        let watch = Arc::new(Mutex::new(MergeWatch::default()));
        let compactor = CompactorBuilder::new(root.clone(), Arc::clone(store))
            .with_options(CompactorOptions {
                poll_interval: COMPACTION_POLL,
                max_sst_size: mib_to_bytes(self.settings.compacted_sst_size_mib),
                // One merge runs; the spare slot keeps the scheduler asked
                // (and so the progress reported) while it does.
                max_concurrent_compactions: 2,
                ..CompactorOptions::default()
            })
            .with_scheduler_supplier(Arc::new(MergeAllSupplier {
                watch: Arc::clone(&watch),
            }))
            .build();
        let mut runner = tokio::spawn({
            let compactor = compactor.clone();
            async move { compactor.run().await }
        });
        let outcome = watch_merge(ops, &watch, &mut runner).await;
        if outcome.is_err() {
            ops.guard.trip();
        }
        let stopped = ops
            .within("stopping the compactor", async {
                compactor
                    .stop()
                    .await
                    .map_err(|e| ops.slate("stopping the compactor", e))
            })
            .await;
        if !runner.is_finished() {
            runner.abort();
        }
        outcome?;
        stopped?;
        Ok(sources)
    }
}

/// The first object listed under `prefix`, if any.
async fn first_object(ops: &Ops<'_>, store: &Arc<dyn ObjectStore>, prefix: &Path) -> Result<Option<ObjectMeta>> {
    ops.within("listing the attempt folder", async {
        store.list(Some(prefix)).next().await.transpose().map_err(|e| {
            let retryable = is_transient(&e);
            ops.error(format!("listing {prefix}: {e}"), retryable)
        })
    })
    .await
}

/// Every SST a manifest references, in L0 and in sorted runs.
fn sst_ids(manifest: &VersionedManifest) -> Vec<SsTableId> {
    manifest
        .l0()
        .iter()
        .chain(manifest.compacted().iter().flat_map(|run| run.sst_views.iter()))
        .map(|view| view.sst.id)
        .collect()
}

/// Deletes the SSTs a compaction replaced, once neither the latest manifest
/// nor any checkpoint references them.
///
/// SlateDB's garbage collector would do this only in part: it spares every
/// SST whose id is not older than the last L0 SST the merge consumed, and
/// L0 SSTs uploaded in parallel do not get their ids in manifest order, so
/// some replaced SSTs stayed (seen in the tests). Here the set is exact: the
/// merge's sources minus what is still live.
async fn delete_replaced_ssts(
    ops: &Ops<'_>,
    admin: &Admin,
    store: &Arc<dyn ObjectStore>,
    root: &Path,
    replaced: Vec<SsTableId>,
) -> Result<()> {
    let Some(latest) = read_manifest(ops, admin, None).await? else {
        return Err(ops.error("the database has no manifest after compacting".into(), false));
    };
    let mut live: HashSet<SsTableId> = sst_ids(&latest).into_iter().collect();
    for checkpoint in latest.checkpoints() {
        match read_manifest(ops, admin, Some(checkpoint.manifest_id)).await? {
            Some(pinned) => live.extend(sst_ids(&pinned)),
            // A checkpoint's manifest is missing: keep everything rather
            // than guess what it pins.
            None => return Ok(()),
        }
    }
    for id in replaced.into_iter().filter(|id| !live.contains(id)) {
        // A merge only replaces compacted SSTs; there are no WAL SSTs here.
        let SsTableId::Compacted(ulid) = id else { continue };
        let path = root.child("compacted").child(format!("{ulid}.sst"));
        ops.within("deleting replaced SSTs", async {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => {
                    let retryable = is_transient(&e);
                    Err(ops.error(format!("deleting {path}: {e}"), retryable))
                }
            }
        })
        .await?;
    }
    Ok(())
}

/// Deletes the checkpoints SlateDB's compactor leaves behind.
///
/// On finishing, the compactor pins the manifest it replaced with an
/// unnamed checkpoint that expires after 15 minutes, for scans that might
/// still read the merged SSTs. Nothing reads this database yet (the writer
/// is closed, the compactor stopped), and as long as that checkpoint lives
/// the merged SSTs cannot be deleted.
async fn release_compactor_checkpoints(ops: &Ops<'_>, admin: &Admin) -> Result<()> {
    let Some(manifest) = read_manifest(ops, admin, None).await? else {
        return Err(ops.error("the database has no manifest after compacting".into(), false));
    };
    let pins = manifest
        .checkpoints()
        .iter()
        .filter(|c| c.name.is_none() && c.expire_time.is_some())
        .map(|c| c.id);
    for id in pins {
        ops.within("releasing the compactor's checkpoint", async {
            admin
                .delete_checkpoint(id)
                .await
                .map_err(|e| ops.slate("releasing the compactor's checkpoint", e))
        })
        .await?;
    }
    Ok(())
}

/// Waits until the merge is in the manifest; fails when it stops making
/// progress for the stall timeout, gives up, or the compactor exits.
async fn watch_merge(
    ops: &Ops<'_>,
    watch: &Mutex<MergeWatch>,
    runner: &mut tokio::task::JoinHandle<std::result::Result<(), slatedb::Error>>,
) -> Result<()> {
    let mut seen = lock(watch).clone();
    let mut since = Instant::now();
    // Bounded: each turn either sees progress (finite: bytes merged and at
    // most MAX_COMPACTION_TRIES merges) or moves towards the stall timeout.
    loop {
        tokio::select! {
            res = &mut *runner => {
                let why = match res {
                    Ok(Ok(())) => "stopped".to_string(),
                    Ok(Err(e)) => return Err(ops.slate("compacting", e)),
                    Err(e) => format!("failed: {e}"),
                };
                return Err(ops.error(format!("the compactor {why} before the final compaction finished"), false));
            }
            _ = tokio::time::sleep(COMPACTION_POLL) => {}
        }
        let now = lock(watch).clone();
        if now.done {
            return Ok(());
        }
        if now.gave_up {
            return Err(ops.error(
                format!("SlateDB did not complete the final compaction in {MAX_COMPACTION_TRIES} tries (see its log)"),
                false,
            ));
        }
        if now != seen {
            seen = now;
            since = Instant::now();
        } else if since.elapsed() >= ops.stall {
            return Err(ops.stalled("compacting"));
        }
    }
}

async fn write_batch(
    ops: &Ops<'_>,
    db: &Db,
    limiter: &mut RateLimiter,
    batch: WriteBatch,
    rows: u64,
    bytes: u64,
    options: &WriteOptions,
) -> Result<()> {
    limiter.acquire_async(rows, bytes).await;
    ops.within("writing rows", async {
        db.write_with_options(batch, options)
            .await
            .map(|_| ())
            .map_err(|e| ops.slate("writing rows", e))
    })
    .await
}

async fn read_field(r: &mut AsyncBufReader<tokio::fs::File>) -> std::io::Result<Vec<u8>> {
    let len = r.read_u32_le().await? as usize;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// What the merge scheduler saw last; shared with the upload waiting on it.
#[derive(Debug, Clone, Default, PartialEq)]
struct MergeWatch {
    tries: u32,
    running: usize,
    bytes_processed: u64,
    done: bool,
    gave_up: bool,
}

struct MergeAllSupplier {
    watch: Arc<Mutex<MergeWatch>>,
}

impl CompactionSchedulerSupplier for MergeAllSupplier {
    fn compaction_scheduler(&self, _options: &CompactorOptions) -> Box<dyn CompactionScheduler + Send + Sync> {
        Box::new(MergeAll {
            watch: Arc::clone(&self.watch),
        })
    }
}

/// A scheduler that proposes one compaction: every L0 SST and sorted run
/// into a single sorted run. SlateDB's size-tiered scheduler would leave a
/// shard as several runs; a finished shard is never written again, so one
/// run is the best shape for its readers.
struct MergeAll {
    watch: Arc<Mutex<MergeWatch>>,
}

impl CompactionScheduler for MergeAll {
    fn propose(&self, state: &CompactorStateView) -> Vec<CompactionSpec> {
        let mut watch = lock(&self.watch);
        let (running, bytes) = state
            .compactions()
            .into_iter()
            .flat_map(|c| c.recent_compactions())
            .filter(|c| c.active())
            .fold((0usize, 0u64), |(n, b), c| (n + 1, b + c.bytes_processed()));
        watch.running = running;
        watch.bytes_processed = bytes;
        if running > 0 || watch.done || watch.gave_up {
            return Vec::new();
        }
        let manifest = state.manifest();
        if manifest.l0().len() + manifest.compacted().len() <= 1 {
            watch.done = true;
            return Vec::new();
        }
        if watch.tries >= MAX_COMPACTION_TRIES {
            watch.gave_up = true;
            return Vec::new();
        }
        watch.tries += 1;
        vec![merge_all_spec(manifest)]
    }
}

/// Sources in SlateDB's logical order (L0 newest first, then runs from the
/// highest id); the output replaces the lowest-id run, or is run 0.
fn merge_all_spec(manifest: &VersionedManifest) -> CompactionSpec {
    let sources = manifest
        .l0()
        .iter()
        .map(|view| SourceId::SstView(view.id))
        .chain(manifest.compacted().iter().map(|run| SourceId::SortedRun(run.id)))
        .collect();
    let destination = manifest.compacted().iter().map(|run| run.id).min().unwrap_or(0);
    CompactionSpec::new(sources, destination)
}

/// The context of one upload, verify or read: the guarded store SlateDB
/// gets, the stall timeout, and how errors name the shard.
///
/// Dropping it, when the operation returns or its future is dropped, trips
/// the store: whatever SlateDB still runs in the background then fails fast
/// instead of retrying into the attempt forever.
struct Ops<'a> {
    db_id: Option<DbId>,
    attempt: Option<Attempt>,
    url: &'a str,
    guard: Arc<GuardedStore>,
    stall: Duration,
}

impl Drop for Ops<'_> {
    fn drop(&mut self) {
        self.guard.trip();
    }
}

impl<'a> Ops<'a> {
    fn new(db_id: Option<DbId>, attempt: Option<Attempt>, location: &'a Location, stall: Duration) -> Self {
        Ops {
            db_id,
            attempt,
            url: &location.url,
            guard: GuardedStore::new(Arc::clone(&location.store)),
            stall,
        }
    }

    fn error(&self, message: String, retryable: bool) -> Error {
        match self.db_id {
            Some(db_id) => Error::shard(db_id, self.attempt, message, retryable),
            // `read_all` knows no shard: keep the retryable class by kind.
            None if retryable => Error::io(self.url.to_string(), std::io::Error::other(message)),
            None => Error::Data(message),
        }
    }

    fn storage_note(&self) -> String {
        match self.guard.last_error() {
            Some(e) => format!(" (object storage last said: {e})"),
            None => String::new(),
        }
    }

    /// A SlateDB failure; retryable when SlateDB blames the store.
    fn slate(&self, what: &str, e: slatedb::Error) -> Error {
        let retryable = matches!(e.kind(), ErrorKind::Unavailable);
        self.error(
            format!("SlateDB failed {what} at {}: {e}{}", self.url, self.storage_note()),
            retryable,
        )
    }

    fn stalled(&self, what: &str) -> Error {
        self.error(
            format!(
                "no progress for {}s while {what} at {}{}",
                self.stall.as_secs(),
                self.url,
                self.storage_note()
            ),
            true,
        )
    }

    /// Runs one remote step under the stall timeout.
    async fn within<T>(&self, what: &str, step: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.stall, step).await {
            Ok(result) => result,
            Err(_) => Err(self.stalled(what)),
        }
    }
}

/// The object store as SlateDB sees it during one upload, verify or read.
///
/// It remembers the last failure, so that a step that timed out can say
/// what the store answered, and it can be tripped: from then on every call
/// fails with `NotSupported`, which SlateDB does not retry, so its
/// background tasks stop instead of retrying into an abandoned attempt.
#[derive(Debug)]
struct GuardedStore {
    inner: Arc<dyn ObjectStore>,
    tripped: AtomicBool,
    last_error: Arc<Mutex<Option<String>>>,
}

impl GuardedStore {
    fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(GuardedStore {
            inner,
            tripped: AtomicBool::new(false),
            last_error: Arc::new(Mutex::new(None)),
        })
    }

    fn trip(&self) {
        self.tripped.store(true, AtomicOrdering::SeqCst);
    }

    fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    fn check(&self) -> object_store::Result<()> {
        if self.tripped.load(AtomicOrdering::SeqCst) {
            Err(object_store::Error::NotSupported {
                source: "the shard operation using this store has ended".into(),
            })
        } else {
            Ok(())
        }
    }

    fn note<T>(&self, result: object_store::Result<T>) -> object_store::Result<T> {
        if let Err(e) = &result {
            note_error(&self.last_error, e);
        }
        result
    }
}

fn note_error(slot: &Mutex<Option<String>>, e: &object_store::Error) {
    // Expected answers (a missing object, a lost create race) are how
    // SlateDB probes the store; only real failures explain a stall.
    if !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
    ) {
        *lock(slot) = Some(e.to_string());
    }
}

impl fmt::Display for GuardedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guarded({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for GuardedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check()?;
        self.note(self.inner.put_opts(location, payload, opts).await)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check()?;
        self.note(self.inner.put_multipart_opts(location, opts).await)
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.check()?;
        self.note(self.inner.get_opts(location, options).await)
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        self.check()?;
        self.note(self.inner.get_range(location, range).await)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.check()?;
        self.note(self.inner.get_ranges(location, ranges).await)
    }

    async fn head(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        self.check()?;
        self.note(self.inner.head(location).await)
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.check()?;
        self.note(self.inner.delete(location).await)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Err(e) = self.check() {
            return stream::once(async { Err(e) }).boxed();
        }
        let slot = Arc::clone(&self.last_error);
        self.inner
            .list(prefix)
            .inspect(move |r| {
                if let Err(e) = r {
                    note_error(&slot, e);
                }
            })
            .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Err(e) = self.check() {
            return stream::once(async { Err(e) }).boxed();
        }
        let slot = Arc::clone(&self.last_error);
        self.inner
            .list_with_offset(prefix, offset)
            .inspect(move |r| {
                if let Err(e) = r {
                    note_error(&slot, e);
                }
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.check()?;
        self.note(self.inner.list_with_delimiter(prefix).await)
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.check()?;
        self.note(self.inner.copy(from, to).await)
    }

    async fn rename(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.check()?;
        self.note(self.inner.rename(from, to).await)
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.check()?;
        self.note(self.inner.copy_if_not_exists(from, to).await)
    }

    async fn rename_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.check()?;
        self.note(self.inner.rename_if_not_exists(from, to).await)
    }
}

/// Reads fall through to `base`; writes land in memory and shadow it.
///
/// SlateDB's reader, opened without a checkpoint, records one in the
/// manifest (and deletes it on close). Over this store it records it in
/// memory, so a shard can be read at its latest state without a single
/// write to it. Deletes only remove what was written here.
#[derive(Debug)]
struct CopyOnWriteStore {
    base: Arc<dyn ObjectStore>,
    written: InMemory,
}

impl CopyOnWriteStore {
    fn new(base: Arc<dyn ObjectStore>) -> Self {
        CopyOnWriteStore {
            base,
            written: InMemory::new(),
        }
    }

    fn read_only(what: &str) -> object_store::Error {
        object_store::Error::NotSupported {
            source: format!("{what} is not supported on a copy-on-write view").into(),
        }
    }
}

impl fmt::Display for CopyOnWriteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CopyOnWrite({})", self.base)
    }
}

#[async_trait]
impl ObjectStore for CopyOnWriteStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if matches!(opts.mode, PutMode::Create) {
            // Create-if-absent must see the base too: that is how SlateDB
            // picks the next manifest id.
            match self.base.head(location).await {
                Ok(_) => {
                    return Err(object_store::Error::AlreadyExists {
                        path: location.to_string(),
                        source: "the object exists in the underlying store".into(),
                    });
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.written.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.written.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        match self.written.get_opts(location, options.clone()).await {
            Err(object_store::Error::NotFound { .. }) => self.base.get_opts(location, options).await,
            other => other,
        }
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.written.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let written = self.written.list(prefix);
        let base = self.base.list(prefix);
        async move {
            let written: Vec<object_store::Result<ObjectMeta>> = written.collect().await;
            let shadowed: HashSet<Path> = written
                .iter()
                .filter_map(|r| r.as_ref().ok().map(|m| m.location.clone()))
                .collect();
            stream::iter(written).chain(base.filter(move |r| {
                let keep = !matches!(r, Ok(m) if shadowed.contains(&m.location));
                std::future::ready(keep)
            }))
        }
        .flatten_stream()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut listed = self.base.list_with_delimiter(prefix).await?;
        let written = self.written.list_with_delimiter(prefix).await?;
        listed
            .objects
            .retain(|m| !written.objects.iter().any(|w| w.location == m.location));
        listed.objects.extend(written.objects);
        listed.common_prefixes.extend(written.common_prefixes);
        listed.common_prefixes.sort();
        listed.common_prefixes.dedup();
        Ok(listed)
    }

    async fn copy(&self, _from: &Path, _to: &Path) -> object_store::Result<()> {
        Err(Self::read_only("copy"))
    }

    async fn copy_if_not_exists(&self, _from: &Path, _to: &Path) -> object_store::Result<()> {
        Err(Self::read_only("copy"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::DuplicatePolicy;
    use crate::ratelimit::RateLimits;
    use crate::sort::ShardSorter;
    use arrow::array::BinaryArray;
    use sf_manifest::{KeyEncoding, StorageOptions};
    use std::sync::atomic::AtomicUsize;

    const DB: DbId = DbId(7);

    fn ctx(dir: &std::path::Path, on_duplicate: DuplicatePolicy) -> BuildContext {
        BuildContext {
            db_id: DB,
            work_dir: dir.to_path_buf(),
            on_duplicate,
            sorted: true,
            limits: RateLimits::default(),
            key_encoding: KeyEncoding::U64Be,
        }
    }

    /// Small SSTs and batches, so that a few thousand rows make several of each.
    fn small() -> SlateDbSettings {
        SlateDbSettings {
            l0_sst_size_mib: 1,
            write_batch_rows: 1000,
            stall_timeout_secs: 60,
            ..SlateDbSettings::default()
        }
    }

    fn value(k: u64, tag: &str) -> Vec<u8> {
        let mut v = format!("{tag}-{k}:").into_bytes();
        v.resize(150, b'.');
        v
    }

    fn rows(keys: impl IntoIterator<Item = u64>, tag: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        keys.into_iter()
            .map(|k| (k.to_be_bytes().to_vec(), value(k, tag)))
            .collect()
    }

    fn refs(rows: &[(Vec<u8>, Vec<u8>)]) -> Vec<Row<'_>> {
        rows.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect()
    }

    /// Builds a shard the way a shard task does: the rows, in batches of
    /// `chunk`, go through the shard sorter into the builder.
    fn build(
        backend: &SlateDbBackend,
        work: &std::path::Path,
        policy: DuplicatePolicy,
        input: &[(Vec<u8>, Vec<u8>)],
        chunk: usize,
    ) -> Result<Arc<dyn StagedShard>> {
        let mut sorter = ShardSorter::new(DB, KeyEncoding::U64Be, policy, usize::MAX, work);
        for part in input.chunks(chunk) {
            let keys = BinaryArray::from_iter_values(part.iter().map(|(k, _)| k.as_slice()));
            let values = BinaryArray::from_iter_values(part.iter().map(|(_, v)| v.as_slice()));
            sorter.push(keys, values)?;
        }
        let mut b = backend.builder(ctx(work, policy))?;
        sorter.drain(&mut |rows| b.add(rows))?;
        b.finish()
    }

    fn checksum_of(rows: &[(Vec<u8>, Vec<u8>)]) -> String {
        let mut c = KvHasher::default();
        for (k, v) in rows {
            c.add(k, v);
        }
        c.finish()
    }

    fn local(dir: &std::path::Path) -> Location {
        sf_manifest::resolve(&format!("file://{}", dir.display()), &StorageOptions::new()).expect("resolve")
    }

    fn memory(name: &str) -> Location {
        sf_manifest::resolve(
            &format!("memory://{name}/t/shards/run_id=r/db=00007/attempt=00"),
            &StorageOptions::new(),
        )
        .expect("resolve")
    }

    fn target(location: Location) -> AttemptTarget {
        AttemptTarget {
            db_id: DB,
            attempt: Attempt(0),
            location,
            limits: RateLimits::default(),
        }
    }

    async fn latest_manifest(location: &Location) -> VersionedManifest {
        AdminBuilder::new(location.path.clone(), Arc::clone(&location.store))
            .build()
            .read_manifest(None)
            .await
            .expect("read manifest")
            .expect("a manifest")
    }

    async fn objects_under(location: &Location, sub: &str) -> Vec<String> {
        let prefix = location.path.child(sub);
        let mut names: Vec<String> = location
            .store
            .list(Some(&prefix))
            .map(|m| m.expect("list").location.to_string())
            .collect()
            .await;
        names.sort();
        names
    }

    async fn put_claim(location: &Location) -> Bytes {
        let claim = Bytes::from_static(br#"{"attempt":0,"claimed_by":"test"}"#);
        location
            .store
            .put(&location.path.child("_claim.json"), PutPayload::from(claim.clone()))
            .await
            .expect("claim");
        claim
    }

    /// A store that counts, and refuses, every write.
    #[derive(Debug)]
    struct NoWrites {
        inner: Arc<dyn ObjectStore>,
        writes: AtomicUsize,
    }

    impl NoWrites {
        fn wrap(location: &Location) -> (Location, Arc<NoWrites>) {
            let probe = Arc::new(NoWrites {
                inner: Arc::clone(&location.store),
                writes: AtomicUsize::new(0),
            });
            let mut wrapped = location.clone();
            wrapped.store = probe.clone();
            (wrapped, probe)
        }

        fn refuse(&self) -> object_store::Error {
            self.writes.fetch_add(1, AtomicOrdering::SeqCst);
            object_store::Error::NotSupported {
                source: "writes are not allowed here".into(),
            }
        }

        fn writes(&self) -> usize {
            self.writes.load(AtomicOrdering::SeqCst)
        }
    }

    impl fmt::Display for NoWrites {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "NoWrites({})", self.inner)
        }
    }

    #[async_trait]
    impl ObjectStore for NoWrites {
        async fn put_opts(&self, _: &Path, _: PutPayload, _: PutOptions) -> object_store::Result<PutResult> {
            Err(self.refuse())
        }
        async fn put_multipart_opts(
            &self,
            _: &Path,
            _: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            Err(self.refuse())
        }
        async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
            self.inner.get_opts(location, options).await
        }
        async fn delete(&self, _: &Path) -> object_store::Result<()> {
            Err(self.refuse())
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy(&self, _: &Path, _: &Path) -> object_store::Result<()> {
            Err(self.refuse())
        }
        async fn copy_if_not_exists(&self, _: &Path, _: &Path) -> object_store::Result<()> {
            Err(self.refuse())
        }
    }

    /// A store whose writes fail the way an unreachable server does.
    #[derive(Debug)]
    struct DeadWrites(InMemory);

    impl fmt::Display for DeadWrites {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "DeadWrites")
        }
    }

    fn unreachable_error() -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: "connection refused (test)".into(),
        }
    }

    #[async_trait]
    impl ObjectStore for DeadWrites {
        async fn put_opts(&self, _: &Path, _: PutPayload, _: PutOptions) -> object_store::Result<PutResult> {
            Err(unreachable_error())
        }
        async fn put_multipart_opts(
            &self,
            _: &Path,
            _: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            Err(unreachable_error())
        }
        async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
            self.0.get_opts(location, options).await
        }
        async fn delete(&self, _: &Path) -> object_store::Result<()> {
            Err(unreachable_error())
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy(&self, _: &Path, _: &Path) -> object_store::Result<()> {
            Err(unreachable_error())
        }
        async fn copy_if_not_exists(&self, _: &Path, _: &Path) -> object_store::Result<()> {
            Err(unreachable_error())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trip_on_local_files_with_final_compaction_and_a_claim_marker() {
        let work = tempfile::tempdir().expect("tmp");
        let out = tempfile::tempdir().expect("tmp");
        let backend = SlateDbBackend::new(small());
        // 20k rows of ~160 bytes: several 1 MiB L0 SSTs and 20 write batches.
        let input = rows((0..20_000u64).map(|k| k * 3), "v");
        let staged = build(&backend, work.path(), DuplicatePolicy::LastWins, &input, 1_500).expect("build");
        let content = staged.content().clone();
        assert_eq!(content.row_count, 20_000);
        assert_eq!(content.duplicates, 0);
        assert_eq!(content.min_key, Some(0u64.to_be_bytes().to_vec()));
        assert_eq!(content.max_key, Some(59_997u64.to_be_bytes().to_vec()));
        assert_eq!(content.checksum, checksum_of(&input));

        let location = local(out.path()).child("shards/run_id=r/db=00007/attempt=00");
        let claim = put_claim(&location).await;
        let up = staged.upload(&target(location.clone())).await.expect("upload");
        assert_eq!(up.db_bytes, 0);
        assert_eq!(up.checkpoint_id.len(), 32);
        assert!(
            up.checkpoint_id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );

        // One sorted run, no L0 left, and the checkpoint readers will use.
        let manifest = latest_manifest(&location).await;
        assert!(
            manifest.l0().is_empty(),
            "L0 after the final compaction: {}",
            manifest.l0().len()
        );
        assert_eq!(manifest.compacted().len(), 1);
        let checkpoint = our_checkpoint(&manifest).expect("checkpoint");
        assert_eq!(checkpoint.id.simple().to_string(), up.checkpoint_id);
        // The merged L0 SSTs are gone: only the sorted run's SSTs are stored.
        let stored = objects_under(&location, "compacted").await;
        let mut live: Vec<String> = sst_ids(&manifest)
            .iter()
            .map(|id| match id {
                SsTableId::Compacted(ulid) => location
                    .path
                    .child("compacted")
                    .child(format!("{ulid}.sst"))
                    .to_string(),
                SsTableId::Wal(n) => panic!("WAL SST {n} in the manifest"),
            })
            .collect();
        live.sort();
        assert_eq!(stored, live);
        // The WAL was off.
        assert!(objects_under(&location, "wal").await.is_empty());

        assert_eq!(read_all(&location).await.expect("read back"), input);

        // The reader's path: DbReader on the root at the manifest's checkpoint id.
        let id = uuid::Uuid::parse_str(&up.checkpoint_id).expect("uuid");
        let reader = DbReader::builder(location.path.clone(), Arc::clone(&location.store))
            .with_checkpoint_id(id)
            .build()
            .await
            .expect("reader");
        let got = reader.get(3_000u64.to_be_bytes()).await.expect("get");
        assert_eq!(got.as_deref(), Some(value(3_000, "v").as_slice()));
        assert_eq!(reader.get(3_001u64.to_be_bytes()).await.expect("get"), None);
        reader.close().await.expect("close reader");

        backend.verify(&location, DB, &content).await.expect("verify");
        let kept = location
            .store
            .get(&location.path.child("_claim.json"))
            .await
            .expect("claim kept")
            .bytes()
            .await
            .expect("claim bytes");
        assert_eq!(kept, claim);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trip_in_memory_without_final_compaction() {
        let work = tempfile::tempdir().expect("tmp");
        let backend = SlateDbBackend::new(SlateDbSettings {
            final_compaction: false,
            ..small()
        });
        let input = rows(0..20_000u64, "m");
        let staged = build(&backend, work.path(), DuplicatePolicy::LastWins, &input, 4_096).expect("build");
        let location = memory("slatedb-no-compaction");
        put_claim(&location).await;
        let up = staged.upload(&target(location.clone())).await.expect("upload");
        let manifest = latest_manifest(&location).await;
        assert!(
            manifest.l0().len() > 1,
            "expected several L0 SSTs, got {}",
            manifest.l0().len()
        );
        assert!(manifest.compacted().is_empty());
        assert_eq!(
            our_checkpoint(&manifest).expect("checkpoint").id.simple().to_string(),
            up.checkpoint_id
        );
        assert_eq!(read_all(&location).await.expect("read back"), input);
        backend.verify(&location, DB, staged.content()).await.expect("verify");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn last_wins_keeps_the_last_row_and_spools_only_final_rows() {
        let work = tempfile::tempdir().expect("tmp");
        let backend = SlateDbBackend::new(small());
        // Duplicates inside one batch, across batch boundaries, and three in a row.
        let input: Vec<(Vec<u8>, Vec<u8>)> = [(1, "a"), (2, "a"), (2, "b"), (3, "a"), (3, "b"), (3, "c"), (4, "a")]
            .iter()
            .map(|(k, t)| (u64::to_be_bytes(*k).to_vec(), value(*k, t)))
            .collect();
        let staged = build(&backend, work.path(), DuplicatePolicy::LastWins, &input, 2).expect("build");
        let expected = vec![input[0].clone(), input[2].clone(), input[5].clone(), input[6].clone()];
        let content = staged.content().clone();
        assert_eq!(content.row_count, 4);
        assert_eq!(content.checksum, checksum_of(&expected));
        // The spool holds exactly the final rows.
        let spool_len = std::fs::metadata(work.path().join("slatedb.spool"))
            .expect("spool")
            .len();
        let want: usize = expected.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
        assert_eq!(spool_len, want as u64);

        let location = memory("slatedb-last-wins");
        staged.upload(&target(location.clone())).await.expect("upload");
        assert_eq!(read_all(&location).await.expect("read back"), expected);
        backend.verify(&location, DB, &content).await.expect("verify");
    }

    #[test]
    fn duplicate_keys_fail_when_asked() {
        let work = tempfile::tempdir().expect("tmp");
        let backend = SlateDbBackend::new(SlateDbSettings::default());
        let input = rows([1, 2, 2, 3], "v");
        let e = build(&backend, work.path(), DuplicatePolicy::Error, &input, 2).expect_err("duplicate");
        assert_eq!(
            e.to_string(),
            "shard 7: duplicate key 2 (on_duplicate = \"error\"; use \"last_wins\" to keep the last row)"
        );
    }

    #[test]
    fn unsorted_input_is_rejected() {
        let work = tempfile::tempdir().expect("tmp");
        let backend = SlateDbBackend::new(SlateDbSettings::default());
        let e = backend
            .builder(BuildContext {
                sorted: false,
                ..ctx(work.path(), DuplicatePolicy::LastWins)
            })
            .err()
            .expect("unsorted");
        let msg = e.to_string();
        assert!(matches!(e, Error::Config { .. }), "{msg}");
        assert!(
            msg.starts_with("output.slatedb:") && msg.contains("sort_within_shard"),
            "{msg}"
        );

        // Rows promised sorted that are not: a bug upstream, not silently accepted.
        let mut b = backend
            .builder(ctx(work.path(), DuplicatePolicy::LastWins))
            .expect("builder");
        let e = b.add(&refs(&rows([1, 5, 3], "v"))).expect_err("out of order");
        assert!(
            matches!(e, Error::Internal(_)) && e.to_string().contains("3 after 5"),
            "{e}"
        );
    }

    #[test]
    fn keys_slatedb_cannot_store_are_data_errors() {
        let work = tempfile::tempdir().expect("tmp");
        let backend = SlateDbBackend::new(SlateDbSettings::default());
        let empty = vec![(Vec::new(), b"v".to_vec())];
        let e = build(&backend, work.path(), DuplicatePolicy::LastWins, &empty, 1).expect_err("empty key");
        assert!(
            matches!(e, Error::Data(_)) && e.to_string().contains("empty key"),
            "{e}"
        );
        let long = vec![(vec![b'k'; 70_000], b"v".to_vec())];
        let e = build(&backend, work.path(), DuplicatePolicy::LastWins, &long, 1).expect_err("long key");
        assert!(
            matches!(e, Error::Data(_)) && e.to_string().contains("70000 bytes"),
            "{e}"
        );
    }

    #[test]
    fn the_spool_streams_to_disk() {
        let work = tempfile::tempdir().expect("tmp");
        let backend = SlateDbBackend::new(SlateDbSettings::default());
        let mut b = backend
            .builder(ctx(work.path(), DuplicatePolicy::LastWins))
            .expect("builder");
        let spool = work.path().join("slatedb.spool");
        let mut added = 0u64;
        // 32 MiB of rows, far beyond the spool's buffer.
        for part in 0..64u64 {
            let chunk: Vec<(Vec<u8>, Vec<u8>)> = (part * 512..(part + 1) * 512)
                .map(|k| (k.to_be_bytes().to_vec(), vec![b'x'; 1024]))
                .collect();
            b.add(&refs(&chunk)).expect("add");
            added += chunk.iter().map(|(k, v)| (8 + k.len() + v.len()) as u64).sum::<u64>();
            // All but the buffer is already on disk.
            let on_disk = std::fs::metadata(&spool).expect("spool").len();
            assert!(
                on_disk + SPOOL_BUFFER as u64 >= added,
                "{on_disk} bytes on disk after {added} bytes of rows"
            );
        }
        let staged = b.finish().expect("finish");
        assert_eq!(std::fs::metadata(&spool).expect("spool").len(), added);
        assert_eq!(staged.content().row_count, 64 * 512);
    }

    #[test]
    fn the_checksum_covers_length_prefixed_records_in_key_order() {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&[1, 0, 0, 0, b'a', 2, 0, 0, 0, b'x', b'y', 1, 0, 0, 0, b'b', 0, 0, 0, 0]);
        let want = format!("xxh3_128-kv:{:032x}", h.digest128());
        let rows = vec![(b"a".to_vec(), b"xy".to_vec()), (b"b".to_vec(), Vec::new())];
        assert_eq!(checksum_of(&rows), want);
        assert_eq!(want.len(), "xxh3_128-kv:".len() + 32);
    }

    #[test]
    fn settings_have_defaults_and_reject_unknown_keys() {
        let s: SlateDbSettings = toml::from_str("l0_sst_size_mib = 8\nfinal_compaction = false").expect("parse");
        assert_eq!(
            s,
            SlateDbSettings {
                l0_sst_size_mib: 8,
                final_compaction: false,
                ..SlateDbSettings::default()
            }
        );
        assert!(toml::from_str::<SlateDbSettings>("compression = \"zstd\"").is_err());
        let e = SlateDbSettings {
            write_batch_rows: 0,
            ..SlateDbSettings::default()
        }
        .validate()
        .expect_err("zero");
        assert!(e.to_string().contains("output.slatedb.write_batch_rows"), "{e}");
        let db = SlateDbSettings::default().db_settings();
        assert!(!db.wal_enabled && db.flush_interval.is_none() && db.compression_codec.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_catches_wrong_content_and_later_writes() {
        let work = tempfile::tempdir().expect("tmp");
        let other = tempfile::tempdir().expect("tmp");
        let backend = SlateDbBackend::new(small());
        let input = rows(0..3_000u64, "v");
        let staged = build(&backend, work.path(), DuplicatePolicy::LastWins, &input, 1_000).expect("build");
        let location = memory("slatedb-verify");
        staged.upload(&target(location.clone())).await.expect("upload");
        backend.verify(&location, DB, staged.content()).await.expect("verify");

        // Another stage's facts do not match.
        let mut changed = input.clone();
        changed[1_234].1 = b"changed".to_vec();
        let wrong = build(&backend, other.path(), DuplicatePolicy::LastWins, &changed, 1_000).expect("build");
        let e = backend
            .verify(&location, DB, wrong.content())
            .await
            .expect_err("wrong checksum");
        let msg = e.to_string();
        assert!(matches!(e, Error::Verification { .. }), "{msg}");
        assert!(
            msg.contains("shard 7") && msg.contains("checksum") && !msg.contains("rows,"),
            "{msg}"
        );

        // A key written into the database after the upload.
        let db = Db::builder(location.path.clone(), Arc::clone(&location.store))
            .build()
            .await
            .expect("writable db");
        db.put(u64::MAX.to_be_bytes(), b"intruder").await.expect("put");
        db.close().await.expect("close");
        let e = backend
            .verify(&location, DB, staged.content())
            .await
            .expect_err("tampered");
        assert!(e.to_string().contains("written to after its checkpoint"), "{e}");

        // A key that only reached the WAL (the writer never flushed its
        // memtable): invisible at the checkpoint, seen by the reference's
        // readers, which open the latest state.
        let location = memory("slatedb-verify-wal");
        staged.upload(&target(location.clone())).await.expect("upload");
        let db = Db::builder(location.path.clone(), Arc::clone(&location.store))
            .build()
            .await
            .expect("writable db");
        db.put(u64::MAX.to_be_bytes(), b"intruder").await.expect("put");
        let e = backend
            .verify(&location, DB, staged.content())
            .await
            .expect_err("WAL written");
        assert!(e.to_string().contains("WAL data"), "{e}");
        db.close().await.expect("close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reading_and_verifying_make_no_writes() {
        let work = tempfile::tempdir().expect("tmp");
        let out = tempfile::tempdir().expect("tmp");
        let backend = SlateDbBackend::new(small());
        let input = rows(0..5_000u64, "r");
        let staged = build(&backend, work.path(), DuplicatePolicy::LastWins, &input, 1_000).expect("build");
        let location = local(out.path()).child("attempt=00");
        staged.upload(&target(location.clone())).await.expect("upload");

        let (probed, probe) = NoWrites::wrap(&location);
        assert_eq!(read_all(&probed).await.expect("read"), input);
        backend.verify(&probed, DB, staged.content()).await.expect("verify");
        assert_eq!(probe.writes(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_a_shard_written_by_the_reference_without_writing_to_it() {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "../tests/data/shardyfusion-v4/slatedb-bucket-goldenslate/hash_int/shards/run_id=slaterun0001/db=00000/attempt=00",
        );
        let copy = tempfile::tempdir().expect("tmp");
        let before = copy_tree(&fixture, copy.path());
        assert!(before.len() > 5, "fixture files: {before:?}");

        let (probed, probe) = NoWrites::wrap(&local(copy.path()));
        let got = read_all(&probed).await.expect("read the reference's shard");
        let want: Vec<(Vec<u8>, Vec<u8>)> = [(1u64, "s1"), (4, "s4"), (5, "s5")]
            .iter()
            .map(|(k, v)| (k.to_be_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(got, want);
        assert!(got.iter().all(|(k, _)| k.len() == 8));
        // It has no checkpoint of ours: verify says so instead of passing.
        let content = ShardContent {
            row_count: 3,
            duplicates: 0,
            min_key: Some(want[0].0.clone()),
            max_key: Some(want[2].0.clone()),
            checksum: checksum_of(&want),
        };
        let e = SlateDbBackend::new(SlateDbSettings::default())
            .verify(&probed, DbId(0), &content)
            .await
            .expect_err("no checkpoint");
        assert!(e.to_string().contains("no durable checkpoint"), "{e}");
        assert_eq!(probe.writes(), 0);
        assert_eq!(copy_tree(copy.path(), tempfile::tempdir().expect("tmp").path()), before);
    }

    /// Copies a folder tree; returns each file's relative path and bytes.
    fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = Vec::new();
        let mut dirs = vec![PathBuf::new()];
        while let Some(rel) = dirs.pop() {
            std::fs::create_dir_all(to.join(&rel)).expect("mkdir");
            for entry in std::fs::read_dir(from.join(&rel)).expect("read dir") {
                let entry = entry.expect("entry");
                let name = rel.join(entry.file_name());
                if entry.file_type().expect("type").is_dir() {
                    dirs.push(name);
                } else {
                    let bytes = std::fs::read(entry.path()).expect("read");
                    std::fs::write(to.join(&name), &bytes).expect("write");
                    files.push((name, bytes));
                }
            }
        }
        files.sort();
        files
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_shard_round_trips() {
        let work = tempfile::tempdir().expect("tmp");
        let backend = SlateDbBackend::new(small());
        let staged = build(&backend, work.path(), DuplicatePolicy::LastWins, &[], 1).expect("build");
        assert_eq!(staged.content().row_count, 0);
        assert_eq!((&staged.content().min_key, &staged.content().max_key), (&None, &None));
        let location = memory("slatedb-empty");
        let up = staged.upload(&target(location.clone())).await.expect("upload");
        assert_eq!(up.checkpoint_id.len(), 32);
        assert!(read_all(&location).await.expect("read").is_empty());
        backend.verify(&location, DB, staged.content()).await.expect("verify");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_attempt_folder_holding_a_database_is_refused() {
        let work = tempfile::tempdir().expect("tmp");
        let backend = SlateDbBackend::new(small());
        let staged = build(&backend, work.path(), DuplicatePolicy::LastWins, &rows(0..10, "v"), 5).expect("build");
        let location = memory("slatedb-twice");
        let e = read_all(&location).await.expect_err("nothing there yet");
        assert!(e.to_string().contains("no SlateDB database"), "{e}");
        staged.upload(&target(location.clone())).await.expect("first upload");
        let e = staged.upload(&target(location)).await.expect_err("second upload");
        assert!(
            !e.is_retryable() && e.to_string().contains("already holds a SlateDB database"),
            "{e}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_follow_the_rate_limits() {
        let work = tempfile::tempdir().expect("tmp");
        let backend = SlateDbBackend::new(SlateDbSettings {
            write_batch_rows: 500,
            ..small()
        });
        let input = rows(0..6_000u64, "v");
        let staged = build(&backend, work.path(), DuplicatePolicy::LastWins, &input, 1_000).expect("build");
        let limited = AttemptTarget {
            limits: RateLimits {
                rows_per_second: Some(3_000.0),
                bytes_per_second: None,
            },
            ..target(memory("slatedb-rate"))
        };
        let started = Instant::now();
        staged.upload(&limited).await.expect("upload");
        // The first second's 3,000 rows are a free burst; the other 3,000 take a second.
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(read_all(&limited.location).await.expect("read back"), input);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unavailable_store_fails_retryably_instead_of_hanging() {
        let work = tempfile::tempdir().expect("tmp");
        let backend = SlateDbBackend::new(SlateDbSettings {
            stall_timeout_secs: 1,
            ..small()
        });
        let staged = build(&backend, work.path(), DuplicatePolicy::LastWins, &rows(0..10, "v"), 5).expect("build");
        let mut location = memory("slatedb-dead");
        location.store = Arc::new(DeadWrites(InMemory::new()));
        let started = Instant::now();
        let e = staged.upload(&target(location)).await.expect_err("dead store");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        let msg = e.to_string();
        assert!(e.is_retryable(), "{msg}");
        assert!(msg.contains("connection refused (test)"), "{msg}");
    }
}
