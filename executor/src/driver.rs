//! A `sf_warehouse::Driver` whose sessions run on a Ballista cluster.
//!
//! Each pooled session is a Ballista client session of its own, made by
//! [`ClusterEngine`] with the driver's settings applied: `datafusion.*` and
//! `ballista.*` travel with every query to the scheduler and the
//! executors' tasks (see [`crate::engine`] for what else travels). Catalogs,
//! views and listings stay with the driver: `information_schema` and `SHOW
//! TABLES` are answered by the session itself. When the pool stops a
//! session the engine asks the scheduler to drop its session state.

use std::sync::Arc;

use sf_warehouse::{Driver, DriverBuilder, JobFile};

use crate::engine::{ClusterEngine, engine_for};

/// A driver builder whose sessions run on the cluster at `url`
/// (`df://host:port`), or embedded when `url` is `None`; then
/// [`DriverBuilder::with_job`], settings and [`DriverBuilder::build`].
pub fn driver(url: Option<&str>) -> sf_writer::Result<DriverBuilder> {
    let builder = Driver::builder();
    Ok(match url {
        Some(u) => builder.with_engine(Arc::new(ClusterEngine::parse(u)?)),
        None => builder,
    })
}

/// The driver a job file describes: on the cluster of `--cluster` (when
/// given) or `[cluster] scheduler`, else embedded; its pool size, session
/// settings and catalogs from the job.
pub fn driver_for_job(job: &JobFile, cluster: Option<&str>) -> sf_warehouse::Result<Driver> {
    let builder = match engine_for(cluster, job)? {
        Some(engine) => Driver::builder().with_engine(Arc::new(engine)),
        None => Driver::builder(),
    };
    builder.with_job(job)?.build()
}
