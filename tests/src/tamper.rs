//! What other processes and damage do to a published snapshot, for tests
//! of the reader, its admin and `sf-read`: another publisher moving
//! `_CURRENT` or publishing over it, a manifest object of any bytes, a
//! shard deleted or changed behind its manifest's back.

use object_store::PutPayload;
use sf_manifest::publish::gc;
use sf_manifest::{CurrentPointer, Manifest, ManifestStore, RunId, Timestamp, format::layout};

use crate::manifest_store;

/// The manifest `_CURRENT` names under `prefix`, decoded, and its bytes
/// as stored.
pub async fn current_manifest(prefix: &str) -> (Manifest, Vec<u8>) {
    let s = manifest_store(prefix);
    let current = s.load_current().await.expect("load").expect("published");
    let loc = s.locate(&current.pointer.manifest_ref, None).expect("locate");
    let bytes = loc
        .store
        .get(&loc.path)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes")
        .to_vec();
    (
        s.load_manifest(&current.pointer.manifest_ref).await.expect("manifest"),
        bytes,
    )
}

/// Points `_CURRENT` under `prefix` at `manifest_ref` as run `run`, by
/// compare-and-swap against what is there, as another publisher would.
pub async fn point_current_at(prefix: &str, manifest_ref: &str, run: &str) {
    let s = manifest_store(prefix);
    let cur = s.load_current().await.expect("load _CURRENT");
    let p = CurrentPointer::new(manifest_ref, RunId::new(run).expect("run id"));
    s.swap_current(&p, cur.as_ref().map(|c| &c.version))
        .await
        .expect("swap _CURRENT");
}

/// Publishes `manifest` over the snapshot `_CURRENT` names (which must
/// exist), as another publisher would; returns the new manifest's ref.
pub async fn publish_over(prefix: &str, manifest: &Manifest) -> String {
    let s = manifest_store(prefix);
    let cur = s
        .load_current()
        .await
        .expect("load _CURRENT")
        .expect("a published snapshot");
    s.publish(manifest, Some(&cur.version))
        .await
        .expect("publish")
        .manifest
        .manifest_ref
}

/// Writes `bytes` as a new manifest object of run `run` (published
/// nowhere); returns its URL.
pub async fn put_manifest_bytes(prefix: &str, run: &str, bytes: Vec<u8>) -> String {
    let s = manifest_store(prefix);
    let key = layout::manifest_key(Timestamp::now(), &RunId::new(run).expect("run id"));
    s.object_store()
        .put(&s.location().path_of(&key), PutPayload::from(bytes))
        .await
        .expect("put the manifest object");
    layout::join_url(s.prefix_url(), &key)
}

/// Deletes the attempt folder `db_url` names: the shard is gone while its
/// manifest still lists it.
pub async fn delete_shard(prefix: &str, db_url: &str) {
    let s = manifest_store(prefix);
    let key = layout::locate(s.prefix_url(), None, db_url).expect("the shard's key");
    gc::delete_prefix(&s, &key).await.expect("delete the shard");
}

/// Flips one bit of the `shard.db` in the attempt folder `db_url` names,
/// 100 bytes before its end, keeping its size: damage only the shard's
/// checksum can catch.
pub async fn damage_shard(prefix: &str, db_url: &str) {
    let s = manifest_store(prefix);
    let key = layout::locate(s.prefix_url(), None, db_url).expect("the shard's key");
    let path = s.location().path_of(&format!("{key}/{}", layout::SQLITE_SHARD_FILE));
    let mut bytes = s
        .object_store()
        .get(&path)
        .await
        .expect("get the shard")
        .bytes()
        .await
        .expect("the shard's bytes")
        .to_vec();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x01;
    s.object_store()
        .put(&path, PutPayload::from(bytes))
        .await
        .expect("put the damaged shard");
}
