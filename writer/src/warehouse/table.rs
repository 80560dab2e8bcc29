//! A warehouse table as a DataFusion table: full scans read every shard in
//! parallel; `key = x` and `key IN (...)` become point lookups through the
//! reader, touching only the shards those keys route to.

use std::any::Any;
use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use futures::StreamExt;
use sf_manifest::{DbId, Key, KeyEncoding, StorageOptions, layout};
use sf_reader::{Reader, ReaderSettings};

use super::format::TableMeta;
use super::names::TableIdent;
use crate::error::{Error, Result};

/// One snapshot of a table, opened for reading.
#[derive(Clone)]
pub struct ShardTable {
    ident: TableIdent,
    reader: Reader,
    meta: Arc<TableMeta>,
}

impl fmt::Debug for ShardTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardTable")
            .field("table", &self.ident.to_string())
            .finish_non_exhaustive()
    }
}

impl ShardTable {
    /// Opens the table at `prefix` (its current snapshot).
    pub async fn open(
        ident: TableIdent,
        prefix: &str,
        storage: StorageOptions,
        cache_dir: Option<PathBuf>,
    ) -> Result<Self> {
        let settings = ReaderSettings {
            cache_dir,
            ..ReaderSettings::default()
        };
        let reader = Reader::builder(layout::join_url(prefix, layout::CURRENT))
            .with_settings(settings)
            .with_storage_options(storage)
            .build()
            .await
            .map_err(|e| Error::Input(format!("opening table {ident}: {e}")))?;
        let meta = TableMeta::from_manifest(&reader.manifest())?.ok_or_else(|| {
            Error::Data(format!(
                "{} holds a snapshot but not a table (its manifest records no table schema)",
                ident
            ))
        })?;
        Ok(ShardTable {
            ident,
            reader,
            meta: Arc::new(meta),
        })
    }

    /// What the manifest says about the table.
    pub fn meta(&self) -> &TableMeta {
        &self.meta
    }

    /// The reader serving it.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Keys of a pushed-down `key = x` / `key IN (...)` filter, when all
    /// of `filters` together are one such filter.
    fn lookup_keys(&self, filters: &[Expr]) -> Option<Vec<Key>> {
        let mut keys: Option<Vec<Key>> = None;
        for f in filters {
            let these = self.filter_keys(f)?;
            keys = Some(match keys {
                None => these,
                // Two key filters: the rows must satisfy both.
                Some(prev) => prev.into_iter().filter(|k| these.contains(k)).collect(),
            });
        }
        keys
    }

    fn filter_keys(&self, f: &Expr) -> Option<Vec<Key>> {
        let is_key = |e: &Expr| matches!(e, Expr::Column(c) if c.name == self.meta.key_col);
        let lit = |e: &Expr| match e {
            Expr::Literal(v, _) => scalar_key(v, self.reader.key_encoding()),
            _ => None,
        };
        match f {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => {
                if is_key(left) {
                    lit(right).map(|k| vec![k])
                } else if is_key(right) {
                    lit(left).map(|k| vec![k])
                } else {
                    None
                }
            }
            // The optimizer turns a short `IN` list into `k = a OR k = b`.
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Or,
                right,
            }) => {
                let mut keys = self.filter_keys(left)?;
                keys.extend(self.filter_keys(right)?);
                Some(keys)
            }
            Expr::InList(l) if !l.negated && is_key(&l.expr) => l.list.iter().map(lit).collect(),
            _ => None,
        }
    }
}

/// A literal as a key of `encoding`, when it is one.
fn scalar_key(v: &ScalarValue, encoding: KeyEncoding) -> Option<Key> {
    let int = |i: i128| match encoding {
        KeyEncoding::U64Be | KeyEncoding::U32Be => i64::try_from(i)
            .map(Key::Int)
            .ok()
            .or_else(|| u64::try_from(i).ok().map(Key::from_u64)),
        _ => None,
    };
    match v {
        ScalarValue::Int8(Some(i)) => int(i128::from(*i)),
        ScalarValue::Int16(Some(i)) => int(i128::from(*i)),
        ScalarValue::Int32(Some(i)) => int(i128::from(*i)),
        ScalarValue::Int64(Some(i)) => int(i128::from(*i)),
        ScalarValue::UInt8(Some(i)) => int(i128::from(*i)),
        ScalarValue::UInt16(Some(i)) => int(i128::from(*i)),
        ScalarValue::UInt32(Some(i)) => int(i128::from(*i)),
        ScalarValue::UInt64(Some(i)) => int(i128::from(*i)),
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => match encoding
        {
            KeyEncoding::Utf8 => Some(Key::Str(s.clone())),
            KeyEncoding::Raw => Some(Key::Bytes(s.as_bytes().to_vec())),
            _ => None,
        },
        ScalarValue::Binary(Some(b)) | ScalarValue::LargeBinary(Some(b)) | ScalarValue::BinaryView(Some(b)) => {
            match encoding {
                KeyEncoding::Raw => Some(Key::Bytes(b.clone())),
                _ => None,
            }
        }
        _ => None,
    }
}

#[async_trait]
impl TableProvider for ShardTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.meta.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.filter_keys(f).is_some() {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let projection = projection.cloned();
        match self.lookup_keys(filters) {
            Some(keys) => Ok(Arc::new(ShardLookupExec::new(self.clone(), keys, projection)?)),
            None => Ok(Arc::new(ShardScanExec::new(self.clone(), projection, limit)?)),
        }
    }
}

fn projected(schema: &SchemaRef, projection: &Option<Vec<usize>>) -> DfResult<SchemaRef> {
    Ok(match projection {
        Some(p) => Arc::new(schema.project(p)?),
        None => Arc::clone(schema),
    })
}

fn properties(schema: SchemaRef, partitions: usize) -> PlanProperties {
    PlanProperties::new(
        EquivalenceProperties::new(schema),
        Partitioning::UnknownPartitioning(partitions),
        EmissionType::Incremental,
        Boundedness::Bounded,
    )
}

fn df_err(e: impl fmt::Display) -> DataFusionError {
    DataFusionError::Execution(e.to_string())
}

/// Point lookups of a set of keys: one multi-get on the reader, which
/// touches only the shards the keys route to.
#[derive(Debug)]
pub struct ShardLookupExec {
    table: ShardTable,
    keys: Vec<Key>,
    shards: BTreeSet<DbId>,
    projection: Option<Vec<usize>>,
    properties: PlanProperties,
    metrics: ExecutionPlanMetricsSet,
}

impl ShardLookupExec {
    fn new(table: ShardTable, keys: Vec<Key>, projection: Option<Vec<usize>>) -> DfResult<Self> {
        let mut shards = BTreeSet::new();
        for k in &keys {
            if let Ok(sf_reader::RouteInfo { db_id: Some(d), .. }) = table.reader.route(k, None) {
                shards.insert(d);
            }
        }
        let schema = projected(&table.meta.schema, &projection)?;
        Ok(ShardLookupExec {
            properties: properties(schema, 1),
            table,
            keys,
            shards,
            projection,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The shards the lookup touches.
    pub fn shards(&self) -> &BTreeSet<DbId> {
        &self.shards
    }
}

impl DisplayAs for ShardLookupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ShardLookupExec: table={}, keys={}, shards=[{}]",
            self.table.ident,
            self.keys.len(),
            self.shards.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        )
    }
}

impl ExecutionPlan for ShardLookupExec {
    fn name(&self) -> &str {
        "ShardLookupExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &PlanProperties {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let table = self.table.clone();
        let keys = self.keys.clone();
        let projection = self.projection.clone();
        let touched = MetricBuilder::new(&self.metrics).counter("shards_touched", partition);
        touched.add(self.shards.len());
        let found = MetricBuilder::new(&self.metrics).counter("rows_found", partition);
        let schema = Arc::clone(self.properties.eq_properties.schema());
        let fut = async move {
            let values = table.reader.multi_get(&keys).await.map_err(df_err)?;
            let mut rows = Vec::new();
            for (k, v) in keys.iter().zip(values) {
                if let Some(v) = v {
                    rows.push((table.reader.encode_key(k).map_err(df_err)?, v.to_vec()));
                }
            }
            found.add(rows.len());
            table
                .meta
                .decode(table.reader.key_encoding(), &rows, projection.as_deref())
                .map_err(DataFusionError::from)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(fut),
        )))
    }
}

/// A full scan: one partition per non-empty shard, read in parallel.
#[derive(Debug)]
pub struct ShardScanExec {
    table: ShardTable,
    shards: Vec<DbId>,
    projection: Option<Vec<usize>>,
    limit: Option<usize>,
    properties: PlanProperties,
    metrics: ExecutionPlanMetricsSet,
}

/// Rows per batch a scan yields.
const SCAN_BATCH_ROWS: usize = 8192;

impl ShardScanExec {
    fn new(table: ShardTable, projection: Option<Vec<usize>>, limit: Option<usize>) -> DfResult<Self> {
        let shards: Vec<DbId> = table
            .reader
            .shards()
            .into_iter()
            .filter(|s| s.row_count > 0)
            .map(|s| s.db_id)
            .collect();
        let schema = projected(&table.meta.schema, &projection)?;
        Ok(ShardScanExec {
            properties: properties(schema, shards.len().max(1)),
            table,
            shards,
            projection,
            limit,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for ShardScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ShardScanExec: table={}, shards={}",
            self.table.ident,
            self.shards.len()
        )
    }
}

impl ExecutionPlan for ShardScanExec {
    fn name(&self) -> &str {
        "ShardScanExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &PlanProperties {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let schema = Arc::clone(self.properties.eq_properties.schema());
        let Some(db_id) = self.shards.get(partition).copied() else {
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::empty(),
            )));
        };
        let table = self.table.clone();
        let projection = self.projection.clone();
        let read = MetricBuilder::new(&self.metrics).counter("rows_read", partition);
        // Pages of the shard in key order; a short page is the last.
        let stream = futures::stream::try_unfold(Some(None::<Vec<u8>>), move |after| {
            let table = table.clone();
            let projection = projection.clone();
            let read = read.clone();
            async move {
                let Some(after) = after else { return Ok(None) };
                let page = table
                    .reader
                    .scan_shard(db_id, after.as_deref(), SCAN_BATCH_ROWS)
                    .await
                    .map_err(df_err)?;
                if page.is_empty() {
                    return Ok(None);
                }
                let next = (page.len() == SCAN_BATCH_ROWS).then(|| Some(page[page.len() - 1].0.to_vec()));
                read.add(page.len());
                let rows: Vec<(Vec<u8>, Vec<u8>)> = page.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
                let batch = table
                    .meta
                    .decode(table.reader.key_encoding(), &rows, projection.as_deref())
                    .map_err(DataFusionError::from)?;
                Ok(Some((batch, next)))
            }
        });
        let stream: futures::stream::BoxStream<'static, DfResult<RecordBatch>> = match self.limit {
            Some(n) => limit_rows(stream.boxed(), n),
            None => stream.boxed(),
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Stops a stream after `n` rows.
fn limit_rows(
    stream: futures::stream::BoxStream<'static, DfResult<RecordBatch>>,
    n: usize,
) -> futures::stream::BoxStream<'static, DfResult<RecordBatch>> {
    stream
        .scan(n, |left, batch| {
            let out = match batch {
                Ok(_) if *left == 0 => None,
                Ok(b) => {
                    let take = b.num_rows().min(*left);
                    *left -= take;
                    Some(Ok(b.slice(0, take)))
                }
                Err(e) => Some(Err(e)),
            };
            futures::future::ready(out)
        })
        .boxed()
}
