//! Jobs that touch warehouse tables: `[output] table = "cat.db.t"` (the
//! input saved as a table) and `[input] format = "table"` (a table read
//! as the input), each on its own or both at once.

use std::sync::Arc;
use std::time::Instant;

use datafusion::dataframe::DataFrame;
use datafusion::prelude::SessionContext;
use sf_writer::config::{InputFormat, JobConfig};
use sf_writer::job::{BuildOptions, Engine, Outcome};

use crate::error::{Error, Result};
use crate::names::Catalogs;

/// Runs a job file's build: a snapshot under `[output] prefix` through
/// `sf-writer`, or, with `[output] table`, the job's input saved as that
/// table with the job's `mode`, through the same path as
/// [`Warehouse::save`](crate::Warehouse::save). With `[input] format =
/// "table"` the input is that warehouse table (the build's projection
/// reaches the table's scan).
///
/// Catalogs are the job's `[sf.catalog.NAME]`; table names are checked
/// before the input is read.
///
/// A `[validate] canary` is installed here, as a check the writer runs
/// with its gates (it reads through the online reader).
pub async fn run_job(job: &JobConfig, engine: &dyn Engine, options: &BuildOptions) -> Result<Outcome> {
    run_job_in(job, engine, options, None).await
}

/// [`run_job`] with `fallback` catalogs for a job that configures none
/// (a job run through a [`Driver`](crate::Driver) sees the driver's).
pub(crate) async fn run_job_in(
    job: &JobConfig,
    engine: &dyn Engine,
    options: &BuildOptions,
    fallback: Option<&Catalogs>,
) -> Result<Outcome> {
    let mut options = options.clone();
    if let Some(c) = &job.validate.canary {
        options.checks.push(std::sync::Arc::new(crate::canary::CanaryCheck::new(
            c,
            job.storage_options(),
        )));
    }
    let options = &options;
    let started = Instant::now();
    let input_table = job
        .input
        .as_ref()
        .filter(|i| i.format == InputFormat::Table)
        .and_then(|i| i.table.clone());
    if job.output.table.is_none() && input_table.is_none() {
        return Ok(sf_writer::job::build(job, engine, options).await?);
    }
    let mut catalogs = Catalogs::from_job(job)?;
    if catalogs.iter().next().is_none()
        && let Some(f) = fallback
    {
        catalogs = f.clone();
    }
    if let Some(table) = &job.output.table {
        catalogs
            .ident(table)
            .map_err(|e| Error::config("output.table", e.to_string()))?;
    }
    if let Some(table) = &input_table {
        catalogs
            .ident(table)
            .map_err(|e| Error::config("input.table", e.to_string()))?;
    }
    if job.output.table.is_none()
        && let Some(done) = sf_writer::job::already_published(job, options).await?
    {
        return Ok(Outcome::AlreadyPublished(done));
    }
    if let Some(p) = &options.progress {
        p.phase("reading input schema");
    }
    let (ctx, df) = match &input_table {
        Some(table) => {
            let ctx = engine.session(job).await?;
            let df = read_table(&catalogs, &ctx, table).await?;
            (ctx, df)
        }
        None => sf_writer::job::read_input(job, engine).await?,
    };
    match &job.output.table {
        Some(table) => crate::save_frame(&catalogs, engine, None, df, table, job.output.mode, job, options).await,
        None => {
            let prepared = sf_writer::job::prepare_frame(job, ctx, df).await?;
            Ok(sf_writer::job::build_prepared(job, prepared, engine, options, started).await?)
        }
    }
}

/// Table `name` of `catalogs` as a DataFrame of `ctx`.
async fn read_table(catalogs: &Catalogs, ctx: &SessionContext, name: &str) -> Result<DataFrame> {
    let id = catalogs.ident(name)?;
    let (prefix, storage) = catalogs.locate(&id)?;
    let store = sf_manifest::ObjectManifestStore::open(&prefix, &storage)?;
    if crate::live_current(&store).await?.is_none() {
        return Err(Error::NoSuchTable { table: id.to_string() });
    }
    let table = crate::ShardTable::open(id, &prefix, storage, None).await?;
    Ok(ctx.read_table(Arc::new(table))?)
}
