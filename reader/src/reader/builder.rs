//! [`ReaderBuilder`]: what a reader is made of, gathered before anything
//! is read. Settings (serialisable knobs) come whole; components (an
//! object store, metric labels, a manifest in hand) one by one.

use std::sync::Arc;

use object_store::ObjectStore;
use sf_manifest::{Manifest, StorageOptions};

use super::api::Reader;
use super::lifecycle::{self, Opening};
use crate::error::Result;
use crate::settings::{Pin, ReaderSettings};

/// Builds a [`Reader`]; see [`Reader::builder`].
#[must_use]
pub struct ReaderBuilder {
    current_url: String,
    settings: ReaderSettings,
    options: StorageOptions,
    store: Option<Arc<dyn ObjectStore>>,
    unpublished: Option<(Manifest, String)>,
    metric_labels: Vec<(String, String)>,
}

impl std::fmt::Debug for ReaderBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderBuilder")
            .field("current_url", &self.current_url)
            .field("settings", &self.settings)
            .field("options", &self.options)
            .field("store", &self.store.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl Reader {
    /// A builder for a reader of the snapshot at `current_url`: the URL of
    /// `_CURRENT` (`s3://bucket/prefix/_CURRENT`) or of its prefix.
    pub fn builder(current_url: impl Into<String>) -> ReaderBuilder {
        ReaderBuilder {
            current_url: current_url.into(),
            settings: ReaderSettings::default(),
            options: StorageOptions::new(),
            store: None,
            unpublished: None,
            metric_labels: Vec::new(),
        }
    }
}

impl ReaderBuilder {
    /// Replaces all settings.
    pub fn with_settings(mut self, settings: ReaderSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Storage options for URLs the reader resolves (`aws_endpoint`, ...);
    /// the `AWS_*`/`GOOGLE_*`/`AZURE_*` environment applies too.
    pub fn with_storage_options(mut self, options: StorageOptions) -> Self {
        self.options = options;
        self
    }

    /// An object store to read the prefix (and the shards under it)
    /// through, instead of one resolved from the URL.
    pub fn with_object_store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Serves `manifest`, given in hand instead of read from storage
    /// (`manifest_ref` names it in errors and `info()`): a build reads its
    /// new shards through the reader before anything is published (its
    /// canary gate). The reader never refreshes away from it.
    pub fn with_unpublished_manifest(mut self, manifest: Manifest, manifest_ref: impl Into<String>) -> Self {
        let manifest_ref = manifest_ref.into();
        self.settings.pin = Pin::Ref(manifest_ref.clone());
        self.settings.refresh_interval = None;
        self.unpublished = Some((manifest, manifest_ref));
        self
    }

    /// A label on every figure the reader emits through the `metrics`
    /// facade (e.g. `snapshot` = the name a service knows it by), so that
    /// several readers in one process are told apart. The recorder must be
    /// installed before [`build`](Self::build).
    pub fn with_metric_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metric_labels.push((key.into(), value.into()));
        self
    }

    /// Reads `_CURRENT` (or the pin) and the manifest, reads the warm-up
    /// keys (opening their shards), and starts the background refresh if
    /// one is set. Opens no other shard. Must run inside a tokio runtime,
    /// which the reader then uses for its background work.
    pub async fn build(self) -> Result<Reader> {
        lifecycle::open(Opening {
            current_url: self.current_url,
            settings: self.settings,
            options: self.options,
            store: self.store,
            unpublished: self.unpublished,
            metric_labels: self.metric_labels,
        })
        .await
    }
}
