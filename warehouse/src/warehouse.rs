//! [`Warehouse`]: catalogs plus the engine that writes, and what a user
//! does with tables: save, read, list, drop, SQL.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::dataframe::DataFrame;
use datafusion::prelude::SessionContext;
use object_store::PutPayload;
use sf_manifest::{ObjectManifestStore, Timestamp};
use sf_writer::config::JobConfig;
use sf_writer::job::{BuildOptions, Engine, Outcome};

use crate::error::{Error, Result};
use crate::names::{self, Catalogs, TableIdent};
use crate::save::{SaveMode, save_frame, table_job};
use crate::table::ShardTable;
use crate::table_state::{DROPPED, folders, live_current, table_exists};

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
}
