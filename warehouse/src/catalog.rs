//! Warehouse catalogs as DataFusion catalogs, and SQL over them.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::prelude::SessionContext;

use sf_writer::job::Outcome;

use crate::error::{Error, Result};
use crate::global_temp::{GLOBAL_TEMP_DB, global_temp_views};
use crate::save::{SaveMode, table_job};
use crate::statement::{Recognised, recognise};
use crate::warehouse::Warehouse;

/// Shards a table made by `CREATE TABLE ... AS SELECT` gets, unless the
/// catalog sets `sf.catalog.<name>.num_dbs`.
pub const CTAS_DEFAULT_NUM_DBS: u32 = 8;

/// Session-local temporary views by name.
type LocalViews = Arc<RwLock<BTreeMap<String, Arc<dyn TableProvider>>>>;

/// One warehouse catalog as a DataFusion catalog: databases are schemas.
///
/// Listing (`schema_names`, `table_names`, `information_schema`) answers
/// from a snapshot taken by [`WarehouseCatalog::refresh`] (DataFusion asks
/// synchronously): when [`register`] first adds the catalog to a session,
/// and after `CREATE TABLE AS` / `DROP TABLE` through [`sql`]. Tables that
/// others create meanwhile are listed in a new session; opening a table
/// always reads its current snapshot.
///
/// Each session gets its own instance, which also holds the session's
/// temporary views when it is the session's default catalog (see
/// [`with_session_views`](Self::with_session_views)): they live in the
/// default database and shadow a saved table of the same name, so a bare
/// name resolves to a session view first, then to a table. The database
/// `global_temp` is the process's global temporary views when
/// [`crate::global_temp::install`] put it there.
#[derive(Debug)]
pub struct WarehouseCatalog {
    warehouse: Warehouse,
    name: String,
    listing: RwLock<BTreeMap<String, Vec<String>>>,
    session_db: Option<String>,
    local: LocalViews,
    global_temp: RwLock<Option<Arc<dyn SchemaProvider>>>,
}

impl WarehouseCatalog {
    /// The catalog `name` of `warehouse`.
    pub fn new(warehouse: Warehouse, name: &str) -> Self {
        WarehouseCatalog {
            warehouse,
            name: name.to_string(),
            listing: RwLock::new(BTreeMap::new()),
            session_db: None,
            local: LocalViews::default(),
            global_temp: RwLock::new(None),
        }
    }

    /// This catalog as a session's default catalog whose default database
    /// is `db`: that database takes session temporary views (`CREATE
    /// TEMPORARY VIEW v`, `ctx.register_table("v", ..)`).
    pub fn with_session_views(mut self, db: &str) -> Self {
        self.session_db = Some(db.to_ascii_lowercase());
        self
    }

    /// Re-lists databases and tables.
    pub async fn refresh(&self) -> Result<()> {
        let mut listing = BTreeMap::new();
        for db in self.warehouse.list_databases(Some(&self.name)).await? {
            let tables = self.warehouse.list_tables(Some(&self.name), &db).await?;
            listing.insert(db, tables.into_iter().map(|t| t.table).collect());
        }
        *sf_manifest::sync::write(&self.listing) = listing;
        Ok(())
    }
}

impl CatalogProvider for WarehouseCatalog {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = sf_manifest::sync::read(&self.listing).keys().cloned().collect();
        if let Some(db) = &self.session_db
            && !read_views(&self.local).is_empty()
        {
            names.insert(db.clone());
        }
        if sf_manifest::sync::read(&self.global_temp).is_some() {
            names.insert(GLOBAL_TEMP_DB.to_string());
        }
        names.into_iter().collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name.eq_ignore_ascii_case(GLOBAL_TEMP_DB) {
            return sf_manifest::sync::read(&self.global_temp).clone();
        }
        crate::names::check_part("database", name, name).ok()?;
        let db = name.to_ascii_lowercase();
        let local = (self.session_db.as_deref() == Some(db.as_str())).then(|| Arc::clone(&self.local));
        Some(Arc::new(WarehouseSchema {
            warehouse: self.warehouse.clone(),
            catalog: self.name.clone(),
            tables: sf_manifest::sync::read(&self.listing)
                .get(&db)
                .cloned()
                .unwrap_or_default(),
            db,
            local,
        }))
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> DfResult<Option<Arc<dyn SchemaProvider>>> {
        // Databases of a warehouse are folders, made by saving a table in
        // them; the one database registered is the global views'.
        if !name.eq_ignore_ascii_case(GLOBAL_TEMP_DB) {
            return Err(DataFusionError::from(Error::config(
                "database",
                format!(
                    "{}.{name}: a warehouse database comes into being when a table is saved in it",
                    self.name
                ),
            )));
        }
        Ok(sf_manifest::sync::write(&self.global_temp).replace(schema))
    }
}

fn read_views(local: &LocalViews) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<dyn TableProvider>>> {
    // The map holds whole entries only: a panic elsewhere leaves it usable.
    sf_manifest::sync::read(local)
}

fn write_views(local: &LocalViews) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<dyn TableProvider>>> {
    sf_manifest::sync::write(local)
}

/// One database of a warehouse catalog; the session's default database
/// also holds its temporary views.
#[derive(Debug)]
struct WarehouseSchema {
    warehouse: Warehouse,
    catalog: String,
    db: String,
    tables: Vec<String>,
    local: Option<LocalViews>,
}

#[async_trait]
impl SchemaProvider for WarehouseSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.tables.iter().cloned().collect();
        if let Some(local) = &self.local {
            names.extend(read_views(local).keys().cloned());
        }
        names.into_iter().collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        // A session view shadows a saved table of the same name.
        if let Some(local) = &self.local
            && let Some(view) = read_views(local).get(&name.to_ascii_lowercase())
        {
            return Ok(Some(Arc::clone(view)));
        }
        let full = format!("{}.{}.{name}", self.catalog, self.db);
        match self.warehouse.table(&full).await {
            Ok(t) => Ok(Some(Arc::new(t))),
            // Unknown to the catalog: DataFusion reports "table not found".
            Err(crate::Error::NoSuchTable { .. }) => Ok(None),
            Err(e) => Err(DataFusionError::from(e)),
        }
    }

    fn register_table(&self, name: String, table: Arc<dyn TableProvider>) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(local) = &self.local else {
            return Err(DataFusionError::from(Error::config(
                "view name",
                format!(
                    "{}.{}.{name}: views are the session's, in its default database (name them without \
                     catalog and database); tables are saved with CREATE TABLE AS or save_as_table",
                    self.catalog, self.db
                ),
            )));
        };
        crate::names::check_part("view", &name, &name).map_err(DataFusionError::from)?;
        let mut views = write_views(local);
        let key = name.to_ascii_lowercase();
        if views.contains_key(&key) {
            return Err(DataFusionError::from(Error::config(
                "view name",
                format!("temporary view {name} exists in this session; use OR REPLACE, or drop it first"),
            )));
        }
        views.insert(key, table);
        Ok(None)
    }

    fn deregister_table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self
            .local
            .as_ref()
            .and_then(|local| write_views(local).remove(&name.to_ascii_lowercase())))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.local
            .as_ref()
            .is_some_and(|local| read_views(local).contains_key(&name.to_ascii_lowercase()))
            || self.tables.iter().any(|t| t.eq_ignore_ascii_case(name))
    }
}

/// Registers every catalog of `warehouse` in `ctx` (refreshing listings),
/// then the process's global temporary views as `global_temp` in the
/// session's default catalog. The default catalog keeps the session's
/// temporary views in its default database.
pub async fn register(warehouse: &Warehouse, ctx: &SessionContext) -> Result<()> {
    let defaults = ctx.state().config().options().catalog.clone();
    for c in warehouse.catalogs().iter() {
        if registered(ctx, &c.name).is_some() {
            continue;
        }
        let mut catalog = WarehouseCatalog::new(warehouse.clone(), &c.name);
        if c.name.eq_ignore_ascii_case(&defaults.default_catalog) {
            catalog = catalog.with_session_views(&defaults.default_schema);
        }
        catalog.refresh().await?;
        ctx.register_catalog(c.name.as_str(), Arc::new(catalog));
    }
    crate::global_temp::install(ctx)
}

/// The warehouse catalog `name` registered in `ctx`, if any.
fn registered(ctx: &SessionContext, name: &str) -> Option<Arc<dyn CatalogProvider>> {
    ctx.catalog(name)
        .filter(|c| c.as_any().downcast_ref::<WarehouseCatalog>().is_some())
}

/// Re-lists the catalog of table `name` (`catalog.db.table`) in `ctx`.
async fn relist(ctx: &SessionContext, name: &str) -> Result<()> {
    let catalog = name.split('.').next().unwrap_or_default();
    if let Some(c) = registered(ctx, catalog)
        && let Some(w) = c.as_any().downcast_ref::<WarehouseCatalog>()
    {
        w.refresh().await?;
    }
    Ok(())
}

impl Warehouse {
    /// The session-level SQL entry: see [`sql`].
    pub async fn sql(&self, ctx: &SessionContext, text: &str) -> Result<DataFrame> {
        sql(self, ctx, text).await
    }
}

/// Runs one SQL statement over the warehouse's catalogs:
///
/// - `SELECT ... FROM cat.db.t` reads tables (`WHERE key = x` and
///   `key IN (...)` become point lookups, visible in `EXPLAIN` as
///   `ShardLookupExec`);
/// - `CREATE TABLE cat.db.t AS SELECT ...` builds a snapshot: the first
///   selected column is the key, hash-routed over the catalog's `num_dbs`
///   (`sf.catalog.<name>.num_dbs`, default 8); `CREATE OR REPLACE` and
///   `IF NOT EXISTS` map to overwrite and ignore;
/// - `DROP TABLE [IF EXISTS] cat.db.t` drops a table;
/// - `CREATE [OR REPLACE] GLOBAL TEMPORARY VIEW [IF NOT EXISTS] v AS
///   SELECT ...` registers a view of the process (see
///   [`crate::global_temp`]), read as `global_temp.v`; `DROP VIEW [IF
///   EXISTS] global_temp.v` removes it;
/// - `CREATE [OR REPLACE] [TEMPORARY] VIEW v AS SELECT ...` makes a view
///   of this session only, which a bare `v` finds before a saved table
///   `v`; `DROP VIEW v` drops it;
/// - `SHOW TABLES IN db` (also `IN catalog.db`, `FROM`) lists a database,
///   `global_temp` included.
///
/// Other statements run as DataFusion runs them.
pub async fn sql(warehouse: &Warehouse, ctx: &SessionContext, text: &str) -> Result<DataFrame> {
    register(warehouse, ctx).await?;
    match recognise(text)? {
        Some(Recognised::CreateGlobalView { name, mode, query }) => {
            let plan = plan_sql(ctx, &query).await?;
            if !is_query(&plan) {
                return Err(Error::config(
                    "SQL",
                    format!(
                        "CREATE GLOBAL TEMPORARY VIEW {name} AS needs a query, got: {}",
                        query.trim()
                    ),
                ));
            }
            global_temp_views().create(&name, plan, Some(text.trim().to_string()), mode)?;
            return empty(ctx);
        }
        Some(Recognised::ShowTables { catalog, db }) => {
            let catalog = catalog.unwrap_or_else(|| ctx.state().config().options().catalog.default_catalog.clone());
            let listing = format!(
                "SELECT table_catalog, table_schema, table_name, table_type FROM information_schema.tables \
                 WHERE table_catalog = '{catalog}' AND table_schema = '{db}' ORDER BY table_name"
            );
            return Ok(ctx.sql(&listing).await?);
        }
        None => {}
    }
    let plan = plan_sql(ctx, text).await?;
    match &plan {
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(c))
            if let Some(name) = qualify(warehouse, ctx, &c.name.to_string()) =>
        {
            let mode = if c.or_replace {
                SaveMode::Overwrite
            } else if c.if_not_exists {
                SaveMode::Ignore
            } else {
                SaveMode::Error
            };
            let input = DataFrame::new(ctx.state(), c.input.as_ref().clone());
            let key = input
                .schema()
                .fields()
                .first()
                .map(|f| f.name().clone())
                .ok_or_else(|| {
                    Error::config(
                        "SQL",
                        "CREATE TABLE AS needs at least one column (the first is the key)",
                    )
                })?;
            let id = warehouse.catalogs().ident(&name)?;
            let num_dbs = warehouse
                .catalogs()
                .get(&id.catalog)?
                .num_dbs
                .unwrap_or(CTAS_DEFAULT_NUM_DBS);
            let outcome = warehouse.save(input, &name, mode, &table_job(&key, num_dbs)).await?;
            relist(ctx, &name).await?;
            let rows = match outcome {
                Outcome::Built(s) => s.rows,
                Outcome::Unchanged(_) | Outcome::DryRun(_) | Outcome::AlreadyPublished(_) => 0,
            };
            Ok(ctx.sql(&format!("SELECT {rows} AS rows_written")).await?)
        }
        LogicalPlan::Ddl(DdlStatement::DropTable(d))
            if let Some(name) = qualify(warehouse, ctx, &d.name.to_string()) =>
        {
            let dropped = warehouse.drop_table(&name, d.if_exists).await?;
            relist(ctx, &name).await?;
            Ok(ctx
                .sql(&format!("SELECT {} AS tables_dropped", u8::from(dropped)))
                .await?)
        }
        LogicalPlan::Ddl(DdlStatement::DropView(d)) if in_global_temp(ctx, &d.name) => {
            let dropped = global_temp_views().drop(d.name.table(), d.if_exists)?;
            Ok(ctx
                .sql(&format!("SELECT {} AS views_dropped", u8::from(dropped)))
                .await?)
        }
        LogicalPlan::Ddl(DdlStatement::CreateView(c)) if in_global_temp(ctx, &c.name) => Err(Error::config(
            "SQL",
            format!(
                "{}: views in {GLOBAL_TEMP_DB} are made with CREATE GLOBAL TEMPORARY VIEW {} AS ...",
                c.name,
                c.name.table()
            ),
        )),
        LogicalPlan::Ddl(DdlStatement::CreateView(c)) => {
            // Views made in a session are that session's alone, temporary
            // or not, and may hide a saved table of the same name: only a
            // view of that name stands in the way (DataFusion's own CREATE
            // VIEW refuses any table of the name).
            let name = c.name.clone();
            if c.or_replace {
                ctx.deregister_table(name.clone())?;
            }
            let view = datafusion::datasource::ViewTable::new(
                crate::global_temp::view_plan(c.input.as_ref().clone())?,
                c.definition.clone(),
            );
            ctx.register_table(name, Arc::new(view))?;
            empty(ctx)
        }
        LogicalPlan::Ddl(_) | LogicalPlan::Statement(_) => {
            // Statements run here, and what fails them (a view that does
            // not exist, a setting DataFusion does not know) is the
            // user's to fix; queries run when their rows are read.
            ctx.execute_logical_plan(plan).await.map_err(|e| match e {
                DataFusionError::External(_) => Error::from(e),
                other => Error::config("SQL", other.to_string()),
            })
        }
        _ => Ok(ctx.execute_logical_plan(plan).await?),
    }
}

/// Plans one statement; what does not parse or plan is the user's to fix.
pub(crate) async fn plan_sql(ctx: &SessionContext, text: &str) -> Result<LogicalPlan> {
    ctx.state()
        .create_logical_plan(text)
        .await
        .map_err(|e| match e.find_root() {
            // Planning errors come wrapped with their diagnostics.
            DataFusionError::Plan(_)
            | DataFusionError::SQL(..)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => Error::config("SQL", e.to_string()),
            _ => Error::from(e),
        })
}

/// Whether `plan` reads rows rather than changing anything.
pub(crate) fn is_query(plan: &LogicalPlan) -> bool {
    !matches!(
        plan,
        LogicalPlan::Ddl(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::DescribeTable(_)
    )
}

/// The result of a statement that returns no rows.
fn empty(ctx: &SessionContext) -> Result<DataFrame> {
    let plan = datafusion::logical_expr::LogicalPlanBuilder::empty(false).build()?;
    Ok(DataFrame::new(ctx.state(), plan))
}

/// Whether `name` is `global_temp.x` (or `<default catalog>.global_temp.x`).
fn in_global_temp(ctx: &SessionContext, name: &datafusion::sql::TableReference) -> bool {
    let default_catalog = ctx.state().config().options().catalog.default_catalog.clone();
    name.schema().is_some_and(|s| s.eq_ignore_ascii_case(GLOBAL_TEMP_DB))
        && name.catalog().is_none_or(|c| c.eq_ignore_ascii_case(&default_catalog))
}

/// `name` as `catalog.db.table` when it names a table of a warehouse
/// catalog: fully, or relative to the session's default catalog and
/// schema.
fn qualify(warehouse: &Warehouse, ctx: &SessionContext, name: &str) -> Option<String> {
    let state = ctx.state();
    let defaults = &state.config().options().catalog;
    let parts: Vec<&str> = name.split('.').collect();
    let (c, d, t) = match parts.as_slice() {
        [c, d, t] => (c.to_string(), d.to_string(), t.to_string()),
        [d, t] => (defaults.default_catalog.clone(), d.to_string(), t.to_string()),
        [t] => (
            defaults.default_catalog.clone(),
            defaults.default_schema.clone(),
            t.to_string(),
        ),
        _ => return None,
    };
    warehouse.catalogs().get(&c).ok()?;
    Some(format!("{c}.{d}.{t}"))
}
