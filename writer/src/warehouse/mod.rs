//! Warehouse tables on the snapshot format.

pub mod format;
mod mode;
pub mod names;

pub use mode::SaveMode;
