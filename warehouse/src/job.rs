//! Jobs whose output is a warehouse table (`[output] table = "cat.db.t"`).

use sf_writer::config::JobConfig;
use sf_writer::job::{BuildOptions, Engine, Outcome};

use crate::error::Result;
use crate::names::Catalogs;

/// Runs a job file's build: a snapshot under `[output] prefix` through
/// `sf-writer`, or, with `[output] table`, the job's input saved as that
/// table with the job's `mode`, through the same path as
/// [`Warehouse::save`](crate::Warehouse::save).
///
/// The table's name and catalog are checked before the input is read.
///
/// A `[validate] canary` is installed here, as a check the writer runs
/// with its gates (it reads through the online reader).
pub async fn run_job(job: &JobConfig, engine: &dyn Engine, options: &BuildOptions) -> Result<Outcome> {
    let mut options = options.clone();
    if let Some(c) = &job.validate.canary {
        options.checks.push(std::sync::Arc::new(crate::canary::CanaryCheck::new(
            c,
            job.storage_options(),
        )));
    }
    let options = &options;
    let Some(table) = &job.output.table else {
        return Ok(sf_writer::job::build(job, engine, options).await?);
    };
    let catalogs = Catalogs::from_job(job)?;
    catalogs
        .ident(table)
        .map_err(|e| crate::Error::config("output.table", e.to_string()))?;
    if let Some(p) = &options.progress {
        p.phase("reading input schema");
    }
    let (_, df) = sf_writer::job::read_input(job, engine).await?;
    crate::save_frame(&catalogs, engine, None, df, table, job.output.mode, job, options).await
}
