//! The final compaction: one merge of every SST into a single sorted run,
//! and the exact clean-up of what it replaced.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::path::Path;
use sf_manifest::ErrorKind as SfErrorKind;
use slatedb::VersionedManifest;
use slatedb::admin::Admin;
use slatedb::compactor::{
    CompactionScheduler, CompactionSchedulerSupplier, CompactionSpec, CompactorStateView, SourceId,
};
use slatedb::config::CompactorOptions;
use slatedb::manifest::SsTableId;

use sf_manifest::sync::lock;

use super::ops::{Ops, read_manifest};
use crate::error::Result;

/// How often the final compaction is checked on.
pub(super) const COMPACTION_POLL: Duration = Duration::from_millis(100);

/// Merges the final compaction may try before the upload gives up.
const MAX_COMPACTION_TRIES: u32 = 3;

/// Every SST a manifest references, in L0 and in sorted runs.
pub(super) fn sst_ids(manifest: &VersionedManifest) -> Vec<SsTableId> {
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
pub(super) async fn delete_replaced_ssts(
    ops: &Ops<'_>,
    admin: &Admin,
    store: &Arc<dyn ObjectStore>,
    root: &Path,
    replaced: Vec<SsTableId>,
) -> Result<()> {
    let Some(latest) = read_manifest(ops, admin, None).await? else {
        return Err(ops.error(
            "the database has no manifest after compacting".into(),
            SfErrorKind::Internal,
        ));
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
                Err(e) => Err(ops.store(format!("deleting {path}: {e}"), e)),
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
pub(super) async fn release_compactor_checkpoints(ops: &Ops<'_>, admin: &Admin) -> Result<()> {
    let Some(manifest) = read_manifest(ops, admin, None).await? else {
        return Err(ops.error(
            "the database has no manifest after compacting".into(),
            SfErrorKind::Internal,
        ));
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
pub(super) async fn watch_merge(
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
                return Err(ops.error(format!("the compactor {why} before the final compaction finished"), SfErrorKind::Internal));
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
                SfErrorKind::Internal,
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

/// What the merge scheduler saw last; shared with the upload waiting on it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct MergeWatch {
    pub(super) tries: u32,
    pub(super) running: usize,
    pub(super) bytes_processed: u64,
    pub(super) done: bool,
    pub(super) gave_up: bool,
}

pub(super) struct MergeAllSupplier {
    pub(super) watch: Arc<Mutex<MergeWatch>>,
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
pub(super) struct MergeAll {
    pub(super) watch: Arc<Mutex<MergeWatch>>,
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
pub(super) fn merge_all_spec(manifest: &VersionedManifest) -> CompactionSpec {
    let sources = manifest
        .l0()
        .iter()
        .map(|view| SourceId::SstView(view.id))
        .chain(manifest.compacted().iter().map(|run| SourceId::SortedRun(run.id)))
        .collect();
    let destination = manifest.compacted().iter().map(|run| run.id).min().unwrap_or(0);
    CompactionSpec::new(sources, destination)
}
