//! One routed input batch made ready for the shards: every row's shard id
//! checked against the write, keys and values encoded (values with their
//! vectors, for a unified build).

use arrow::array::{AsArray, BinaryArray, RecordBatch};
use arrow::datatypes::UInt32Type;
use sf_manifest::DbId;

use crate::build::spec::ShardWriteSpec;
use crate::error::{Error, Result};
use crate::route::encode::{encode_keys, encode_values};
use crate::route::vector::wrap_values;

/// The encoded keys and values of one input batch, and each row's shard;
/// checks that every shard id is below `num_dbs` (or, for a partition,
/// is `only`).
pub(crate) fn encode_batch(
    spec: &ShardWriteSpec,
    batch: &RecordBatch,
    only: Option<DbId>,
) -> Result<(Vec<u32>, BinaryArray, BinaryArray)> {
    let ids = batch
        .column_by_name(&spec.shard_id_col)
        .ok_or_else(|| Error::Internal(format!("column {} missing in the shard input", spec.shard_id_col)))?;
    let ids = ids.as_primitive::<UInt32Type>();
    let bad = match only {
        Some(db) => ids.values().iter().position(|d| *d != db.0),
        None => ids.values().iter().position(|d| *d >= spec.num_dbs),
    };
    if let Some(bad) = bad {
        return Err(Error::Internal(match only {
            Some(db) => format!(
                "partition {db} received a row of shard {} (row {bad} of a batch); partitioning is broken",
                ids.value(bad)
            ),
            None => format!(
                "a row was routed to shard {} of {}; routing is broken",
                ids.value(bad),
                spec.num_dbs
            ),
        }));
    }
    let key_col = batch
        .column_by_name(&spec.key_col)
        .ok_or_else(|| Error::Internal(format!("key column {} missing in the shard input", spec.key_col)))?;
    let keys = encode_keys(key_col.as_ref(), spec.key_encoding, &spec.key_col)?;
    let mut values = encode_values(batch, &spec.value)?;
    if let Some(vector) = &spec.vector {
        let (wrapped, skipped) = wrap_values(batch, &keys, &values, vector, spec.key_encoding)?;
        values = wrapped;
        if skipped > 0 {
            crate::progress::run(&spec.run_id, spec.upload_concurrency).add_vectors_skipped(skipped);
        }
    }
    Ok((ids.values().to_vec(), keys, values))
}
