//! Phase 2: a spool written into a fresh database in a claimed attempt
//! folder, compacted to one sorted run, checkpointed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::ObjectStore;
use object_store::path::Path;
use sf_manifest::ErrorKind as SfErrorKind;
use slatedb::admin::{Admin, AdminBuilder};
use slatedb::config::{CheckpointOptions, CompactorOptions, WriteOptions};
use slatedb::manifest::SsTableId;
use slatedb::{CompactorBuilder, Db, WriteBatch};
use tokio::io::BufReader as AsyncBufReader;

use super::compaction::{
    COMPACTION_POLL, MergeAllSupplier, MergeWatch, delete_replaced_ssts, release_compactor_checkpoints, sst_ids,
    watch_merge,
};
use super::digest::DigestStore;
use super::ops::{CHECKPOINT_NAME, Ops, first_object, read_manifest};
use super::settings::mib_to_bytes;
use super::spool::{SPOOL_BUFFER, StagedSlateDb, read_field};
use crate::build::backend::contract::{AttemptTarget, Uploaded};
use crate::build::ratelimit::RateLimiter;
use crate::error::{Error, Result};

const KIB: u64 = 1024;

/// Grace period for closing SlateDB after a step failed.
const CLOSE_AFTER_FAILURE: Duration = Duration::from_secs(5);

impl StagedSlateDb {
    pub(super) async fn upload_with(&self, ops: &Ops<'_>, target: &AttemptTarget) -> Result<Uploaded> {
        let started = Instant::now();
        // Every object SlateDB writes is hashed on its way (verification
        // re-reads the objects against it).
        let digest = Arc::new(DigestStore::new(ops.guard.clone()));
        let store: Arc<dyn ObjectStore> = Arc::clone(&digest) as Arc<dyn ObjectStore>;
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
            objects_checksum: Some(digest.checksum(&root)),
        })
    }

    /// An attempt folder is claimed empty; a database in it means someone
    /// else wrote there, and SlateDB would happily append to it.
    pub(super) async fn ensure_no_database(
        &self,
        ops: &Ops<'_>,
        store: &Arc<dyn ObjectStore>,
        root: &Path,
    ) -> Result<()> {
        match first_object(ops, store, &root.child("manifest")).await? {
            None => Ok(()),
            Some(meta) => Err(ops.error(
                format!(
                    "the attempt folder already holds a SlateDB database ({}); attempts must start empty",
                    meta.location
                ),
                SfErrorKind::Conflict,
            )),
        }
    }

    /// Streams the spool into `db` in rate-limited write batches, then
    /// flushes the last memtable.
    pub(super) async fn fill(&self, ops: &Ops<'_>, db: &Db, target: &AttemptTarget) -> Result<()> {
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
    pub(super) async fn compact(
        &self,
        ops: &Ops<'_>,
        admin: &Admin,
        store: &Arc<dyn ObjectStore>,
        root: &Path,
    ) -> Result<Vec<SsTableId>> {
        let Some(manifest) = read_manifest(ops, admin, None).await? else {
            return Err(ops.error(
                "the database has no manifest after closing".into(),
                SfErrorKind::Internal,
            ));
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

pub(super) async fn write_batch(
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
