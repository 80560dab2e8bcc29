//! Global temporary views: registered once, visible as
//! `global_temp.<name>` to every session of the same process until the
//! process ends or the view is dropped.
//!
//! There is one registry per process ([`global_temp_views`]). Every
//! session ShardForge makes (a [`Driver`](crate::Driver)'s pooled
//! sessions, embedded or on a cluster, and sessions that run warehouse
//! SQL through [`sql`](crate::sql)) sees it as the database
//! [`GLOBAL_TEMP_DB`] of its default catalog, installed by [`install`]:
//! `SELECT ... FROM global_temp.v`, `table("global_temp.v")`,
//! `SHOW TABLES IN global_temp` and `information_schema.tables`.
//!
//! A view is a logical plan, type-coerced when it is registered. Each
//! session that reads it inlines the plan into its own query and plans
//! it there, with its own settings; on a cluster the inlined plan travels
//! to the scheduler like any other query (warehouse tables as the
//! manifest they read). Tables a view reads are those the plan captured:
//! a view over a warehouse table keeps reading the snapshot it was
//! created over.
//!
//! Global views are separate from session-local temporary views (which
//! live in one session and shadow saved tables of the same bare name)
//! and from saved tables (no table lives in `global_temp`).

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::config::ConfigOptions;
use datafusion::datasource::ViewTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::LogicalPlan;
use datafusion::optimizer::analyzer::Analyzer;
use datafusion::optimizer::analyzer::type_coercion::TypeCoercion;
use datafusion::prelude::SessionContext;

use crate::error::{Error, Result};
pub use crate::names::GLOBAL_TEMP_DB;

/// What creating a view does when one of that name exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateMode {
    /// Fail with [`Error::ViewExists`] (`CREATE GLOBAL TEMPORARY VIEW`).
    ErrorIfExists,
    /// Replace it (`CREATE OR REPLACE GLOBAL TEMPORARY VIEW`).
    Replace,
    /// Keep it and do nothing (`CREATE GLOBAL TEMPORARY VIEW IF NOT EXISTS`).
    IgnoreIfExists,
}

/// The process's global temporary views.
#[derive(Debug, Default)]
pub struct GlobalTempViews {
    views: RwLock<BTreeMap<String, Arc<ViewTable>>>,
}

static VIEWS: LazyLock<GlobalTempViews> = LazyLock::new(GlobalTempViews::default);

/// The registry every session of this process shares.
pub fn global_temp_views() -> &'static GlobalTempViews {
    &VIEWS
}

/// A view's name from `name` or `global_temp.name`: letters, digits and
/// underscores, case-insensitive (kept lower case).
pub fn view_name(name: &str) -> Result<String> {
    let bare = match name.split_once('.') {
        Some((db, rest)) if db.eq_ignore_ascii_case(GLOBAL_TEMP_DB) => rest,
        Some(_) => {
            return Err(Error::config(
                "view name",
                format!("{name:?}: global temporary views are named `name` or `{GLOBAL_TEMP_DB}.name`"),
            ));
        }
        None => name,
    };
    crate::names::check_part("view", bare, name).map_err(|_| {
        Error::config(
            "view name",
            format!("{name:?}: a view name is letters, digits and underscores"),
        )
    })?;
    Ok(bare.to_ascii_lowercase())
}

/// `global_temp.<name>`, for messages.
fn qualified(name: &str) -> String {
    format!("{GLOBAL_TEMP_DB}.{name}")
}

/// `plan` as a view stores it: type-coerced, as DataFusion does for the
/// views it creates, so the view's schema is the one its readers get.
pub fn view_plan(plan: LogicalPlan) -> Result<LogicalPlan> {
    let analyzer = Analyzer::with_rules(vec![Arc::new(TypeCoercion::new())]);
    Ok(analyzer.execute_and_check(plan, &ConfigOptions::default(), |_, _| {})?)
}

impl GlobalTempViews {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<ViewTable>>> {
        // The map holds whole entries only: a panic elsewhere leaves it usable.
        sf_manifest::sync::read(&self.views)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<ViewTable>>> {
        sf_manifest::sync::write(&self.views)
    }

    /// Registers `plan` as view `name` (`name` or `global_temp.name`);
    /// `definition` is the SQL that made it, when there is one. Returns
    /// whether the view was written (false: it existed and `mode` is
    /// [`CreateMode::IgnoreIfExists`]).
    pub fn create(&self, name: &str, plan: LogicalPlan, definition: Option<String>, mode: CreateMode) -> Result<bool> {
        let name = view_name(name)?;
        let view = Arc::new(ViewTable::new(view_plan(plan)?, definition));
        let mut views = self.write();
        if views.contains_key(&name) {
            match mode {
                CreateMode::ErrorIfExists => return Err(Error::ViewExists { view: qualified(&name) }),
                CreateMode::IgnoreIfExists => return Ok(false),
                CreateMode::Replace => {}
            }
        }
        views.insert(name, view);
        Ok(true)
    }

    /// Removes view `name`; a missing view is [`Error::NoSuchView`] unless
    /// `if_exists`. Returns whether a view was removed. Sessions reading
    /// it already keep their plans.
    pub fn drop(&self, name: &str, if_exists: bool) -> Result<bool> {
        let name = view_name(name)?;
        match self.write().remove(&name) {
            Some(_) => Ok(true),
            None if if_exists => Ok(false),
            None => Err(Error::NoSuchView { view: qualified(&name) }),
        }
    }

    /// View `name`, when it exists.
    pub fn get(&self, name: &str) -> Option<Arc<ViewTable>> {
        let name = view_name(name).ok()?;
        self.read().get(&name).cloned()
    }

    /// The views' names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }
}

/// The registry as the database `global_temp` of a DataFusion catalog.
#[derive(Debug, Default)]
pub struct GlobalTempSchema;

#[async_trait]
impl SchemaProvider for GlobalTempSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        global_temp_views().names()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(global_temp_views().get(name).map(|v| v as Arc<dyn TableProvider>))
    }

    fn register_table(&self, name: String, _table: Arc<dyn TableProvider>) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Err(DataFusionError::from(Error::config(
            "view name",
            format!(
                "{}: {GLOBAL_TEMP_DB} holds global temporary views only; use CREATE GLOBAL TEMPORARY VIEW {name} AS ...",
                qualified(&name)
            ),
        )))
    }

    fn deregister_table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let view = global_temp_views().get(name);
        if view.is_some() {
            global_temp_views().drop(name, true)?;
        }
        Ok(view.map(|v| v as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        global_temp_views().get(name).is_some()
    }
}

/// Makes the registry visible in `ctx` as `global_temp`, a database of
/// its default catalog (call it after the session's catalogs are in
/// place: a catalog registered later under the default name replaces
/// it). Idempotent.
pub fn install(ctx: &SessionContext) -> Result<()> {
    let default = ctx.state().config().options().catalog.default_catalog.clone();
    let Some(catalog) = ctx.catalog(&default) else {
        return Err(Error::Internal(format!(
            "the session's default catalog {default:?} is not registered"
        )));
    };
    let present = catalog
        .schema(GLOBAL_TEMP_DB)
        .is_some_and(|s| s.as_any().downcast_ref::<GlobalTempSchema>().is_some());
    if !present {
        catalog.register_schema(GLOBAL_TEMP_DB, Arc::new(GlobalTempSchema))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sf_manifest::Classified;

    #[test]
    fn names_take_the_database_or_not_and_nothing_else() {
        assert_eq!(view_name("Daily").expect("bare"), "daily");
        assert_eq!(view_name("GLOBAL_TEMP.daily_2").expect("qualified"), "daily_2");
        for bad in ["", "db.v", "a.b.c", "global_temp.", "v-1", "global_temp.a.b"] {
            let e = view_name(bad).expect_err(bad);
            assert_eq!(e.kind(), sf_manifest::ErrorKind::Config, "{bad}");
        }
    }

    #[tokio::test]
    async fn create_replace_ignore_and_drop() {
        let ctx = SessionContext::new();
        let state = ctx.state();
        let plan = |n: i64| {
            let state = state.clone();
            async move {
                state
                    .create_logical_plan(&format!("SELECT {n} AS n"))
                    .await
                    .expect("plan")
            }
        };
        let views = GlobalTempViews::default();
        assert!(
            views
                .create("v", plan(1).await, None, CreateMode::ErrorIfExists)
                .expect("create")
        );
        let e = views
            .create("global_temp.V", plan(2).await, None, CreateMode::ErrorIfExists)
            .expect_err("exists");
        assert!(
            matches!(e, Error::ViewExists { ref view } if view == "global_temp.v"),
            "{e}"
        );
        assert!(e.to_string().contains("OR REPLACE"), "{e}");
        assert!(
            !views
                .create("v", plan(3).await, None, CreateMode::IgnoreIfExists)
                .expect("ignore")
        );
        assert!(
            views
                .create("v", plan(4).await, None, CreateMode::Replace)
                .expect("replace")
        );
        let shown = format!("{}", views.get("v").expect("view").logical_plan().display_indent());
        assert!(shown.contains('4'), "the replacement is the view: {shown}");
        assert_eq!(views.names(), vec!["v".to_string()]);
        assert!(views.drop("global_temp.v", false).expect("drop"));
        let e = views.drop("v", false).expect_err("gone");
        assert!(
            matches!(e, Error::NoSuchView { .. }) && e.to_string() == "view global_temp.v does not exist",
            "{e}"
        );
        assert!(!views.drop("v", true).expect("if exists"));
    }
}
