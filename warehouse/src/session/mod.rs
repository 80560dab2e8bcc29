//! Sessions: a [`Driver`] with a bounded pool of sessions, embedded or on
//! a Ballista cluster, the settings every session gets, and the
//! [`Source`]s of builds and saves.
//!
//! ```no_run
//! # async fn f() -> sf_warehouse::Result<()> {
//! use sf_warehouse::{Driver, SaveMode, Source};
//!
//! let driver = Driver::builder()
//!     .with_pool_size(4)
//!     .with_setting("sf.catalog.wh.warehouse", "s3://bucket/warehouse")
//!     .with_setting("datafusion.execution.batch_size", "4096")
//!     .build()?;
//! let session = driver.session().await?; // back to the pool when dropped
//! session.create_global_temp_view(
//!     "recent",
//!     session.sql("SELECT * FROM wh.app.events WHERE day >= '2024-06-01'").await?,
//! )?;
//! session
//!     .save_as_table(&Source::from_table("global_temp.recent"), "wh.app.recent", SaveMode::Overwrite, "id", 8)
//!     .await?;
//! drop(session);
//! driver.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! The Ballista cluster's engine is `sf_executor::ClusterEngine`; the
//! writer's [`Engine`](sf_writer::job::Engine) is all the driver needs of
//! an engine.

mod driver;
mod engines;
mod handle;
mod settings;
mod shared;
mod source;

pub use driver::{DEFAULT_POOL_SIZE, Driver, DriverBuilder, PoolStats, PooledSession};
pub use handle::Session;
pub use settings::{NAMESPACES, SessionSettings};
pub use source::Source;
