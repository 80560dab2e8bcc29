//! A reader's life: opening it (the first snapshot, by `_CURRENT`, a pin
//! or a manifest in hand; its warm-up; the background refresh) and
//! closing it (refusing reads and letting go of the open shards).

use std::sync::Arc;

use object_store::ObjectStore;
use sf_manifest::{Manifest, ManifestStore, ObjectManifestStore, StorageOptions};

use super::api::Reader;
use super::refresh::BackgroundRefresh;
use crate::error::{Error, Result};
use crate::prefix::prefix_location;
use crate::settings::{Pin, ReaderSettings};
use crate::shard::ShardEnv;
use crate::snapshot::Snapshot;
use crate::state::ReaderState;
use crate::stats::Counters;

/// What a [`ReaderBuilder`](crate::ReaderBuilder) was given.
pub(super) struct Opening {
    pub(super) current_url: String,
    pub(super) settings: ReaderSettings,
    pub(super) options: StorageOptions,
    pub(super) store: Option<Arc<dyn ObjectStore>>,
    pub(super) unpublished: Option<(Manifest, String)>,
    pub(super) metric_labels: Vec<(String, String)>,
}

/// See [`ReaderBuilder::build`](crate::ReaderBuilder::build).
pub(super) async fn open(opening: Opening) -> Result<Reader> {
    let Opening {
        current_url,
        settings,
        options,
        store,
        unpublished,
        metric_labels,
    } = opening;
    settings.validate()?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| Error::config("runtime", "a Reader must be built inside a tokio runtime"))?;
    let location = prefix_location(&current_url, &options, store)?;
    let store = ObjectManifestStore::new(location);
    let counters = Arc::new(Counters::new(&metric_labels));
    let env = Arc::new(ShardEnv::new(settings.clone(), Arc::clone(&counters), runtime.clone())?);
    let current_url = sf_manifest::format::layout::join_url(store.prefix_url(), sf_manifest::format::layout::CURRENT);
    let snapshot = match unpublished {
        Some((manifest, manifest_ref)) => Snapshot::from_manifest(&store, Some(&env), &manifest_ref, None, manifest)?,
        None => initial_snapshot(&store, &env, &settings.pin, &current_url).await?,
    };
    crate::view::warm_up(&env, &snapshot, &settings.warmup_keys).await?;
    counters.snapshot_created.set(snapshot.created_seconds());
    counters.versions_held.set(1.0);
    let state = Arc::new(ReaderState::new(current_url, store, settings, env, counters, snapshot));
    let refresher = state
        .settings
        .refresh_interval
        .map(|interval| Arc::new(BackgroundRefresh::start(&runtime, &state, interval)));
    Ok(Reader { state, refresher })
}

async fn initial_snapshot(
    store: &ObjectManifestStore,
    env: &ShardEnv,
    pin: &Pin,
    current_url: &str,
) -> Result<Snapshot> {
    match pin {
        Pin::Current => {
            let state = store.load_current().await?.ok_or_else(|| Error::NoCurrent {
                location: current_url.to_string(),
            })?;
            let manifest_ref = state.pointer.manifest_ref.clone();
            Snapshot::load(store, env, &manifest_ref, Some(state.pointer), current_url).await
        }
        Pin::Ref(r) => {
            let url = if r.contains("://") {
                r.clone()
            } else {
                sf_manifest::format::layout::join_url(store.prefix_url(), r)
            };
            Snapshot::load(store, env, &url, None, "the pinned ref").await
        }
        Pin::Offset(n) => {
            let history = store.history().await?;
            let entry = history.get(*n).ok_or_else(|| Error::NotInHistory {
                what: format!("offset {n} (the history holds {} manifests)", history.len()),
                location: store.prefix_url().to_string(),
            })?;
            Snapshot::load(store, env, &entry.manifest_ref, None, &format!("history offset {n}")).await
        }
    }
}

impl Reader {
    /// Stops the background refresh, refuses further reads (reads in
    /// flight finish) and lets go of the open shards: their memory (memory
    /// mode) and connections are released once the reads in flight are
    /// done. `info()`, `shards()` and `stats()` still answer.
    pub fn close(&self) {
        self.state.mark_closed();
        if let Some(r) = &self.refresher {
            r.stop();
        }
        // Snapshots kept for pinned reads go now; the same manifest
        // without open shards takes the served one's place; the old ones,
        // and their shards, go with their last readers.
        self.state.kept().clear();
        let snap = self.state.served();
        match Snapshot::from_manifest(
            &self.state.store,
            None,
            &snap.manifest_ref,
            snap.pointer.clone(),
            snap.manifest.clone(),
        ) {
            Ok(mut unopened) => {
                unopened.loaded_at = snap.loaded_at;
                *sf_manifest::sync::write(&self.state.served) = Arc::new(unopened);
            }
            // It was checked when it was loaded; should it fail now, the
            // shards close with the last clone of the reader instead.
            Err(e) => {
                tracing::warn!(error = %e, "closing: the served snapshot's shards stay open until the reader is dropped")
            }
        }
    }
}
