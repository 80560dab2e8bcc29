//! # sf-warehouse: tables on the snapshot format
//!
//! `save_as_table`, `table`, listing, dropping, and SQL over
//! `catalog.db.table`, above both halves of ShardForge: tables are written
//! by `sf-writer`'s build and read by `sf-reader`, and neither of those
//! crates knows about tables.
//!
//! A table `cat.db.t` is a snapshot under `<warehouse of cat>/db/t/`, in
//! the usual format, so the plain reader and `sf-read` serve it too. Its
//! manifest records the Arrow schema (see [`mod@format`]) so [`Warehouse::table`]
//! restores the rows with their exact types. Dropping a table writes a
//! `_DROPPED` marker: the table leaves the catalog at once, and its data
//! stays until cleanup removes it (`sf-read cleanup` after the retention
//! you choose), so a reader holding it keeps working.
//!
//! [`Driver`] ([`session`]) lends sessions from a bounded pool, embedded
//! or on a cluster (the cluster's engine lives in `sf-executor`), each
//! with the driver's settings; builds and saves take a [`Source`]. Global
//! temporary views ([`global_temp`]) are one registry per process, read
//! as `global_temp.<name>` by every session.
//!
//! The job file `sf-write` reads is this layer's ([`JobFile`], [`job`]):
//! the writer's build job wrapped with tables as input or output,
//! catalogs, the canary gate and the cluster section.
//!
//! | room | what it holds |
//! |---|---|
//! | [`mod@warehouse`] | [`Warehouse`]: save, read, list, drop tables, SQL |
//! | [`save`] | save modes and the build a save runs |
//! | [`table_state`] | whether a table exists (published, not dropped) |
//! | [`table`] | [`ShardTable`], a table as a DataFusion provider with point lookups |
//! | [`mod@format`] | the schema a table's manifest records |
//! | [`names`] | table names and catalogs |
//! | [`catalog`], [`statement`] | SQL over `catalog.db.table` |
//! | [`session`], [`global_temp`] | the driver's sessions and global views |
//! | [`job`] | the job file and running it |
//! | [`canary`] | the canary gate |

pub mod canary;
pub mod catalog;
mod error;
pub mod format;
pub mod global_temp;
pub mod job;
pub mod names;
pub mod save;
pub mod session;
pub mod statement;
pub mod table;
pub mod table_state;
pub mod warehouse;

pub use catalog::{WarehouseCatalog, sql};
pub use error::{Error, Result};
pub use format::TableMeta;
pub use global_temp::{GlobalTempViews, global_temp_views};
pub use job::{ClusterConfig, JobFile, TableOutput, run_job};
pub use names::{Catalogs, TableIdent};
pub use save::{SaveMode, save_frame, table_job};
pub use session::{Driver, DriverBuilder, PoolStats, PooledSession, Session, SessionSettings, Source};
pub use table::ShardTable;
pub use table_state::{DROPPED, table_exists};
pub use warehouse::Warehouse;
