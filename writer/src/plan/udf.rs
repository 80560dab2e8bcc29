//! Routing as DataFusion functions, and the one-shard-per-partition trick.
//!
//! `sf_shard_id(key, [cel columns...])` runs the router's Arrow kernel and
//! yields each row's db id. DataFusion (and Ballista's shuffle, which uses
//! the same partitioner) sends a row to partition `hash(v) % n` for a
//! column `v`; hashing the db id itself would scatter shards over
//! partitions. So `sf_partition_key(db_id)` maps each db id `i` to a value
//! `k_i` chosen such that `hash(k_i) % num_dbs == i`, found by running the
//! engine's own hash function over candidates. Repartitioning on that
//! column puts exactly shard `i`'s rows in partition `i`.

use std::any::Any;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, UInt32Type};
use datafusion::common::hash_utils::create_hashes;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::physical_plan::repartition::REPARTITION_RANDOM_STATE;
use serde::{Deserialize, Serialize};
use sf_manifest::{KeyEncoding, ShardingSpec};
use sf_router::Router;

use crate::error::{Error, Result};
use crate::plan::vector_route::VectorRouting;

/// Name of the routing function.
pub const SHARD_ID_UDF: &str = "sf_shard_id";
/// Name of the partition-key function.
pub const PARTITION_KEY_UDF: &str = "sf_partition_key";
/// Internal column the plan repartitions on.
pub const PARTITION_KEY_COL: &str = "__sf_partition_key";

/// Everything `sf_shard_id` needs: plain data, shipped to executors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingSpec {
    /// The snapshot's sharding.
    pub sharding: ShardingSpec,
    /// Number of shards.
    pub num_dbs: u32,
    /// The snapshot's key encoding.
    pub key_encoding: KeyEncoding,
    /// The key column's name; the function's first argument.
    pub key_col: String,
    /// Names of the other arguments (CEL columns read from the input).
    pub extra_cols: Vec<String>,
    /// A vector-only build: shards come from each row's vector (or
    /// explicit shard id), the function's one argument, named `key_col`.
    #[serde(default)]
    pub vector: Option<VectorRouting>,
}

impl RoutingSpec {
    /// The router this spec describes.
    pub fn router(&self) -> Result<Router> {
        Ok(Router::new(&self.sharding, self.num_dbs, self.key_encoding)?)
    }
}

/// `sf_shard_id(key, cel columns...) -> UInt32`.
#[derive(Debug)]
pub struct ShardIdUdf {
    spec: RoutingSpec,
    signature: Signature,
    router: OnceLock<std::result::Result<Arc<Router>, String>>,
}

impl ShardIdUdf {
    /// A function routing by `spec`.
    pub fn new(spec: RoutingSpec) -> Self {
        ShardIdUdf {
            signature: Signature::any(1 + spec.extra_cols.len(), Volatility::Immutable),
            spec,
            router: OnceLock::new(),
        }
    }

    /// The spec (for plan codecs).
    pub fn spec(&self) -> &RoutingSpec {
        &self.spec
    }

    /// As a DataFusion scalar function.
    pub fn udf(spec: RoutingSpec) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self::new(spec))
    }

    fn router(&self) -> DfResult<Arc<Router>> {
        // Compiled once per function instance, i.e. once per task.
        self.router
            .get_or_init(|| self.spec.router().map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(|e| DataFusionError::Execution(format!("{SHARD_ID_UDF}: {e}")))
    }
}

impl PartialEq for ShardIdUdf {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl Eq for ShardIdUdf {}

impl Hash for ShardIdUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        serde_json::to_string(&self.spec).unwrap_or_default().hash(state);
    }
}

impl ScalarUDFImpl for ShardIdUdf {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        SHARD_ID_UDF
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::UInt32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        if let Some(vector) = &self.spec.vector {
            let array = args.args[0].to_array(n)?;
            let ids = vector
                .assign(array.as_ref(), self.spec.num_dbs, &self.spec.key_col)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            return Ok(ColumnarValue::Array(Arc::new(ids)));
        }
        let router = self.router()?;
        let arrays: Vec<ArrayRef> = args.args.iter().map(|a| a.to_array(n)).collect::<DfResult<_>>()?;
        let names = std::iter::once(&self.spec.key_col).chain(&self.spec.extra_cols);
        let fields: Vec<Field> = names
            .zip(&arrays)
            .map(|(name, a)| Field::new(name, a.data_type().clone(), true))
            .collect();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
        let ids = router
            .route_batch(&batch, &self.spec.key_col)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(ColumnarValue::Array(Arc::new(ids)))
    }
}

static PARTITION_KEYS: LazyLock<Mutex<HashMap<u32, Arc<[u64]>>>> = LazyLock::new(Default::default);

/// For `n` partitions, `keys[i]` such that hash repartitioning on a UInt64
/// column holding `keys[i]` sends the row to partition `i`.
pub fn partition_keys(n: u32) -> Result<Arc<[u64]>> {
    if n == 0 {
        return Err(Error::Internal("partition keys for zero partitions".into()));
    }
    if let Some(k) = sf_manifest::sync::lock(&PARTITION_KEYS).get(&n) {
        return Ok(Arc::clone(k));
    }
    let mut keys: Vec<Option<u64>> = vec![None; n as usize];
    let mut missing = n as usize;
    let chunk = 8192u64;
    // Each candidate lands in a uniformly random partition, so all are hit
    // after about n·ln(n) candidates; the bound is far above that.
    let limit = (u64::from(n) * 64).max(1 << 20);
    let mut start = 0u64;
    let mut hashes = vec![0u64; chunk as usize];
    while missing > 0 {
        if start >= limit {
            return Err(Error::Internal(format!(
                "found no partition key for {missing} of {n} partitions in {limit} candidates"
            )));
        }
        let candidates: UInt64Array = (start..start + chunk).collect();
        let arrays: [ArrayRef; 1] = [Arc::new(candidates.clone())];
        create_hashes(&arrays, REPARTITION_RANDOM_STATE.random_state(), &mut hashes)
            .map_err(|e| Error::engine_caused("hashing partition key candidates", e))?;
        for (v, h) in candidates.values().iter().zip(&hashes) {
            let p = (*h % u64::from(n)) as usize;
            if keys[p].is_none() {
                keys[p] = Some(*v);
                missing -= 1;
            }
        }
        start += chunk;
    }
    let keys: Arc<[u64]> = keys.into_iter().map(|k| k.expect("every partition found")).collect();
    sf_manifest::sync::lock(&PARTITION_KEYS).insert(n, Arc::clone(&keys));
    Ok(keys)
}

/// `sf_partition_key(db_id) -> UInt64`; see the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PartitionKeyUdf {
    num_dbs: u32,
    signature: Signature,
}

impl PartitionKeyUdf {
    /// For `num_dbs` partitions.
    pub fn new(num_dbs: u32) -> Self {
        PartitionKeyUdf {
            num_dbs,
            signature: Signature::exact(vec![DataType::UInt32], Volatility::Immutable),
        }
    }

    /// Number of partitions.
    pub fn num_dbs(&self) -> u32 {
        self.num_dbs
    }

    /// As a DataFusion scalar function.
    pub fn udf(num_dbs: u32) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self::new(num_dbs))
    }
}

impl ScalarUDFImpl for PartitionKeyUdf {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        PARTITION_KEY_UDF
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::UInt64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let keys = partition_keys(self.num_dbs).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let ids = args.args[0].to_array(args.number_rows)?;
        let ids: &UInt32Array = ids.as_primitive::<UInt32Type>();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids.values() {
            let k = keys.get(*id as usize).ok_or_else(|| {
                DataFusionError::Execution(format!("db id {id} is not below num_dbs {}", self.num_dbs))
            })?;
            out.push(*k);
        }
        Ok(ColumnarValue::Array(Arc::new(UInt64Array::from(out))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_plan::repartition::BatchPartitioner;

    /// The keys land where promised when fed through the engine's own
    /// partitioner, the code RepartitionExec and Ballista's shuffle run.
    #[test]
    fn partition_keys_land_in_their_partition() {
        for n in [1u32, 2, 3, 7, 8, 64, 1000] {
            let keys = partition_keys(n).expect("keys");
            assert_eq!(keys.len(), n as usize);
            let col = Arc::new(datafusion::physical_expr::expressions::Column::new("k", 0));
            let mut p = BatchPartitioner::new_hash_partitioner(vec![col], n as usize, Default::default());
            let batch = RecordBatch::try_from_iter([("k", Arc::new(UInt64Array::from(keys.to_vec())) as ArrayRef)])
                .expect("batch");
            let mut seen = vec![false; n as usize];
            p.partition(batch, |partition, part| {
                let values = part.column(0).as_primitive::<arrow::datatypes::UInt64Type>();
                for v in values.values() {
                    assert_eq!(keys[partition], *v, "key of partition {partition} of {n}");
                    seen[partition] = true;
                }
                Ok(())
            })
            .expect("partition");
            assert!(seen.iter().all(|s| *s), "every partition of {n} got its key");
        }
    }
}
