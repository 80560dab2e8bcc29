//! Listing and deleting shard attempts: the pieces both the writer (losing
//! attempts of its own run) and the admin `cleanup` (old runs) build on.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;

use crate::error::{Error, Result};
use crate::ids::{Attempt, DbId, RunId};
use crate::layout;
use crate::store::{ManifestStore, ObjectManifestStore};

/// One `shards/run_id=R/db=N/attempt=A/` folder and what is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptDir {
    /// The run.
    pub run_id: RunId,
    /// The shard.
    pub db_id: DbId,
    /// The attempt.
    pub attempt: Attempt,
    /// Key of the folder relative to the prefix.
    pub key: String,
    /// Objects inside it.
    pub objects: usize,
    /// Their total size.
    pub bytes: u64,
}

/// Lists every attempt folder under `shards/` (of one run, or of all).
///
/// Objects directly under `shards/run_id=R/` or `db=N/` that belong to no
/// attempt are not reported; `list_orphans` finds those.
pub async fn list_attempts(store: &ObjectManifestStore, run: Option<&RunId>) -> Result<Vec<AttemptDir>> {
    let key = match run {
        Some(r) => layout::run_shards_key(r),
        None => layout::SHARDS.to_string(),
    };
    let base = store.location().path_of(&key);
    let prefix_parts = store.location().path.parts().count();
    let mut found: BTreeMap<(RunId, DbId, Attempt), AttemptDir> = BTreeMap::new();
    let mut stream = store.object_store().list(Some(&base));
    while let Some(meta) = stream.next().await {
        let meta = meta.map_err(|e| Error::store("list", crate::layout::join_url(store.prefix_url(), &key), e))?;
        let rel: Vec<String> = meta
            .location
            .parts()
            .skip(prefix_parts)
            .map(|p| p.as_ref().to_string())
            .collect();
        let Some(parts) = layout::parse_shard_key(&rel.join("/")) else {
            continue;
        };
        let (Some(db_id), Some(attempt)) = (parts.db_id, parts.attempt) else {
            continue;
        };
        let entry = found
            .entry((parts.run_id.clone(), db_id, attempt))
            .or_insert_with(|| AttemptDir {
                key: layout::shard_attempt_key(&parts.run_id, db_id, attempt),
                run_id: parts.run_id,
                db_id,
                attempt,
                objects: 0,
                bytes: 0,
            });
        entry.objects += 1;
        entry.bytes += meta.size;
    }
    Ok(found.into_values().collect())
}

/// Deletes every object below `key` (relative to the prefix); returns how
/// many were deleted. Deleting a folder that is already gone is not an error.
pub async fn delete_prefix(store: &ObjectManifestStore, key: &str) -> Result<usize> {
    let base: Path = store.location().path_of(key);
    let url = layout::join_url(store.prefix_url(), key);
    let os = store.object_store();
    let locations = os.list(Some(&base)).map_ok(|m| m.location).boxed();
    let deleted: Vec<Path> = os
        .delete_stream(locations)
        .try_filter_map(|p| async move { Ok(Some(p)) })
        .or_else(|e| async move {
            match e {
                object_store::Error::NotFound { path, .. } => Ok(Path::from(path)),
                other => Err(other),
            }
        })
        .try_collect()
        .await
        .map_err(|e| Error::store("delete", url, e))?;
    Ok(deleted.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;
    use object_store::PutPayload;

    #[tokio::test]
    async fn lists_attempts_and_deletes_them() {
        let store = ObjectManifestStore::open("memory://gc-test/snap", &StorageOptions::new()).expect("open");
        let run = RunId::new("r1").expect("id");
        let os = store.object_store();
        for (db, att, file) in [
            (0, 0, "shard.db"),
            (0, 1, "shard.db"),
            (0, 1, "_claim.json"),
            (3, 0, "x/y"),
        ] {
            let key = format!("{}/{file}", layout::shard_attempt_key(&run, DbId(db), Attempt(att)));
            os.put(&store.location().path_of(&key), PutPayload::from_static(b"abc"))
                .await
                .expect("put");
        }
        os.put(
            &store.location().path_of("shards/run_id=r1/stray"),
            PutPayload::from_static(b"x"),
        )
        .await
        .expect("put");
        let all = list_attempts(&store, Some(&run)).await.expect("list");
        let ids: Vec<_> = all.iter().map(|a| (a.db_id.0, a.attempt.0, a.objects)).collect();
        assert_eq!(ids, vec![(0, 0, 1), (0, 1, 2), (3, 0, 1)]);
        assert_eq!(all[1].bytes, 6);
        assert_eq!(delete_prefix(&store, &all[1].key).await.expect("delete"), 2);
        assert_eq!(delete_prefix(&store, &all[1].key).await.expect("again"), 0);
        let left = list_attempts(&store, None).await.expect("list");
        assert_eq!(left.len(), 2);
    }
}
