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
    if let Some(bound) = settings.cache_max_bytes {
        counters.set_cache_max_bytes(bound);
    }
    let env = Arc::new(ShardEnv::new(settings.clone(), Arc::clone(&counters), runtime.clone())?);
    let current_url = sf_manifest::format::layout::join_url(store.prefix_url(), sf_manifest::format::layout::CURRENT);
    let (snapshot, degraded) = match unpublished {
        Some((manifest, manifest_ref)) => (
            Snapshot::from_manifest(&store, Some(&env), &manifest_ref, None, manifest)?,
            None,
        ),
        None => initial_snapshot(&store, &env, &settings.pin, &current_url, settings.history_fallback).await?,
    };
    crate::view::warm_up(&env, &snapshot, &settings.warmup_keys).await?;
    counters.snapshot_created.set(snapshot.created_seconds());
    counters.versions_held.set(1.0);
    let state = Arc::new(ReaderState::new(current_url, store, settings, env, counters, snapshot));
    state.set_degraded(degraded);
    let refresher = state
        .settings
        .refresh_interval
        .map(|interval| Arc::new(BackgroundRefresh::start(&runtime, &state, interval)));
    Ok(Reader { state, refresher })
}

/// Older manifests of the history a reader tries at start when the one
/// `_CURRENT` names cannot be read.
pub(crate) const FALLBACK_ATTEMPTS: usize = 3;

/// The first snapshot, and why it is not the one `_CURRENT` names when
/// the reader fell back to the history (see [`fallback`]).
async fn initial_snapshot(
    store: &ObjectManifestStore,
    env: &ShardEnv,
    pin: &Pin,
    current_url: &str,
    history_fallback: bool,
) -> Result<(Snapshot, Option<String>)> {
    let plain = |s: Snapshot| (s, None);
    match pin {
        Pin::Current => {
            let (failed_ref, error) = match store.load_current().await {
                Ok(None) => {
                    return Err(Error::NoCurrent {
                        location: current_url.to_string(),
                    });
                }
                Ok(Some(state)) => {
                    let manifest_ref = state.pointer.manifest_ref.clone();
                    match Snapshot::load(store, env, &manifest_ref, Some(state.pointer), current_url).await {
                        Ok(s) => return Ok(plain(s)),
                        Err(e) => (Some(manifest_ref), e),
                    }
                }
                Err(e) => (None, Error::from(e)),
            };
            if !history_fallback {
                return Err(error);
            }
            fallback(store, env, failed_ref.as_deref(), error).await
        }
        Pin::Ref(r) => {
            let url = if r.contains("://") {
                r.clone()
            } else {
                sf_manifest::format::layout::join_url(store.prefix_url(), r)
            };
            Snapshot::load(store, env, &url, None, "the pinned ref")
                .await
                .map(plain)
        }
        Pin::Offset(n) => {
            let history = store.history().await?;
            let entry = history.get(*n).ok_or_else(|| Error::NotInHistory {
                what: format!("offset {n} (the history holds {} manifests)", history.len()),
                location: store.prefix_url().to_string(),
            })?;
            Snapshot::load(store, env, &entry.manifest_ref, None, &format!("history offset {n}"))
                .await
                .map(plain)
        }
    }
}

/// At start, when `_CURRENT` or the manifest it names (`failed_ref`, when
/// `_CURRENT` could be read) cannot be read because of what is stored
/// (missing, corrupt, refused by the checks of untrusted manifests): the
/// newest readable manifest of the history published before it, trying
/// at most [`FALLBACK_ATTEMPTS`]. The reader then reports itself degraded
/// (the reason returned here) until a refresh reads a good `_CURRENT`.
///
/// Errors of access or of an unreachable store are returned as they are:
/// the history would fail the same way, and serving an older run for a
/// passing outage would hide it. When no older manifest opens either, the
/// error is `error`, the current manifest's.
async fn fallback(
    store: &ObjectManifestStore,
    env: &ShardEnv,
    failed_ref: Option<&str>,
    error: Error,
) -> Result<(Snapshot, Option<String>)> {
    use sf_manifest::{Classified, ErrorKind};
    if !matches!(error.kind(), ErrorKind::Data | ErrorKind::Gate) {
        return Err(error);
    }
    let history = match store.history().await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(prefix = %store.prefix_url(), error = %sf_manifest::chain(&e), "the current manifest cannot be read, nor the history listed");
            return Err(error);
        }
    };
    // Only manifests published before the failed one: a newer one was
    // never made current.
    let older = match failed_ref.and_then(|r| history.iter().position(|h| h.manifest_ref == r)) {
        Some(i) => &history[i + 1..],
        None => &history[..],
    };
    let why = sf_manifest::chain(&error);
    for entry in older.iter().take(FALLBACK_ATTEMPTS) {
        let named_by = format!("history offset {}", entry.offset);
        match Snapshot::load(store, env, &entry.manifest_ref, None, &named_by).await {
            Ok(snapshot) => {
                let reason = format!(
                    "the manifest _CURRENT names cannot be read ({why}); serving run {} (history offset {}) until a refresh reads a good one",
                    entry.run_id, entry.offset
                );
                tracing::warn!(prefix = %store.prefix_url(), run_id = %entry.run_id, manifest = %entry.manifest_ref, %reason, "fell back to an older manifest of the history");
                return Ok((snapshot, Some(reason)));
            }
            Err(e) => {
                tracing::warn!(prefix = %store.prefix_url(), manifest = %entry.manifest_ref, error = %sf_manifest::chain(&e), "an older manifest of the history cannot be read either");
            }
        }
    }
    Err(error)
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
