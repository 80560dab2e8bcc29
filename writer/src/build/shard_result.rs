//! The result rows of a write: their schema and [`ShardResult`], one row
//! per shard, encoded into and decoded from Arrow batches (the write plan's
//! output, which crosses process boundaries on a cluster).

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use sf_manifest::{Attempt, DbId};

use crate::build::task_ids::TaskIds;
use crate::error::{Error, Result};

/// The schema of the result rows, one per partition.
pub fn result_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("db_id", DataType::UInt32, false),
            Field::new("attempt", DataType::UInt32, true),
            Field::new("db_url", DataType::Utf8, true),
            Field::new("row_count", DataType::UInt64, false),
            Field::new("duplicates", DataType::UInt64, false),
            Field::new("db_bytes", DataType::UInt64, false),
            Field::new("min_key", DataType::Binary, true),
            Field::new("max_key", DataType::Binary, true),
            Field::new("checksum", DataType::Utf8, true),
            Field::new("checkpoint_id", DataType::Utf8, true),
            Field::new("duration_ms", DataType::UInt64, false),
            Field::new("stage_id", DataType::Int64, true),
            Field::new("task_attempt_id", DataType::Int64, true),
            Field::new("failed_tries", DataType::UInt32, false),
            Field::new("spilled_runs", DataType::UInt32, false),
            Field::new("objects_checksum", DataType::Utf8, true),
            Field::new("page_size", DataType::UInt32, true),
        ]))
    });
    Arc::clone(&SCHEMA)
}

/// One decoded result row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardResult {
    /// The shard.
    pub db_id: DbId,
    /// The attempt written; `None` for an empty shard (nothing written).
    pub attempt: Option<Attempt>,
    /// URL of the attempt folder.
    pub db_url: Option<String>,
    /// Distinct keys stored.
    pub row_count: u64,
    /// Rows replaced by a later row with the same key.
    pub duplicates: u64,
    /// Shard file size (0 for SlateDB).
    pub db_bytes: u64,
    /// Smallest encoded key.
    pub min_key: Option<Vec<u8>>,
    /// Largest encoded key.
    pub max_key: Option<Vec<u8>>,
    /// Content checksum.
    pub checksum: Option<String>,
    /// Content identity.
    pub checkpoint_id: Option<String>,
    /// Wall time of the task.
    pub duration_ms: u64,
    /// Engine stage id.
    pub stage_id: Option<i64>,
    /// Engine task attempt id.
    pub task_attempt_id: Option<i64>,
    /// Upload tries that failed before the one that succeeded.
    pub failed_tries: u32,
    /// Sorted runs the shard's sort wrote to disk (0: it fit in memory).
    pub spilled_runs: u32,
    /// Checksum of the objects the upload wrote, computed as it wrote
    /// them (SlateDB: `xxh3_128-objects:<hex>`); verification re-reads
    /// the objects against it. `None` for SQLite, whose one file's
    /// checksum is [`checksum`](Self::checksum).
    pub objects_checksum: Option<String>,
    /// Page size of a SQLite shard's file; `None` for SlateDB and empty
    /// shards.
    pub page_size: Option<u32>,
}

impl ShardResult {
    pub(crate) fn empty(db_id: DbId, duration_ms: u64, task: TaskIds) -> Self {
        ShardResult {
            db_id,
            attempt: None,
            db_url: None,
            row_count: 0,
            duplicates: 0,
            db_bytes: 0,
            min_key: None,
            max_key: None,
            checksum: None,
            checkpoint_id: None,
            duration_ms,
            stage_id: task.stage_id,
            task_attempt_id: task.task_attempt_id,
            failed_tries: 0,
            spilled_runs: 0,
            objects_checksum: None,
            page_size: None,
        }
    }

    /// Encodes rows as a batch of [`result_schema`].
    pub fn to_batch(rows: &[ShardResult]) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.db_id.0))),
            Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.attempt.map(|a| a.0)))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.db_url.as_deref()))),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.row_count))),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.duplicates))),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.db_bytes))),
            Arc::new(BinaryArray::from_iter(rows.iter().map(|r| r.min_key.as_deref()))),
            Arc::new(BinaryArray::from_iter(rows.iter().map(|r| r.max_key.as_deref()))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.checksum.as_deref()))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.checkpoint_id.as_deref()))),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.duration_ms))),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.stage_id))),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.task_attempt_id))),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.failed_tries))),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.spilled_runs))),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|r| r.objects_checksum.as_deref()),
            )),
            Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.page_size))),
        ];
        RecordBatch::try_new(result_schema(), cols).map_err(|e| Error::Internal(e.to_string()))
    }

    /// Decodes a batch of [`result_schema`].
    pub fn from_batch(batch: &RecordBatch) -> Result<Vec<ShardResult>> {
        if batch.schema().fields() != result_schema().fields() {
            return Err(Error::Internal(format!(
                "shard results have schema {:?}, expected {:?}",
                batch.schema(),
                result_schema()
            )));
        }
        let u32s = |i: usize| batch.column(i).as_primitive::<UInt32Type>();
        let u64s = |i: usize| batch.column(i).as_primitive::<arrow::datatypes::UInt64Type>();
        let i64s = |i: usize| batch.column(i).as_primitive::<arrow::datatypes::Int64Type>();
        let strs = |i: usize| batch.column(i).as_string::<i32>();
        let bins = |i: usize| batch.column(i).as_binary::<i32>();
        let opt_str = |i: usize, r: usize| strs(i).is_valid(r).then(|| strs(i).value(r).to_string());
        let opt_bin = |i: usize, r: usize| bins(i).is_valid(r).then(|| bins(i).value(r).to_vec());
        Ok((0..batch.num_rows())
            .map(|r| ShardResult {
                db_id: DbId(u32s(0).value(r)),
                attempt: u32s(1).is_valid(r).then(|| Attempt(u32s(1).value(r))),
                db_url: opt_str(2, r),
                row_count: u64s(3).value(r),
                duplicates: u64s(4).value(r),
                db_bytes: u64s(5).value(r),
                min_key: opt_bin(6, r),
                max_key: opt_bin(7, r),
                checksum: opt_str(8, r),
                checkpoint_id: opt_str(9, r),
                duration_ms: u64s(10).value(r),
                stage_id: i64s(11).is_valid(r).then(|| i64s(11).value(r)),
                task_attempt_id: i64s(12).is_valid(r).then(|| i64s(12).value(r)),
                failed_tries: u32s(13).value(r),
                spilled_runs: u32s(14).value(r),
                objects_checksum: opt_str(15, r),
                page_size: u32s(16).is_valid(r).then(|| u32s(16).value(r)),
            })
            .collect())
    }
}
