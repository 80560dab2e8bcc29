//! Saving rows as a table: the save modes, the build a save runs (the
//! table's schema recorded in its manifest, appended rows merged with the
//! old ones), and the default job of a table.

use std::sync::Arc;
use std::time::Instant;

use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::JoinType;
use datafusion::prelude::ident;
use serde::{Deserialize, Serialize};
use sf_manifest::ObjectManifestStore;
use sf_writer::config::JobConfig;
use sf_writer::job::{BuildOptions, Engine, Outcome, build_prepared, prepare_frame};
use sf_writer::route::encode::ValueSpec;

use crate::error::{Error, Result};
use crate::format::{self, TableMeta};
use crate::names::Catalogs;
use crate::table::ShardTable;
use crate::table_state::{DROPPED, table_exists};

/// What saving a table does when the table exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveMode {
    /// Fail, writing nothing.
    #[default]
    Error,
    /// Replace its rows with a new run (compare-and-swap on `_CURRENT`).
    Overwrite,
    /// A new run holding the old rows and the new ones; a key in both
    /// keeps the new row (`on_duplicate = "error"` fails instead).
    Append,
    /// Do nothing.
    Ignore,
}

impl std::str::FromStr for SaveMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "error" | "errorifexists" => Ok(SaveMode::Error),
            "overwrite" => Ok(SaveMode::Overwrite),
            "append" => Ok(SaveMode::Append),
            "ignore" => Ok(SaveMode::Ignore),
            _ => Err(Error::config(
                "mode",
                format!("{s:?}; expected error, overwrite, append or ignore"),
            )),
        }
    }
}

/// Writes `df` as table `name` of `catalogs` with `engine`: the body of
/// [`Warehouse::save_with`](crate::Warehouse::save_with), and of `sf-write` jobs with `[output] table`.
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
            backend: Default::default(),
            run_id: None,
            sqlite: Default::default(),
            slatedb: Default::default(),
        },
        write: Default::default(),
        storage: Default::default(),
        // Saving a table is an API call, not a scheduled build: an empty
        // frame makes an empty table, as data frame APIs do.
        validate: sf_writer::publish::gates::ValidateConfig {
            min_rows: sf_writer::publish::gates::Limit::Value(0),
            ..Default::default()
        },
        retention: None,
        vector: None,
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
