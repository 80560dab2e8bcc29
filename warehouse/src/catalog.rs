//! Warehouse catalogs as DataFusion catalogs, and SQL over them.

use std::any::Any;
use std::collections::BTreeMap;
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
use crate::{SaveMode, Warehouse, table_job};

/// Shards a table made by `CREATE TABLE ... AS SELECT` gets, unless the
/// catalog sets `sf.catalog.<name>.num_dbs`.
pub const CTAS_DEFAULT_NUM_DBS: u32 = 8;

/// One warehouse catalog as a DataFusion catalog: databases are schemas.
///
/// Listing (`schema_names`, `table_names`, `information_schema`) answers
/// from a snapshot taken by [`WarehouseCatalog::refresh`] (DataFusion asks
/// synchronously): when [`register`] first adds the catalog to a session,
/// and after `CREATE TABLE AS` / `DROP TABLE` through [`sql`]. Tables that
/// others create meanwhile are listed in a new session; opening a table
/// always reads its current snapshot.
#[derive(Debug)]
pub struct WarehouseCatalog {
    warehouse: Warehouse,
    name: String,
    listing: RwLock<BTreeMap<String, Vec<String>>>,
}

impl WarehouseCatalog {
    /// The catalog `name` of `warehouse`.
    pub fn new(warehouse: Warehouse, name: &str) -> Self {
        WarehouseCatalog {
            warehouse,
            name: name.to_string(),
            listing: RwLock::new(BTreeMap::new()),
        }
    }

    /// Re-lists databases and tables.
    pub async fn refresh(&self) -> Result<()> {
        let mut listing = BTreeMap::new();
        for db in self.warehouse.list_databases(Some(&self.name)).await? {
            let tables = self.warehouse.list_tables(Some(&self.name), &db).await?;
            listing.insert(db, tables.into_iter().map(|t| t.table).collect());
        }
        *self.listing.write().expect("listing lock") = listing;
        Ok(())
    }
}

impl CatalogProvider for WarehouseCatalog {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema_names(&self) -> Vec<String> {
        self.listing.read().expect("listing lock").keys().cloned().collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        crate::names::check_part("database", name, name).ok()?;
        Some(Arc::new(WarehouseSchema {
            warehouse: self.warehouse.clone(),
            catalog: self.name.clone(),
            db: name.to_ascii_lowercase(),
            tables: self
                .listing
                .read()
                .expect("listing lock")
                .get(&name.to_ascii_lowercase())
                .cloned()
                .unwrap_or_default(),
        }))
    }
}

/// One database of a warehouse catalog.
#[derive(Debug)]
struct WarehouseSchema {
    warehouse: Warehouse,
    catalog: String,
    db: String,
    tables: Vec<String>,
}

#[async_trait]
impl SchemaProvider for WarehouseSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        self.tables.clone()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let full = format!("{}.{}.{name}", self.catalog, self.db);
        match self.warehouse.table(&full).await {
            Ok(t) => Ok(Some(Arc::new(t))),
            // Unknown to the catalog: DataFusion reports "table not found".
            Err(crate::Error::NoSuchTable { .. }) => Ok(None),
            Err(e) => Err(DataFusionError::from(e)),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.iter().any(|t| t.eq_ignore_ascii_case(name))
    }
}

/// Registers every catalog of `warehouse` in `ctx` (refreshing listings).
pub async fn register(warehouse: &Warehouse, ctx: &SessionContext) -> Result<()> {
    for c in warehouse.catalogs().iter() {
        if registered(ctx, &c.name).is_some() {
            continue;
        }
        let catalog = WarehouseCatalog::new(warehouse.clone(), &c.name);
        catalog.refresh().await?;
        ctx.register_catalog(c.name.as_str(), Arc::new(catalog));
    }
    Ok(())
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

/// Runs one SQL statement over the warehouse's catalogs:
///
/// - `SELECT ... FROM cat.db.t` reads tables (`WHERE key = x` and
///   `key IN (...)` become point lookups, visible in `EXPLAIN` as
///   `ShardLookupExec`);
/// - `CREATE TABLE cat.db.t AS SELECT ...` builds a snapshot: the first
///   selected column is the key, hash-routed over the catalog's `num_dbs`
///   (`sf.catalog.<name>.num_dbs`, default 8); `CREATE OR REPLACE` and
///   `IF NOT EXISTS` map to overwrite and ignore;
/// - `DROP TABLE [IF EXISTS] cat.db.t` drops a table.
///
/// Other statements run as DataFusion runs them.
pub async fn sql(warehouse: &Warehouse, ctx: &SessionContext, text: &str) -> Result<DataFrame> {
    register(warehouse, ctx).await?;
    let plan = ctx.state().create_logical_plan(text).await.map_err(|e| {
        // A statement that does not parse or plan (an unknown table or
        // column included) is the user's to fix; DataFusion may wrap the
        // cause in context or diagnostics.
        let user = matches!(
            e.find_root(),
            DataFusionError::Plan(_)
                | DataFusionError::SQL(..)
                | DataFusionError::SchemaError(..)
                | DataFusionError::NotImplemented(_)
        );
        if user {
            Error::config("SQL", e.to_string())
        } else {
            Error::from(e)
        }
    })?;
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
        _ => Ok(ctx.execute_logical_plan(plan).await?),
    }
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
