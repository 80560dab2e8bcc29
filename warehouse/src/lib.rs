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
//! or on a cluster (the factory lives in `sf-executor`), each with the
//! driver's settings; builds and saves take a [`Source`]. Global
//! temporary views ([`global_temp`]) are one registry per process, read
//! as `global_temp.<name>` by every session.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::JoinType;
use datafusion::prelude::{SessionContext, ident};
use object_store::PutPayload;
use sf_manifest::{ManifestStore, ObjectManifestStore, Timestamp};
use sf_writer::config::JobConfig;
use sf_writer::job::{BuildOptions, Engine, Outcome, build_prepared, prepare_frame};
use sf_writer::route::encode::ValueSpec;

pub mod canary;
pub mod catalog;
mod error;
pub mod format;
pub mod global_temp;
mod job;
pub mod names;
pub mod session;
pub mod statement;
pub mod table;

pub use catalog::{WarehouseCatalog, sql};
pub use error::{Error, Result};
pub use format::TableMeta;
pub use global_temp::{GlobalTempViews, global_temp_views};
pub use job::run_job;
pub use names::{Catalogs, TableIdent};
pub use session::{
    Driver, DriverBuilder, EmbeddedSessions, PoolStats, PooledSession, Session, SessionFactory, SessionSettings, Source,
};
pub use sf_writer::config::SaveMode;
pub use table::ShardTable;

/// Marker object of a dropped table.
pub const DROPPED: &str = "_DROPPED";

/// Catalogs plus the engine that writes.
///
/// Clones share the tables opened so far: a table whose `_CURRENT` still
/// names the same manifest is served by the reader (open shards, caches)
/// that read it last, so repeated queries pay one `_CURRENT` read, not a
/// reader's start-up.
#[derive(Debug, Clone)]
pub struct Warehouse {
    catalogs: Catalogs,
    engine: Arc<dyn Engine>,
    reader_cache: Option<std::path::PathBuf>,
    open: Arc<std::sync::Mutex<std::collections::HashMap<TableIdent, ShardTable>>>,
}

impl Warehouse {
    /// A warehouse over `catalogs`, writing with `engine`.
    pub fn new(catalogs: Catalogs, engine: Arc<dyn Engine>) -> Self {
        Warehouse {
            catalogs,
            engine,
            reader_cache: None,
            open: Arc::default(),
        }
    }

    /// Where table readers cache downloaded shards (default: the reader's).
    pub fn with_reader_cache(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.reader_cache = Some(dir.into());
        self
    }

    /// This warehouse writing with `engine`; the clone shares the tables
    /// opened so far.
    pub fn with_engine(&self, engine: Arc<dyn Engine>) -> Self {
        Warehouse { engine, ..self.clone() }
    }

    /// The catalogs.
    pub fn catalogs(&self) -> &Catalogs {
        &self.catalogs
    }

    fn store(&self, id: &TableIdent) -> Result<ObjectManifestStore> {
        let (prefix, storage) = self.catalogs.locate(id)?;
        Ok(ObjectManifestStore::open(&prefix, &storage)?)
    }

    /// Whether `name` exists (published and not dropped).
    pub async fn exists(&self, name: &str) -> Result<bool> {
        let id = self.catalogs.ident(name)?;
        table_exists(&self.store(&id)?).await
    }

    /// Writes `df` as table `name`. `job` supplies the key column, routing
    /// and write settings; its input and output prefix are not used.
    ///
    /// The outcome is the build's: [`Outcome::Built`] for a published run,
    /// [`Outcome::Unchanged`] when the table exists and `mode` is
    /// `ignore`, [`Outcome::DryRun`] for a dry run.
    pub async fn save(&self, df: DataFrame, name: &str, mode: SaveMode, job: &JobConfig) -> Result<Outcome> {
        self.save_with(df, name, mode, job, &BuildOptions::default()).await
    }

    /// [`save`](Self::save) with progress and dry-run options.
    pub async fn save_with(
        &self,
        df: DataFrame,
        name: &str,
        mode: SaveMode,
        job: &JobConfig,
        options: &BuildOptions,
    ) -> Result<Outcome> {
        save_frame(
            &self.catalogs,
            self.engine.as_ref(),
            self.reader_cache.clone(),
            df,
            name,
            mode,
            job,
            options,
        )
        .await
    }

    /// Writes `df` as table `name` keyed by `key_col` over `num_dbs` SQLite
    /// shards, with the default settings otherwise.
    pub async fn save_as_table(
        &self,
        df: DataFrame,
        name: &str,
        mode: SaveMode,
        key_col: &str,
        num_dbs: u32,
    ) -> Result<Outcome> {
        self.save(df, name, mode, &table_job(key_col, num_dbs)).await
    }

    /// The table as a DataFusion table provider: the table read last
    /// when `_CURRENT` still names its manifest, else a new reader of it.
    pub async fn table(&self, name: &str) -> Result<ShardTable> {
        let id = self.catalogs.ident(name)?;
        let Some(current) = live_current(&self.store(&id)?).await? else {
            self.open_tables().remove(&id);
            return Err(Error::NoSuchTable { table: id.to_string() });
        };
        let cached = self.open_tables().get(&id).cloned();
        if let Some(t) = cached
            && t.source().manifest_ref == current.pointer.manifest_ref
        {
            return Ok(t);
        }
        let (prefix, storage) = self.catalogs.locate(&id)?;
        let table = ShardTable::open(id.clone(), &prefix, storage, self.reader_cache.clone()).await?;
        self.open_tables().insert(id, table.clone());
        Ok(table)
    }

    fn open_tables(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<TableIdent, ShardTable>> {
        // The map holds whole entries only: a panic elsewhere leaves it usable.
        sf_manifest::sync::lock(&self.open)
    }

    /// Tables of database `db` in `catalog` (default catalog when `None`),
    /// sorted.
    pub async fn list_tables(&self, catalog: Option<&str>, db: &str) -> Result<Vec<TableIdent>> {
        let catalog = catalog.unwrap_or(self.catalogs.default_name());
        names::check_part("database", db, db)?;
        let c = self.catalogs.get(catalog)?;
        let mut out = Vec::new();
        for table in folders(&format!("{}/{db}", c.warehouse), &c.storage).await? {
            let Ok(id) = TableIdent::parse(&format!("{catalog}.{db}.{table}"), catalog) else {
                continue;
            };
            if table_exists(&self.store(&id)?).await? {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Databases of a catalog that hold at least one folder.
    pub async fn list_databases(&self, catalog: Option<&str>) -> Result<Vec<String>> {
        let catalog = catalog.unwrap_or(self.catalogs.default_name());
        let c = self.catalogs.get(catalog)?;
        let mut out: BTreeSet<String> = BTreeSet::new();
        for db in folders(&c.warehouse, &c.storage).await? {
            if names::check_part("database", &db, &db).is_ok() && !db.eq_ignore_ascii_case(names::GLOBAL_TEMP_DB) {
                out.insert(db);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Removes `name` from the catalog; its data stays until cleanup.
    pub async fn drop_table(&self, name: &str, if_exists: bool) -> Result<bool> {
        let id = self.catalogs.ident(name)?;
        let store = self.store(&id)?;
        if !table_exists(&store).await? {
            return if if_exists {
                Ok(false)
            } else {
                Err(Error::NoSuchTable { table: id.to_string() })
            };
        }
        let marker = store.location().child(DROPPED);
        let body = serde_json::json!({"dropped_at": Timestamp::now().to_iso(), "table": id.to_string()});
        marker
            .store
            .put(&marker.path, PutPayload::from(body.to_string().into_bytes()))
            .await
            .map_err(|e| sf_manifest::Error::store("write", marker.url.clone(), e))?;
        Ok(true)
    }

    /// A session whose default catalog is the warehouse's default catalog
    /// and default schema `default`, so `db.table` and `table` resolve as
    /// table names do everywhere else; pass it to [`sql`](Self::sql).
    pub fn session_context(&self) -> SessionContext {
        let config = datafusion::prelude::SessionConfig::new()
            .with_default_catalog_and_schema(self.catalogs.default_name(), names::DEFAULT)
            .with_information_schema(true);
        SessionContext::new_with_config(config)
    }

    /// The session-level SQL entry: see [`sql`].
    pub async fn sql(&self, ctx: &SessionContext, text: &str) -> Result<DataFrame> {
        catalog::sql(self, ctx, text).await
    }
}

/// Writes `df` as table `name` of `catalogs` with `engine`: the body of
/// [`Warehouse::save_with`], and of `sf-write` jobs with `[output] table`.
#[allow(clippy::too_many_arguments)]
pub async fn save_frame(
    catalogs: &Catalogs,
    engine: &dyn Engine,
    reader_cache: Option<std::path::PathBuf>,
    df: DataFrame,
    name: &str,
    mode: SaveMode,
    job: &JobConfig,
    options: &BuildOptions,
) -> Result<Outcome> {
    let started = Instant::now();
    let id = catalogs.ident(name)?;
    let (prefix, storage) = catalogs.locate(&id)?;
    let store = ObjectManifestStore::open(&prefix, &storage)?;
    let exists = table_exists(&store).await?;
    match (mode, exists) {
        (SaveMode::Error, true) => {
            return Err(Error::config(
                "mode",
                format!("table {id} exists; use mode overwrite, append or ignore"),
            ));
        }
        (SaveMode::Ignore, true) => {
            return Ok(Outcome::Unchanged(format!(
                "table {id} exists and the mode is ignore: nothing was written"
            )));
        }
        _ => {}
    }
    let mut job = job.clone();
    job.output.prefix = prefix.clone();
    job.output.table = None;
    // The catalog's storage options first; the job's own override them.
    let mut merged: std::collections::BTreeMap<String, String> =
        storage.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    merged.extend(job.storage.clone());
    job.storage = merged;
    job.input = None;
    job.value = sf_writer::config::ValueConfig::default();
    job.validate_settings()?;

    let ctx = engine.session(&job).await?;
    // The frame may come from another session: plan it in ours, which
    // knows how to write shards.
    let mut df = DataFrame::new(ctx.state(), df.into_unoptimized_plan());
    let schema = df.schema().as_arrow().clone();
    if schema.field_with_name(&job.key_col).is_err() {
        return Err(Error::config(
            "key_col",
            format!(
                "{:?} is not a column of the rows saved as {id} (columns: {})",
                job.key_col,
                sf_writer::job::field_list(&schema)
            ),
        ));
    }
    format::check_storable(&schema, &job.key_col)?;
    if mode == SaveMode::Append && exists {
        let old = ShardTable::open(id.clone(), &prefix, storage.clone(), reader_cache).await?;
        let old_meta = old.meta().clone();
        if old_meta.key_col != job.key_col {
            return Err(Error::config(
                "key_col",
                format!(
                    "append to {id}: the table's key column is {:?}, the job's {:?}",
                    old_meta.key_col, job.key_col
                ),
            ));
        }
        if !same_columns(&old_meta.schema, &schema) {
            return Err(Error::config(
                "mode",
                format!(
                    "append to {id}: the rows' columns ({}) differ from the table's ({})",
                    describe_columns(&schema),
                    describe_columns(&old_meta.schema)
                ),
            ));
        }
        let old_df = ctx.read_table(Arc::new(old))?;
        // The old table's field nullability wins: a union needs one schema.
        df = appended(old_df, df, &job).await?;
    }
    let meta = TableMeta {
        name: id.to_string(),
        key_col: job.key_col.clone(),
        schema: Arc::new(schema.clone()),
    };
    let value_cols: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| *n != job.key_col)
        .collect();
    let mut options = options.clone();
    options.custom.insert("table".into(), meta.to_json()?);
    let mut prepared = prepare_frame(&job, ctx, df).await?;
    prepared.spec.value = ValueSpec::ArrowJson(value_cols);
    let outcome = build_prepared(&job, prepared, engine, &options, started).await?;
    if let Outcome::Built(_) = &outcome {
        // A table written after a drop is back in the catalog.
        let marker = store.location().child(DROPPED);
        match marker.store.delete(&marker.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(sf_manifest::Error::store("delete", marker.url.clone(), e).into()),
        }
    }
    Ok(outcome)
}

/// Same column names and types in the same order (nullability aside).
fn same_columns(a: &arrow::datatypes::Schema, b: &arrow::datatypes::Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type().equals_datatype(y.data_type()))
}

fn describe_columns(s: &arrow::datatypes::Schema) -> String {
    s.fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Names of the folders directly under `url`.
async fn folders(url: &str, storage: &sf_manifest::StorageOptions) -> Result<Vec<String>> {
    let root = sf_manifest::resolve(url, storage)?;
    let listed = root
        .store
        .list_with_delimiter(Some(&root.path))
        .await
        .map_err(|e| sf_manifest::Error::store("list", root.url.clone(), e))?;
    Ok(listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect())
}

/// Whether a table prefix holds a live table: published, not dropped.
pub async fn table_exists(store: &ObjectManifestStore) -> Result<bool> {
    Ok(live_current(store).await?.is_some())
}

/// `_CURRENT` of a live table; `None` when unpublished or dropped.
async fn live_current(store: &ObjectManifestStore) -> Result<Option<sf_manifest::CurrentState>> {
    let Some(current) = store.load_current().await? else {
        return Ok(None);
    };
    let marker = store.location().child(DROPPED);
    match marker.store.head(&marker.path).await {
        Ok(_) => Ok(None),
        Err(object_store::Error::NotFound { .. }) => Ok(Some(current)),
        Err(e) => Err(sf_manifest::Error::store("read", marker.url, e).into()),
    }
}

/// The default job for a table: `key_col`, hash routing over `num_dbs`
/// SQLite shards, default write settings.
pub fn table_job(key_col: &str, num_dbs: u32) -> JobConfig {
    JobConfig {
        key_col: key_col.to_string(),
        key_encoding: None,
        shard_id_col: "_shard_id".into(),
        input: None,
        value: Default::default(),
        routing: sf_writer::config::RoutingConfig {
            num_dbs: Some(num_dbs),
            ..Default::default()
        },
        output: sf_writer::config::OutputConfig {
            prefix: String::new(),
            table: None,
            mode: SaveMode::Error,
            backend: Default::default(),
            run_id: None,
            sqlite: Default::default(),
            slatedb: Default::default(),
        },
        write: Default::default(),
        storage: Default::default(),
        cluster: None,
        // Saving a table is an API call, not a scheduled build: an empty
        // frame makes an empty table, as data frame APIs do.
        validate: sf_writer::publish::gates::ValidateConfig {
            min_rows: sf_writer::publish::gates::Limit::Value(0),
            ..Default::default()
        },
        retention: None,
        sf: Default::default(),
    }
}

/// Old rows whose key is not among the new rows, then the new rows; with
/// `on_duplicate = "error"`, a key in both fails the save.
async fn appended(old: DataFrame, new: DataFrame, job: &JobConfig) -> Result<DataFrame> {
    let key = job.key_col.as_str();
    let new_keys = new.clone().select(vec![ident(key).alias("__sf_new_key")])?;
    if job.write.on_duplicate == sf_writer::build::backend::DuplicatePolicy::Error {
        let both = old
            .clone()
            .join(new_keys.clone(), JoinType::LeftSemi, &[key], &["__sf_new_key"], None)?
            .select(vec![ident(key)])?
            .limit(0, Some(1))?
            .collect()
            .await?;
        if let Some(b) = both.iter().find(|b| b.num_rows() > 0) {
            let shown = arrow::util::display::array_value_to_string(b.column(0), 0).unwrap_or_default();
            return Err(sf_writer::Error::DuplicateKey {
                db_id: sf_manifest::DbId(0),
                key: format!("{shown} (already in the table; on_duplicate = \"error\")"),
            }
            .into());
        }
    }
    let kept = old.join(new_keys, JoinType::LeftAnti, &[key], &["__sf_new_key"], None)?;
    Ok(kept.union(new)?)
}
