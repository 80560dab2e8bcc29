//! Reading a written database back: the driver's verification before
//! publishing, and [`read_all`] for tests and small shards.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;
use sf_manifest::format::checksum::KvHasher;
use sf_manifest::storage::overlay::CopyOnWriteStore;
use sf_manifest::{DbId, ErrorKind as SfErrorKind, Location};
use slatedb::admin::AdminBuilder;
use slatedb::config::ScanOptions;
use slatedb::{Checkpoint, DbReader, VersionedManifest};

use super::ops::{CHECKPOINT_NAME, Ops, first_object, read_manifest};
use super::settings::{SlateDbSettings, mib_to_bytes};
use crate::build::backend::contract::ShardContent;
use crate::error::{Error, Result};

pub(super) async fn verify_attempt(
    ops: &Ops<'_>,
    attempt: &Location,
    db_id: DbId,
    expected: &ShardContent,
) -> Result<()> {
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
    if let Some(want) = &expected.objects_checksum {
        // The objects as the upload wrote them: each re-read once, no row
        // decoded.
        let (found, objects) = super::digest::objects_checksum(&store, &attempt.path)
            .await
            .map_err(|e| ops.store(format!("re-reading the objects of {}", attempt.url), e))?;
        if &found != want {
            return Err(fail(format!(
                "objects checksum {found} over {objects} objects, writer reported {want}"
            )));
        }
        return Ok(());
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
pub(super) fn our_checkpoint(manifest: &VersionedManifest) -> Option<Checkpoint> {
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

pub(super) async fn read_all_with(ops: &Ops<'_>, location: &Location) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let store: Arc<dyn ObjectStore> = ops.guard.clone();
    let admin = AdminBuilder::new(location.path.clone(), Arc::clone(&store)).build();
    let Some(latest) = read_manifest(ops, &admin, None).await? else {
        return Err(ops.error(
            format!("{} holds no SlateDB database (no manifest)", location.url),
            SfErrorKind::Data,
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

/// Scans the database at `root` in key order (at `checkpoint`, else at its
/// latest state) and hands every row to `visit`.
pub(super) async fn scan(
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
