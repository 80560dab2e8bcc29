//! One session of a driver: SQL, tables, views, and builds whose input is
//! a [`Source`].

use sf_manifest::Classified;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use datafusion::dataframe::DataFrame;
use datafusion::prelude::SessionContext;
use datafusion::sql::TableReference;
use sf_manifest::ErrorKind;
use sf_writer::config::JobConfig;
use sf_writer::job::{BuildOptions, Engine, Outcome, build_prepared, prepare_frame};

use super::engines::SessionEngine;
use super::shared::Shared;
use super::source::{Kind, Source, Step};
use crate::catalog::{is_query, plan_sql};
use crate::error::{Error, Result};
use crate::global_temp::{CreateMode, GLOBAL_TEMP_DB, global_temp_views};
use crate::job::JobFile;
use crate::save::{SaveMode, table_job};
use crate::warehouse::Warehouse;

/// A session of a [`Driver`](super::Driver), borrowed through a
/// [`PooledSession`](super::PooledSession).
///
/// What it registers (temporary views, `SET` settings) stays in it, for
/// whoever borrows it next, until it is discarded; global temporary views
/// are the process's and visible to every session.
pub struct Session {
    ctx: SessionContext,
    shared: Arc<Shared>,
    failed: AtomicBool,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.ctx.session_id())
            .field("engine", &self.shared.engine.describe())
            .field("failed", &self.has_failed())
            .finish()
    }
}

impl Session {
    pub(crate) fn new(ctx: SessionContext, shared: Arc<Shared>) -> Self {
        Session {
            ctx,
            shared,
            failed: AtomicBool::new(false),
        }
    }

    /// The DataFusion session, for anything this type does not wrap
    /// (reading files, registering functions, building DataFrames).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The session's id (on a cluster, also the scheduler's session).
    pub fn id(&self) -> String {
        self.ctx.session_id()
    }

    /// The session's current value of setting `key`
    /// (`datafusion.execution.batch_size`, `ballista.job.name`, ...).
    pub fn setting(&self, key: &str) -> Option<String> {
        self.ctx
            .state()
            .config()
            .options()
            .entries()
            .into_iter()
            .find(|e| e.key == key)
            .and_then(|e| e.value)
    }

    /// Marks the session failed: it is thrown away instead of returned to
    /// the pool. Operations here do it themselves on errors of the engine
    /// or of storage, which may leave a session (or its connection) in a
    /// bad state; errors in what the caller asked for (SQL, names, data)
    /// leave it usable.
    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Whether the session was marked failed.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    fn watch<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result
            && matches!(e.kind(), ErrorKind::Internal | ErrorKind::Unavailable)
        {
            self.mark_failed();
        }
        result
    }

    /// This session as the engine of a build.
    fn engine(&self) -> SessionEngine {
        SessionEngine {
            ctx: self.ctx.clone(),
            engine: Arc::clone(&self.shared.engine),
            settings: self.shared.engine_settings.clone(),
        }
    }

    /// The driver's warehouse writing through this session (made per call:
    /// the session's own catalogs hold the driver's warehouse, so no
    /// session is reachable from itself).
    fn warehouse(&self) -> Warehouse {
        self.shared.warehouse.with_engine(Arc::new(self.engine()))
    }

    /// Runs one SQL statement as [`crate::sql`] does: warehouse tables with
    /// point lookups, `CREATE TABLE AS` (built in this session), `DROP
    /// TABLE`, global and session temporary views, `SHOW TABLES IN`.
    pub async fn sql(&self, text: &str) -> Result<DataFrame> {
        let r = crate::sql(&self.warehouse(), &self.ctx, text).await;
        self.watch(r)
    }

    /// Table or view `name`: `global_temp.v` is a global temporary view; a
    /// bare name is a temporary view of this session, else a table of the
    /// default catalog and database; `db.t` and `cat.db.t` are tables.
    pub async fn table(&self, name: &str) -> Result<DataFrame> {
        let r = self.table_inner(name).await;
        self.watch(r)
    }

    async fn table_inner(&self, name: &str) -> Result<DataFrame> {
        let reference = TableReference::from(name);
        if reference
            .schema()
            .is_some_and(|s| s.eq_ignore_ascii_case(GLOBAL_TEMP_DB))
            && global_temp_views().get(reference.table()).is_none()
        {
            return Err(Error::NoSuchView {
                view: format!("{GLOBAL_TEMP_DB}.{}", reference.table()),
            });
        }
        let defaults = self.ctx.state().config().options().catalog.clone();
        let resolved = reference
            .clone()
            .resolve(&defaults.default_catalog, &defaults.default_schema);
        let schema = self
            .ctx
            .catalog(&resolved.catalog)
            .and_then(|c| c.schema(&resolved.schema));
        let found = match schema {
            Some(s) => s.table(&resolved.table).await?.is_some(),
            None => false,
        };
        if !found {
            return Err(Error::NoSuchTable {
                table: name.to_string(),
            });
        }
        Ok(self.ctx.table(reference).await?)
    }

    /// Registers `df` as temporary view `name` of this session; a view of
    /// that name is an error (see [`create_or_replace_temp_view`](Self::create_or_replace_temp_view)).
    pub fn create_temp_view(&self, name: &str, df: DataFrame) -> Result<()> {
        crate::names::check_part("view", name, name)?;
        self.ctx.register_table(name, df.into_view())?;
        Ok(())
    }

    /// Registers `df` as temporary view `name`, replacing one of that name.
    pub fn create_or_replace_temp_view(&self, name: &str, df: DataFrame) -> Result<()> {
        crate::names::check_part("view", name, name)?;
        self.ctx.deregister_table(name)?;
        self.ctx.register_table(name, df.into_view())?;
        Ok(())
    }

    /// Removes temporary view `name` of this session; whether it existed.
    pub fn drop_temp_view(&self, name: &str) -> Result<bool> {
        Ok(self.ctx.deregister_table(name)?.is_some())
    }

    /// Registers `df` as global temporary view `name` (`v` or
    /// `global_temp.v`), read by every session of the process as
    /// `global_temp.v`; [`Error::ViewExists`] when it exists.
    pub fn create_global_temp_view(&self, name: &str, df: DataFrame) -> Result<()> {
        global_temp_views().create(name, df.into_unoptimized_plan(), None, CreateMode::ErrorIfExists)?;
        Ok(())
    }

    /// Registers `df` as global temporary view `name`, replacing one of
    /// that name.
    pub fn create_or_replace_global_temp_view(&self, name: &str, df: DataFrame) -> Result<()> {
        global_temp_views().create(name, df.into_unoptimized_plan(), None, CreateMode::Replace)?;
        Ok(())
    }

    /// Removes global temporary view `name`; [`Error::NoSuchView`] when
    /// there is none.
    pub fn drop_global_temp_view(&self, name: &str) -> Result<()> {
        global_temp_views().drop(name, false)?;
        Ok(())
    }

    /// `source` as a DataFrame of this session.
    pub async fn dataframe(&self, source: &Source) -> Result<DataFrame> {
        let r = self.resolve(source).await;
        self.watch(r)
    }

    /// Builds a snapshot of `source` at the job's `[output] prefix`, with
    /// the job's key, routing and write settings (its `[input]` is not
    /// read), in this session: embedded, or on the cluster the session is
    /// connected to.
    pub async fn build(&self, source: &Source, job: &JobConfig, options: &BuildOptions) -> Result<Outcome> {
        let r = self.build_inner(source, job, options).await;
        self.watch(r)
    }

    async fn build_inner(&self, source: &Source, job: &JobConfig, options: &BuildOptions) -> Result<Outcome> {
        let started = Instant::now();
        let df = self.resolve(source).await?;
        let engine = self.engine();
        let ctx = engine.session(job).await?;
        let df = DataFrame::new(ctx.state(), df.into_unoptimized_plan());
        let prepared = prepare_frame(job, ctx, df).await?;
        Ok(build_prepared(job, prepared, &engine, options, started).await?)
    }

    /// Saves `source` as table `name` with `mode`; `job` supplies the key
    /// column, routing and write settings (as [`Warehouse::save`]).
    pub async fn save(&self, source: &Source, name: &str, mode: SaveMode, job: &JobConfig) -> Result<Outcome> {
        self.save_with(source, name, mode, job, &BuildOptions::default()).await
    }

    /// [`save`](Self::save) with progress and dry-run options.
    pub async fn save_with(
        &self,
        source: &Source,
        name: &str,
        mode: SaveMode,
        job: &JobConfig,
        options: &BuildOptions,
    ) -> Result<Outcome> {
        let r = async {
            let df = self.resolve(source).await?;
            self.warehouse().save_with(df, name, mode, job, options).await
        }
        .await;
        self.watch(r)
    }

    /// Saves `source` as table `name` keyed by `key_col` over `num_dbs`
    /// SQLite shards, default settings otherwise.
    pub async fn save_as_table(
        &self,
        source: &Source,
        name: &str,
        mode: SaveMode,
        key_col: &str,
        num_dbs: u32,
    ) -> Result<Outcome> {
        self.save(source, name, mode, &table_job(key_col, num_dbs)).await
    }

    /// Runs a job file's build in this session (see
    /// [`Driver::run_job`](super::Driver::run_job)).
    pub async fn run_job(&self, job: &JobFile, options: &BuildOptions) -> Result<Outcome> {
        let engine = self.engine();
        let r = crate::job::run::run_job_in(job, &engine, options, Some(&self.shared.catalogs)).await;
        self.watch(r)
    }

    /// The rows of `source`, planned in this session.
    async fn resolve(&self, source: &Source) -> Result<DataFrame> {
        let (kind, steps) = source.parts();
        let session = self;
        let mut df = match kind {
            Kind::Sql(text) => {
                // Planned, not run: a statement that changes something is
                // refused before it does.
                let ctx = session.context();
                let plan = plan_sql(ctx, text).await?;
                if !is_query(&plan) {
                    return Err(Error::config(
                        "source",
                        format!("from_sql takes a query; {:?} is not one", text.trim()),
                    ));
                }
                DataFrame::new(ctx.state(), plan)
            }
            Kind::Table(name) => session.table(name).await?,
            Kind::Frame(df) => DataFrame::new(session.context().state(), df.as_ref().clone().into_unoptimized_plan()),
        };
        for step in steps {
            df = match step {
                Step::Select(cols) => {
                    let cols: Vec<&str> = cols.iter().map(String::as_str).collect();
                    df.select_columns(&cols)?
                }
                Step::Filter(e) => df.filter(e.clone())?,
            };
        }
        Ok(df)
    }
}
