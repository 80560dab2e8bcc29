//! Running a job file: a snapshot under `[output] prefix` through the
//! writer, or with `[output] table = "cat.db.t"` the input saved as a
//! table, and with `[input] format = "table"` a table read as the input,
//! each on its own or both at once.

use std::sync::Arc;
use std::time::Instant;

use datafusion::dataframe::DataFrame;
use datafusion::prelude::SessionContext;
use sf_writer::job::{BuildOptions, Engine, Outcome};

use super::file::JobFile;
use crate::canary::CanaryCheck;
use crate::error::{Error, Result};
use crate::names::Catalogs;
use crate::save::save_frame;
use crate::table::ShardTable;
use crate::table_state::live_current;

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
pub async fn run_job(job: &JobFile, engine: &dyn Engine, options: &BuildOptions) -> Result<Outcome> {
    run_job_in(job, engine, options, None).await
}

/// [`run_job`] with `fallback` catalogs for a job that configures none
/// (a job run through a [`Driver`](crate::Driver) sees the driver's).
pub(crate) async fn run_job_in(
    job: &JobFile,
    engine: &dyn Engine,
    options: &BuildOptions,
    fallback: Option<&Catalogs>,
) -> Result<Outcome> {
    let mut options = options.clone();
    if let Some(c) = &job.canary {
        options
            .checks
            .push(Arc::new(CanaryCheck::new(c, job.build.storage_options())));
    }
    let options = &options;
    let started = Instant::now();
    let build = &job.build;
    let input_table = job.input_table.as_ref();
    let output_table = job.output_table.as_ref();
    if output_table.is_none() && input_table.is_none() {
        return Ok(sf_writer::job::build(build, engine, options).await?);
    }
    let mut catalogs = job.catalogs()?;
    if catalogs.iter().next().is_none()
        && let Some(f) = fallback
    {
        catalogs = f.clone();
    }
    if let Some(t) = output_table {
        catalogs
            .ident(&t.table)
            .map_err(|e| Error::config("output.table", e.to_string()))?;
    }
    if let Some(table) = input_table {
        catalogs
            .ident(table)
            .map_err(|e| Error::config("input.table", e.to_string()))?;
    }
    if output_table.is_none()
        && let Some(done) = sf_writer::job::already_published(build, options).await?
    {
        return Ok(Outcome::AlreadyPublished(done));
    }
    if let Some(p) = &options.progress {
        p.phase("reading input schema");
    }
    let (ctx, df) = match input_table {
        Some(table) => {
            let ctx = engine.session(build).await?;
            let df = read_table(&catalogs, &ctx, table).await?;
            (ctx, df)
        }
        None => sf_writer::job::read_input(build, engine).await?,
    };
    match output_table {
        Some(t) => save_frame(&catalogs, engine, None, df, &t.table, t.mode, build, options).await,
        None => {
            let prepared = sf_writer::job::prepare_frame(build, ctx, df).await?;
            Ok(sf_writer::job::build_prepared(build, prepared, engine, options, started).await?)
        }
    }
}

/// Table `name` of `catalogs` as a DataFrame of `ctx`.
async fn read_table(catalogs: &Catalogs, ctx: &SessionContext, name: &str) -> Result<DataFrame> {
    let id = catalogs.ident(name)?;
    let (prefix, storage) = catalogs.locate(&id)?;
    let store = sf_manifest::ObjectManifestStore::open(&prefix, &storage)?;
    if live_current(&store).await?.is_none() {
        return Err(Error::NoSuchTable { table: id.to_string() });
    }
    let table = ShardTable::open(id, &prefix, storage, None).await?;
    Ok(ctx.read_table(Arc::new(table))?)
}
