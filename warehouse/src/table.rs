//! A warehouse table as a DataFusion table: full scans read every shard in
//! parallel; `key = x` and `key IN (...)` become point lookups through the
//! reader, touching only the shards those keys route to.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
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
use serde::{Deserialize, Serialize};
use sf_manifest::{DbId, Key, KeyEncoding, StorageOptions, format::layout};
use sf_reader::{Pin, Reader, ReaderSettings};
use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::format::TableMeta;
use crate::names::TableIdent;

/// Which snapshot of which table a [`ShardTable`] reads: plain data, so a
/// plan that reads a table can travel to other processes (a Ballista
/// scheduler and executors), which open their own reader of the same
/// manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSource {
    /// `catalog.db.table`.
    pub table: String,
    /// The table's snapshot prefix URL.
    pub prefix: String,
    /// Storage options of the prefix.
    pub storage: BTreeMap<String, String>,
    /// The manifest read, as `_CURRENT` named it: every reader of this
    /// source reads this manifest, whatever `_CURRENT` says later.
    pub manifest_ref: String,
    /// The snapshot's key encoding.
    pub key_encoding: KeyEncoding,
    /// The table's [`TableMeta`] as JSON.
    pub meta: serde_json::Value,
    /// Where this process caches downloaded shards (not shipped).
    #[serde(skip)]
    pub cache_dir: Option<PathBuf>,
}

/// One snapshot of a table, as a DataFusion table.
#[derive(Clone)]
pub struct ShardTable {
    ident: TableIdent,
    source: Arc<TableSource>,
    meta: Arc<TableMeta>,
    reader: Arc<OnceCell<Reader>>,
}

impl fmt::Debug for ShardTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardTable")
            .field("table", &self.ident.to_string())
            .field("manifest_ref", &self.source.manifest_ref)
            .finish_non_exhaustive()
    }
}

fn reader_settings(cache_dir: Option<PathBuf>, pin: Pin) -> ReaderSettings {
    ReaderSettings {
        cache_dir,
        pin,
        ..ReaderSettings::default()
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
        let reader = Reader::builder(layout::join_url(prefix, layout::CURRENT))
            .with_settings(reader_settings(cache_dir.clone(), Pin::Current))
            .with_storage_options(storage.clone())
            .build()
            .await
            .map_err(|e| Error::read(&ident, e))?;
        let meta = TableMeta::from_manifest(&reader.manifest())?.ok_or_else(|| {
            Error::table(
                ident.to_string(),
                "the prefix holds a snapshot but not a table (its manifest records no table schema)",
            )
        })?;
        let source = TableSource {
            table: ident.to_string(),
            prefix: prefix.to_string(),
            storage: storage.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            manifest_ref: reader.info().manifest_ref,
            key_encoding: reader.key_encoding(),
            meta: meta.to_json()?,
            cache_dir,
        };
        Ok(ShardTable {
            ident,
            source: Arc::new(source),
            meta: Arc::new(meta),
            reader: Arc::new(OnceCell::new_with(Some(reader))),
        })
    }

    /// The table `source` describes; its reader opens on first use.
    pub fn from_source(source: TableSource) -> Result<Self> {
        let ident = TableIdent::parse(&source.table, crate::names::DEFAULT)?;
        let meta = TableMeta::from_json(&source.meta, &format!("table {ident}"))?;
        Ok(ShardTable {
            ident,
            source: Arc::new(source),
            meta: Arc::new(meta),
            reader: Arc::new(OnceCell::new()),
        })
    }

    /// Which snapshot this is, as plain data.
    pub fn source(&self) -> &TableSource {
        &self.source
    }

    /// What the manifest says about the table.
    pub fn meta(&self) -> &TableMeta {
        &self.meta
    }

    /// The reader of this snapshot (opened, pinned to its manifest, on
    /// first use).
    pub async fn reader(&self) -> Result<&Reader> {
        self.reader
            .get_or_try_init(|| async {
                let storage: StorageOptions = self
                    .source
                    .storage
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                Reader::builder(layout::join_url(&self.source.prefix, layout::CURRENT))
                    .with_settings(reader_settings(
                        self.source.cache_dir.clone(),
                        Pin::Ref(self.source.manifest_ref.clone()),
                    ))
                    .with_storage_options(storage)
                    .build()
                    .await
                    .map_err(|e| Error::read(&self.ident, e))
            })
            .await
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
            Expr::Literal(v, _) => scalar_key(v, self.source.key_encoding),
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
        let reader = self.reader().await.map_err(DataFusionError::from)?;
        match self.lookup_keys(filters) {
            Some(keys) => {
                let mut shards = BTreeSet::new();
                for k in &keys {
                    if let Ok(sf_reader::RouteInfo { db_id: Some(d), .. }) = reader.route(k, None) {
                        shards.insert(d);
                    }
                }
                Ok(Arc::new(ShardLookupExec::new(self.clone(), keys, shards, projection)?))
            }
            None => {
                let shards = reader
                    .shards()
                    .into_iter()
                    .filter(|s| s.row_count > 0)
                    .map(|s| s.db_id)
                    .collect();
                Ok(Arc::new(ShardScanExec::new(self.clone(), shards, projection, limit)?))
            }
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

/// `with_new_children` of a node without inputs: itself when given none.
pub fn leaf(node: Arc<dyn ExecutionPlan>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
    if children.is_empty() {
        Ok(node)
    } else {
        Err(DataFusionError::Internal(format!(
            "{} takes no inputs, got {}",
            node.name(),
            children.len()
        )))
    }
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

/// A [`ShardLookupExec`] as plain data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LookupParts {
    /// The table snapshot.
    pub source: TableSource,
    /// The keys, in the snapshot's key encoding.
    pub keys: Vec<Vec<u8>>,
    /// The shards they route to.
    pub shards: Vec<u32>,
    /// Output columns.
    pub projection: Option<Vec<usize>>,
}

/// A [`ShardScanExec`] as plain data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanParts {
    /// The table snapshot.
    pub source: TableSource,
    /// The shards read, one partition each.
    pub shards: Vec<u32>,
    /// Output columns.
    pub projection: Option<Vec<usize>>,
    /// Rows wanted per partition, at most.
    pub limit: Option<usize>,
}

impl ShardLookupExec {
    fn new(
        table: ShardTable,
        keys: Vec<Key>,
        shards: BTreeSet<DbId>,
        projection: Option<Vec<usize>>,
    ) -> DfResult<Self> {
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

    /// This node as plain data.
    pub fn parts(&self) -> Result<LookupParts> {
        Ok(LookupParts {
            source: self.table.source().clone(),
            keys: self
                .keys
                .iter()
                .map(|k| sf_router::encode_key(k, self.table.source.key_encoding))
                .collect::<std::result::Result<_, _>>()?,
            shards: self.shards.iter().map(|d| d.0).collect(),
            projection: self.projection.clone(),
        })
    }

    /// The node `parts` describes.
    pub fn from_parts(parts: LookupParts) -> Result<Self> {
        let encoding = parts.source.key_encoding;
        let keys = parts
            .keys
            .iter()
            .map(|k| sf_router::decode_key(k, encoding))
            .collect::<std::result::Result<_, _>>()?;
        let table = ShardTable::from_source(parts.source)?;
        let shards = parts.shards.into_iter().map(DbId).collect();
        Ok(Self::new(table, keys, shards, parts.projection)?)
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

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        leaf(self, children)
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
            let reader = table.reader().await.map_err(DataFusionError::from)?;
            let values = reader
                .multi_get(&keys)
                .await
                .map_err(|e| Error::read(&table.ident, e))?;
            let mut rows = Vec::new();
            for (k, v) in keys.iter().zip(values) {
                if let Some(v) = v {
                    rows.push((
                        reader.encode_key(k).map_err(|e| Error::read(&table.ident, e))?,
                        v.to_vec(),
                    ));
                }
            }
            found.add(rows.len());
            table
                .meta
                .decode(table.source.key_encoding, &rows, projection.as_deref())
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
    fn new(
        table: ShardTable,
        shards: Vec<DbId>,
        projection: Option<Vec<usize>>,
        limit: Option<usize>,
    ) -> DfResult<Self> {
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

    /// This node as plain data.
    pub fn parts(&self) -> ScanParts {
        ScanParts {
            source: self.table.source().clone(),
            shards: self.shards.iter().map(|d| d.0).collect(),
            projection: self.projection.clone(),
            limit: self.limit,
        }
    }

    /// The node `parts` describes.
    pub fn from_parts(parts: ScanParts) -> Result<Self> {
        let table = ShardTable::from_source(parts.source)?;
        let shards = parts.shards.into_iter().map(DbId).collect();
        Ok(Self::new(table, shards, parts.projection, parts.limit)?)
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

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        leaf(self, children)
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
                let reader = table.reader().await.map_err(DataFusionError::from)?;
                let page = reader
                    .scan_shard(db_id, after.as_deref(), SCAN_BATCH_ROWS)
                    .await
                    .map_err(|e| Error::read(&table.ident, e))?;
                if page.is_empty() {
                    return Ok(None);
                }
                let next = (page.len() == SCAN_BATCH_ROWS).then(|| Some(page[page.len() - 1].0.to_vec()));
                read.add(page.len());
                let rows: Vec<(Vec<u8>, Vec<u8>)> = page.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
                let batch = table
                    .meta
                    .decode(table.source.key_encoding, &rows, projection.as_deref())
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
