//! What every session of a driver shares.

use std::sync::Arc;

use sf_writer::job::Engine;

use super::settings::SessionSettings;
use crate::names::Catalogs;
use crate::warehouse::Warehouse;

/// What every session of a driver shares.
pub(crate) struct Shared {
    pub(crate) catalogs: Catalogs,
    /// Reads tables for the sessions' catalogs; writes go through the
    /// session that asks (see `Session::warehouse`).
    pub(crate) warehouse: Warehouse,
    /// The engine sessions are made on.
    pub(crate) engine: Arc<dyn Engine>,
    /// The caller's settings.
    pub(crate) settings: SessionSettings,
    /// The driver's defaults (catalog, schema, information_schema), then
    /// the caller's settings.
    pub(crate) engine_settings: SessionSettings,
}
