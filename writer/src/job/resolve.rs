//! Planning a build against its input: the job checked against the
//! input's schema, routing resolved (from the data when asked), the routed
//! input built, and the routing verified on a sample with the row router.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Schema, UInt32Type};
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::Expr;
use datafusion::prelude::{SessionContext, ident};
use futures::StreamExt;
use sf_manifest::{CelType, KeyEncoding, ManifestStore, ObjectManifestStore, RoutingValue, RunId, ShardingSpec};
use sf_router::{CelRouting, Routed, Router, cel_column_type_fits, cel_tokens};

use crate::build::spec::ShardWriteSpec;
use crate::config::{CelMode, JobConfig, Strategy, VectorConfig};
use crate::error::{Error, Result};
pub use crate::input::field_list;
use crate::plan::node::ShardWriteNode;
use crate::plan::udf::{PARTITION_KEY_COL, PartitionKeyUdf, RoutingSpec, ShardIdUdf};
use crate::route::encode::{ValueSpec, binary_value_type_fits, default_key_encoding, key_type_fits};
use crate::route::vector::{VectorSpec, id_type_fits, vector_type_fits};

use super::engine::{Engine, capped_backend, memory_shares};
use super::vector_plan::VectorOnlyPlan;

/// Routing resolved against the input.
struct Resolved {
    df: DataFrame,
    key_encoding: KeyEncoding,
    value: ValueSpec,
    sharding: ShardingSpec,
    num_dbs: u32,
    extra_cols: Vec<String>,
    input_schema: Vec<(String, String)>,
    vector: Option<VectorSpec>,
}

/// A build planned against its input: everything checked, nothing written.
pub struct Prepared {
    /// The session the plan runs in.
    pub ctx: SessionContext,
    /// The snapshot prefix.
    pub store: ObjectManifestStore,
    /// The run id.
    pub run_id: RunId,
    /// The input with key, value columns, shard id and partition key.
    pub routed: DataFrame,
    /// What every shard task gets.
    pub spec: ShardWriteSpec,
    /// The row router of the snapshot.
    pub router: Router,
    /// `_CURRENT` as observed before writing (what the publish swaps).
    pub current: Option<sf_manifest::CurrentState>,
    /// The sharding written to the manifest.
    pub sharding: ShardingSpec,
    /// Names of CEL columns read from the input besides the key.
    pub extra_cols: Vec<String>,
    /// Input columns and types.
    pub input_schema: Vec<(String, String)>,
    /// A vector-only build's routing and artifact.
    pub vector_only: Option<VectorOnlyPlan>,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("run_id", &self.run_id)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Plans a build: reads the input's schema, checks the job against it,
/// resolves routing (counting or scanning the input when the shard count
/// or the routing values come from the data), and builds the routed input.
pub async fn prepare(job: &JobConfig, engine: &dyn Engine) -> Result<Prepared> {
    let (ctx, df) = read_input(job, engine).await?;
    prepare_frame(job, ctx, df).await
}

/// A session of `engine` and the job's `[input]` as a DataFrame of it.
#[tracing::instrument(name = "read_schema", skip_all)]
pub async fn read_input(job: &JobConfig, engine: &dyn Engine) -> Result<(SessionContext, DataFrame)> {
    let input = job
        .input
        .as_ref()
        .ok_or_else(|| Error::config("input", "the job has no [input] section saying what to read"))?;
    let ctx = engine.session(job).await?;
    crate::input::register_stores(&ctx, &crate::input::input_urls(input), &job.storage_options())?;
    let df = crate::input::load(&ctx, input).await?;
    Ok((ctx, df))
}

/// [`prepare`] for rows given as a DataFrame of `ctx` (the job's `[input]`
/// is not read).
#[tracing::instrument(name = "plan", skip_all)]
pub async fn prepare_frame(job: &JobConfig, ctx: SessionContext, df: DataFrame) -> Result<Prepared> {
    job.validate_settings()?;
    let vector_only = match job.vector.as_ref().filter(|v| v.vector_only()) {
        Some(v) => Some(super::vector_plan::plan(job, v, &df).await?),
        None => None,
    };
    let effective;
    let job = match &vector_only {
        Some(plan) => {
            effective = plan.effective_job(job);
            &effective
        }
        None => job,
    };
    let storage = job.storage_options();
    let store = ObjectManifestStore::open(&job.output.prefix, &storage)
        .map_err(|e| Error::config("output.prefix", e.to_string()))?;
    let run_id = match &job.output.run_id {
        Some(r) => RunId::new(r.clone()).map_err(|e| Error::config("output.run_id", e.to_string()))?,
        None => RunId::generate(),
    };
    let current = store.load_current().await?;
    // An input without rows keeps the key encoding of what it replaces.
    let previous_encoding = match &current {
        Some(c) if job.key_encoding.is_none() && untyped_key(job, &df) => {
            Some(store.load_manifest(&c.pointer.manifest_ref).await?.build.key_encoding)
        }
        _ => None,
    };
    let resolved = resolve(job, df, previous_encoding).await?;
    let router = Router::new(&resolved.sharding, resolved.num_dbs, resolved.key_encoding)
        .map_err(|e| Error::config("routing", e.to_string()))?;

    // A vector-only build placed by its vectors runs its vector kernel; a
    // `cel` one the key-value CEL routing over the row's columns.
    let kernel = vector_only.as_ref().and_then(|p| p.kernel.as_ref());
    let (routing, args) = match kernel {
        Some(kernel) => (
            RoutingSpec {
                sharding: resolved.sharding.clone(),
                num_dbs: resolved.num_dbs,
                key_encoding: resolved.key_encoding,
                key_col: kernel.column.clone(),
                extra_cols: vec![],
                vector: Some(kernel.routing.clone()),
            },
            vec![ident(&kernel.column)],
        ),
        None => (
            RoutingSpec {
                sharding: resolved.sharding.clone(),
                num_dbs: resolved.num_dbs,
                key_encoding: resolved.key_encoding,
                key_col: job.key_col.clone(),
                extra_cols: resolved.extra_cols.clone(),
                vector: None,
            },
            std::iter::once(ident(&job.key_col))
                .chain(resolved.extra_cols.iter().map(ident))
                .collect::<Vec<Expr>>(),
        ),
    };
    let mut keep: BTreeSet<&str> = resolved.value.columns().into_iter().collect();
    keep.insert(&job.key_col);
    if let Some(kernel) = kernel {
        keep.insert(&kernel.column);
    }
    keep.extend(resolved.extra_cols.iter().map(String::as_str));
    if let Some(v) = &resolved.vector {
        keep.extend(v.columns());
    }
    let mut select: Vec<Expr> = keep.iter().map(|c| ident(*c)).collect();
    select.push(ShardIdUdf::udf(routing).call(args).alias(&job.shard_id_col));
    let routed = resolved.df.select(select)?.with_column(
        PARTITION_KEY_COL,
        PartitionKeyUdf::udf(resolved.num_dbs).call(vec![ident(&job.shard_id_col)]),
    )?;
    let spec = ShardWriteSpec {
        run_id: run_id.clone(),
        prefix_url: store.prefix_url().to_string(),
        storage_options: job.storage.clone(),
        num_dbs: resolved.num_dbs,
        key_col: job.key_col.clone(),
        key_encoding: resolved.key_encoding,
        value: resolved.value,
        shard_id_col: job.shard_id_col.clone(),
        backend: capped_backend(job, resolved.num_dbs),
        on_duplicate: job.write.on_duplicate,
        sort_within_shard: job.write.sort_within_shard,
        row_memory_bytes: memory_shares(job.write.memory_limit_mib, resolved.num_dbs).row_bytes,
        limits: job.limits(),
        retry: job.retry(),
        work_dir: job.write.work_dir.clone(),
        upload_concurrency: job.write.upload_concurrency,
        build_id: sf_manifest::format::ids::unique_hex(),
        vector: resolved.vector,
    };
    Ok(Prepared {
        ctx,
        store,
        run_id,
        routed,
        spec,
        router,
        current,
        sharding: resolved.sharding,
        extra_cols: resolved.extra_cols,
        input_schema: resolved.input_schema,
        vector_only,
    })
}

impl Prepared {
    /// The write as a logical plan (a [`ShardWriteNode`] over the routed input).
    pub fn write_plan(&self) -> Result<datafusion::logical_expr::LogicalPlan> {
        Ok(ShardWriteNode::new(Arc::new(self.spec.clone()), self.routed.clone().into_unoptimized_plan())?.into_plan())
    }
}

/// The input as an error names it: its path, or `input.sql`.
fn input_name(job: &JobConfig) -> &str {
    match &job.input {
        Some(input) => input.path.as_deref().unwrap_or("input.sql"),
        None => "input",
    }
}

async fn resolve(job: &JobConfig, df: DataFrame, previous_encoding: Option<KeyEncoding>) -> Result<Resolved> {
    let df = typed_if_empty(job, df, previous_encoding).await?;
    let schema: Schema = df.schema().as_arrow().clone();
    let input_schema: Vec<(String, String)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect();
    let key_field = schema.field_with_name(&job.key_col).map_err(|_| {
        Error::config(
            "key_col",
            format!(
                "{:?} is not a column of the input (columns: {})",
                job.key_col,
                field_list(&schema)
            ),
        )
    })?;
    if schema.field_with_name(&job.shard_id_col).is_ok() {
        return Err(Error::config(
            "shard_id_col",
            format!(
                "{:?} clashes with an input column; choose another name",
                job.shard_id_col
            ),
        ));
    }
    if schema.field_with_name(PARTITION_KEY_COL).is_ok() {
        return Err(Error::config(
            "input",
            format!("the column name {PARTITION_KEY_COL:?} is reserved"),
        ));
    }
    let key_type = key_field.data_type();
    let key_encoding = match job.key_encoding {
        Some(e) => {
            if !key_type_fits(key_type, e) {
                return Err(Error::config(
                    "key_encoding",
                    format!("{e} cannot store key column {:?} of type {key_type}", job.key_col),
                ));
            }
            e
        }
        // The job is fine; the input holds keys of a type no encoding
        // stores: bad input data, naming the input.
        None => default_key_encoding(key_type).ok_or_else(|| {
            Error::Input(format!(
                "input {}: key column {:?} has type {key_type}; keys must be integers, text or binary",
                input_name(job),
                job.key_col
            ))
        })?,
    };
    let vector_only = job.vector.as_ref().is_some_and(VectorConfig::vector_only);
    let value = match (&job.value.binary_col, &job.value.json_cols) {
        // Vector-only shards store no values (their kv table is empty).
        _ if vector_only => ValueSpec::JsonCols(vec![]),
        (Some(c), _) => {
            let f = schema.field_with_name(c).map_err(|_| {
                Error::config(
                    "value.binary_col",
                    format!("{c:?} is not a column of the input (columns: {})", field_list(&schema)),
                )
            })?;
            if !binary_value_type_fits(f.data_type()) {
                return Err(Error::config(
                    "value.binary_col",
                    format!("{c:?} has type {}; it must be text or binary", f.data_type()),
                ));
            }
            ValueSpec::BinaryCol(c.clone())
        }
        (None, Some(cols)) => {
            for c in cols {
                if schema.field_with_name(c).is_err() {
                    return Err(Error::config(
                        "value.json_cols",
                        format!("{c:?} is not a column of the input (columns: {})", field_list(&schema)),
                    ));
                }
            }
            ValueSpec::JsonCols(cols.clone())
        }
        (None, None) => {
            let cols: Vec<String> = schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| *n != job.key_col)
                // A vector is stored in the shard's vector index, not
                // again as JSON in every value.
                .filter(|n| job.vector.as_ref().is_none_or(|v| *n != v.column))
                .collect();
            if cols.is_empty() {
                return Err(Error::config(
                    "value",
                    "the input has no column besides the key; name a value column (value.binary_col)",
                ));
            }
            ValueSpec::JsonCols(cols)
        }
    };
    let r = &job.routing;
    let (sharding, num_dbs, extra_cols) = match r.strategy {
        Strategy::Hash => {
            let n = match (r.num_dbs, r.max_keys_per_shard) {
                (Some(n), _) => n,
                (None, Some(per)) => {
                    let rows = df.clone().count().await? as u64;
                    u32::try_from(rows.div_ceil(per).max(1)).map_err(|_| {
                        Error::config(
                            "routing.max_keys_per_shard",
                            format!("{rows} rows need too many shards"),
                        )
                    })?
                }
                (None, None) => return Err(Error::config("routing", "needs num_dbs or max_keys_per_shard")),
            };
            (ShardingSpec::hash(), n, vec![])
        }
        Strategy::Cel => {
            let expr = r.expr.clone().unwrap_or_default();
            let mut extra = Vec::new();
            for (name, ty) in &r.columns {
                let field = match schema.field_with_name(name) {
                    Ok(f) => f,
                    Err(_) if name == sf_router::KEY_VARIABLE => key_field,
                    Err(_) => {
                        return Err(Error::config(
                            format!("routing.columns.{name}"),
                            format!(
                                "is not a column of the input (columns: {}); the name \"key\" stands for the key column",
                                field_list(&schema)
                            ),
                        ));
                    }
                };
                if !cel_column_type_fits(*ty, field.data_type()) {
                    return Err(Error::config(
                        format!("routing.columns.{name}"),
                        format!("is declared {ty} but the column has type {}", field.data_type()),
                    ));
                }
                if schema.field_with_name(name).is_ok() && *name != job.key_col {
                    extra.push(name.clone());
                }
            }
            let mode = r.mode.unwrap_or(if r.routing_values.is_some() || r.num_dbs.is_none() {
                CelMode::Categorical
            } else {
                CelMode::Direct
            });
            match mode {
                CelMode::Categorical => {
                    let values = match &r.routing_values {
                        Some(v) => v.clone(),
                        None => infer_tokens(&df, job, &expr, &r.columns, &extra)
                            .await?
                            .into_iter()
                            .collect(),
                    };
                    if values.is_empty() {
                        return Err(Error::Input(
                            "the input has no rows to infer routing values from".into(),
                        ));
                    }
                    sf_manifest::format::sharding::validate_routing_values(&values)
                        .map_err(|e| Error::Data(format!("routing values inferred from the data: {e}")))?;
                    let n = u32::try_from(values.len()).map_err(|_| Error::Data("too many routing values".into()))?;
                    if let Some(want) = r.num_dbs
                        && want != n
                    {
                        return Err(Error::config(
                            "routing.num_dbs",
                            format!("is {want} but the data has {n} distinct routing values"),
                        ));
                    }
                    (ShardingSpec::cel(expr, r.columns.clone(), Some(values)), n, extra)
                }
                CelMode::Direct => {
                    let n = match r.num_dbs {
                        Some(n) => n,
                        None => {
                            let tokens = infer_tokens(&df, job, &expr, &r.columns, &extra).await?;
                            let max = tokens
                                .iter()
                                .map(|t| match t {
                                    RoutingValue::Int(i) if *i >= 0 => Ok(*i),
                                    other => Err(Error::Routing(sf_router::Error::DbIdOutOfRange {
                                        value: other.to_string(),
                                        num_dbs: u32::MAX,
                                        row: None,
                                    })),
                                })
                                .collect::<Result<Vec<i64>>>()?
                                .into_iter()
                                .max()
                                .ok_or_else(|| Error::Input("the input has no rows to infer num_dbs from".into()))?;
                            u32::try_from(max + 1).map_err(|_| Error::Data(format!("db id {max} is too large")))?
                        }
                    };
                    (ShardingSpec::cel(expr, r.columns.clone(), None), n, extra)
                }
            }
        }
    };
    let vector = match &job.vector {
        Some(v) => Some(resolve_vector(job, v, &schema)?),
        None => None,
    };
    Ok(Resolved {
        df,
        key_encoding,
        value,
        sharding,
        num_dbs,
        extra_cols,
        input_schema,
        vector,
    })
}

/// `[vector]` checked against the input's columns.
fn resolve_vector(job: &JobConfig, v: &VectorConfig, schema: &Schema) -> Result<VectorSpec> {
    let column = |key: &str, name: &str| {
        schema.field_with_name(name).map_err(|_| {
            Error::config(
                key,
                format!(
                    "{name:?} is not a column of the input (columns: {})",
                    field_list(schema)
                ),
            )
        })
    };
    let f = column("vector.column", &v.column)?;
    if !vector_type_fits(f.data_type()) {
        return Err(Error::config(
            "vector.column",
            format!(
                "{:?} has type {}; it must be a list of floats (FixedSizeList or List of Float32/Float64) or text holding JSON arrays",
                v.column,
                f.data_type()
            ),
        ));
    }
    let id_column = v.id_column.clone().unwrap_or_else(|| job.key_col.clone());
    let f = column("vector.id_column", &id_column)?;
    if !id_type_fits(f.data_type()) {
        return Err(Error::config(
            "vector.id_column",
            format!(
                "{id_column:?} has type {}; ids must be integers, text or binary",
                f.data_type()
            ),
        ));
    }
    for p in &v.payload_columns {
        column("vector.payload_columns", p)?;
    }
    Ok(VectorSpec {
        vector_only: v.vector_only(),
        column: v.column.clone(),
        dim: v.dim,
        metric: v.metric.clone(),
        id_column,
        payload_columns: v.payload_columns.clone(),
        on_invalid: v.on_invalid,
    })
}

/// Whether the input's key column has no type (see [`typed_if_empty`]).
fn untyped_key(job: &JobConfig, df: &DataFrame) -> bool {
    df.schema()
        .as_arrow()
        .field_with_name(&job.key_col)
        .is_ok_and(|f| f.data_type() == &arrow::datatypes::DataType::Null)
}

/// An input whose columns have no type (a CSV with a header and no rows,
/// whose types cannot be inferred) has no rows: it is built as an empty
/// snapshot (`[validate] min_rows` then decides whether that may be
/// published), its key typed by `key_encoding`, else as the snapshot it
/// replaces (`previous`), else as text. A key column without a type that
/// does hold rows holds only nulls.
async fn typed_if_empty(job: &JobConfig, df: DataFrame, previous: Option<KeyEncoding>) -> Result<DataFrame> {
    use arrow::datatypes::DataType;
    if !untyped_key(job, &df) {
        return Ok(df);
    }
    let schema = df.schema().as_arrow().clone();
    let rows = df.clone().count().await?;
    if rows > 0 {
        return Err(Error::Data(format!(
            "key column {:?} is null in all {rows} rows of the input; keys must not be null",
            job.key_col
        )));
    }
    tracing::warn!(
        "the input has no rows: building an empty snapshot ([validate] min_rows decides whether it is published)"
    );
    let key_type = match job.key_encoding.or(previous) {
        Some(KeyEncoding::U64Be | KeyEncoding::U32Be) => DataType::Int64,
        Some(KeyEncoding::Raw) => DataType::Binary,
        Some(KeyEncoding::Utf8) | None => DataType::Utf8,
    };
    let columns: Vec<Expr> = schema
        .fields()
        .iter()
        .map(|f| {
            let c = ident(f.name());
            match f.data_type() {
                DataType::Null if *f.name() == job.key_col => {
                    datafusion::prelude::cast(c, key_type.clone()).alias(f.name())
                }
                DataType::Null => datafusion::prelude::cast(c, DataType::Utf8).alias(f.name()),
                _ => c,
            }
        })
        .collect();
    Ok(df.select(columns)?)
}

/// Most distinct tokens a categorical expression may produce.
pub const MAX_INFERRED_TOKENS: usize = 100_000;

async fn infer_tokens(
    df: &DataFrame,
    job: &JobConfig,
    expr: &str,
    columns: &BTreeMap<String, CelType>,
    extra: &[String],
) -> Result<BTreeSet<RoutingValue>> {
    let cel = CelRouting::compile_tokens(expr, columns).map_err(|e| Error::config("routing.expr", e.to_string()))?;
    let cols: Vec<Expr> = std::iter::once(ident(&job.key_col))
        .chain(extra.iter().map(ident))
        .collect();
    let mut stream = df.clone().select(cols)?.execute_stream().await?;
    let mut tokens = BTreeSet::new();
    while let Some(batch) = stream.next().await {
        for t in cel_tokens(&cel, &batch?, &job.key_col)? {
            tokens.insert(t);
        }
        if tokens.len() > MAX_INFERRED_TOKENS {
            return Err(Error::Data(format!(
                "the routing expression yields more than {MAX_INFERRED_TOKENS} distinct values; categorical routing makes one shard per value"
            )));
        }
    }
    Ok(tokens)
}

/// Recomputes the shard id of a sample of rows with the row router (the
/// reader's code path) and fails on any difference from the kernel's.
#[tracing::instrument(name = "verify_routing", skip_all, fields(sample = job.routing.verify_sample_size))]
pub(super) async fn verify_sample(
    routed: &DataFrame,
    job: &JobConfig,
    router: &Router,
    extra: &[String],
) -> Result<()> {
    let sample = routed
        .clone()
        .limit(0, Some(job.routing.verify_sample_size))?
        .collect()
        .await?;
    for batch in &sample {
        check_batch_routing(batch, job, router, extra)?;
    }
    Ok(())
}

pub(super) fn check_batch_routing(
    batch: &RecordBatch,
    job: &JobConfig,
    router: &Router,
    extra: &[String],
) -> Result<()> {
    if sf_manifest::publish::failpoint::sabotaged("skip-routing-check") {
        return Ok(());
    }
    let ids = batch
        .column_by_name(&job.shard_id_col)
        .ok_or_else(|| Error::Internal("shard id column missing from the sample".into()))?
        .as_primitive::<UInt32Type>()
        .clone();
    let key_col = batch
        .column_by_name(&job.key_col)
        .ok_or_else(|| Error::Internal("key column missing from the sample".into()))?;
    let cel_types = router.cel().map(|c| c.columns().clone()).unwrap_or_default();
    for row in 0..batch.num_rows() {
        let routed = if router.needs_context() {
            let mut ctx = BTreeMap::new();
            for (name, ty) in &cel_types {
                let array = if extra.contains(name) {
                    batch.column_by_name(name).cloned()
                } else {
                    Some(Arc::clone(key_col))
                };
                let array = array.ok_or_else(|| Error::Internal(format!("column {name} missing from the sample")))?;
                ctx.insert(
                    name.clone(),
                    sf_router::context_value_at(array.as_ref(), row, *ty, name)?,
                );
            }
            router.route_context(&ctx)?
        } else {
            router.route_key(&sf_router::key_at(key_col.as_ref(), row, &job.key_col)?)?
        };
        let want = ids.value(row);
        if routed != Routed::Db(want) {
            return Err(Error::Internal(format!(
                "routing check failed at sample row {row}: the kernel routed to shard {want}, the row router to {routed:?}; nothing was written"
            )));
        }
    }
    Ok(())
}
