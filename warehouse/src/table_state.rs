//! Whether a table exists: published under its prefix and not dropped.
//!
//! Dropping a table writes a [`DROPPED`] marker beside its `_CURRENT`: the
//! table leaves the catalog at once, and its data stays until cleanup.

use sf_manifest::{ManifestStore, ObjectManifestStore};

use crate::error::Result;

/// Marker object of a dropped table.
pub const DROPPED: &str = "_DROPPED";

/// Names of the folders directly under `url`.
pub(crate) async fn folders(url: &str, storage: &sf_manifest::StorageOptions) -> Result<Vec<String>> {
    let root = sf_manifest::resolve(url, storage)?;
    let listed = root
        .store
        .list_with_delimiter(Some(&root.path))
        .await
        .map_err(|e| sf_manifest::Error::store("list", root.url.clone(), e))?;
    Ok(listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect())
}

/// Whether a table prefix holds a live table: published, not dropped.
pub async fn table_exists(store: &ObjectManifestStore) -> Result<bool> {
    Ok(live_current(store).await?.is_some())
}

/// `_CURRENT` of a live table; `None` when unpublished or dropped.
pub(crate) async fn live_current(store: &ObjectManifestStore) -> Result<Option<sf_manifest::CurrentState>> {
    let Some(current) = store.load_current().await? else {
        return Ok(None);
    };
    let marker = store.location().child(DROPPED);
    match marker.store.head(&marker.path).await {
        Ok(_) => Ok(None),
        Err(object_store::Error::NotFound { .. }) => Ok(Some(current)),
        Err(e) => Err(sf_manifest::Error::store("read", marker.url, e).into()),
    }
}
