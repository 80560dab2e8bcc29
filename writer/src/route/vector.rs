//! The vectors of a unified build: each row's vector, id and payload read
//! from its batch, checked, and carried to its shard with the row's value.
//!
//! The rows of a shard travel from routing to the shard builder as
//! (key, value) pairs through the collector, its sort and its spills. A
//! vector rides along inside the value, in an envelope
//! ([`wrap_values`], read back by [`envelope::split_value`]), so it reaches the same
//! shard as its row, is sorted with it, and is replaced with it when a
//! later row has the same key (`on_duplicate = "last_wins"`). The builder
//! writes the kv part as pages and the vectors into the shard's
//! sqlite-vec tables.
//!
//! Every vector is checked here, before anything is written: a null, a
//! length other than `dim`, a NaN or infinite component, or (under
//! cosine) all zeros fails the build naming the row's key and the column,
//! or, with `on_invalid = "skip"`, leaves the row without a vector.

use arrow::array::{Array, AsArray, BinaryArray, RecordBatch};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use serde::{Deserialize, Serialize};
use sf_manifest::KeyEncoding;
use sf_manifest::format::vector::{Metric, VectorId};

use crate::build::backend::show_key;
use crate::config::OnInvalid;
use crate::error::{Error, Result};
use crate::route::encode::{ValueSpec, encode_values};
use crate::route::envelope;

/// The vectors of a build, resolved against the input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VectorSpec {
    /// A vector-only build: the shards hold no key-value rows.
    #[serde(default)]
    pub vector_only: bool,
    /// The vector column.
    pub column: String,
    /// Components per vector.
    pub dim: u32,
    /// `cosine` or `l2`.
    pub metric: String,
    /// The id column (the key column by default).
    pub id_column: String,
    /// Columns stored as each vector's JSON payload (none: no payloads).
    pub payload_columns: Vec<String>,
    /// What an invalid vector does.
    pub on_invalid: OnInvalid,
}

impl VectorSpec {
    /// The metric (checked when the job was validated).
    pub fn metric(&self) -> Result<Metric> {
        Metric::parse(&self.metric).map_err(|e| Error::config("vector.metric", e.to_string()))
    }

    /// Columns the vectors read.
    pub fn columns(&self) -> Vec<&str> {
        std::iter::once(self.column.as_str())
            .chain(std::iter::once(self.id_column.as_str()))
            .chain(self.payload_columns.iter().map(String::as_str))
            .collect()
    }
}

/// Whether a column of this type can be the vector column.
pub fn vector_type_fits(dt: &DataType) -> bool {
    match dt {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => {
            matches!(f.data_type(), DataType::Float32 | DataType::Float64)
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        _ => false,
    }
}

/// Whether a column of this type can be the id column (integers become
/// integer ids, text and bytes text ids).
pub fn id_type_fits(dt: &DataType) -> bool {
    dt.is_integer()
        || matches!(
            dt,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
        )
}

/// One row's vector as read, before it is checked.
enum Read {
    Null,
    Values(Vec<f32>),
    Unreadable(String),
}

fn read_vectors(array: &dyn Array) -> Result<Vec<Read>> {
    fn floats(values: &dyn Array) -> Vec<f32> {
        match values.data_type() {
            DataType::Float32 => values
                .as_primitive::<Float32Type>()
                .iter()
                .map(|v| v.unwrap_or(f32::NAN))
                .collect(),
            // Coerced as the reference does (numpy's astype(float32)): a
            // value beyond f32's range becomes infinite and is refused.
            _ => values
                .as_primitive::<Float64Type>()
                .iter()
                .map(|v| v.map_or(f32::NAN, |x| x as f32))
                .collect(),
        }
    }
    let n = array.len();
    let mut out = Vec::with_capacity(n);
    match array.data_type() {
        DataType::FixedSizeList(..) => {
            let a = array.as_fixed_size_list();
            for i in 0..n {
                out.push(if a.is_null(i) {
                    Read::Null
                } else {
                    Read::Values(floats(a.value(i).as_ref()))
                });
            }
        }
        DataType::List(_) => {
            let a = array.as_list::<i32>();
            for i in 0..n {
                out.push(if a.is_null(i) {
                    Read::Null
                } else {
                    Read::Values(floats(a.value(i).as_ref()))
                });
            }
        }
        DataType::LargeList(_) => {
            let a = array.as_list::<i64>();
            for i in 0..n {
                out.push(if a.is_null(i) {
                    Read::Null
                } else {
                    Read::Values(floats(a.value(i).as_ref()))
                });
            }
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let text = arrow::compute::cast(array, &DataType::Utf8).map_err(|e| Error::Internal(e.to_string()))?;
            let text = text.as_string::<i32>();
            for i in 0..n {
                out.push(if text.is_null(i) || text.value(i).trim().is_empty() {
                    Read::Null
                } else {
                    match serde_json::from_str::<Vec<f64>>(text.value(i)) {
                        Ok(v) => Read::Values(v.into_iter().map(|x| x as f32).collect()),
                        Err(_) => Read::Unreadable(format!(
                            "is not a JSON array of numbers ({:?})",
                            text.value(i).chars().take(60).collect::<String>()
                        )),
                    }
                });
            }
        }
        other => {
            return Err(Error::Internal(format!(
                "vector column of type {other} reached the encoder"
            )));
        }
    }
    Ok(out)
}

/// Each row's vector of a vector column, `None` for a null or unreadable
/// one (checked later, where rows are encoded).
pub(crate) fn read_vector_column(array: &dyn Array) -> Result<Vec<Option<Vec<f32>>>> {
    Ok(read_vectors(array)?
        .into_iter()
        .map(|r| match r {
            Read::Values(v) => Some(v),
            Read::Null | Read::Unreadable(_) => None,
        })
        .collect())
}

fn read_ids(array: &dyn Array, column: &str) -> Result<Vec<Option<VectorId>>> {
    let n = array.len();
    if array.data_type().is_integer() {
        let a = arrow::compute::cast(array, &DataType::Int64).map_err(|e| {
            Error::Data(format!(
                "vector id column {column:?}: an id does not fit a 64-bit signed integer ({e})"
            ))
        })?;
        let a = a.as_primitive::<arrow::datatypes::Int64Type>();
        if a.null_count() > array.null_count() {
            return Err(Error::Data(format!(
                "vector id column {column:?}: an id does not fit a 64-bit signed integer"
            )));
        }
        return Ok((0..n)
            .map(|i| a.is_valid(i).then(|| VectorId::Int(a.value(i))))
            .collect());
    }
    match array.data_type() {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let a = arrow::compute::cast(array, &DataType::Binary).map_err(|e| Error::Internal(e.to_string()))?;
            let a = a.as_binary::<i32>();
            // Bytes ids are stored as hex text, as the reference does.
            Ok((0..n)
                .map(|i| a.is_valid(i).then(|| VectorId::Str(hex::encode(a.value(i)))))
                .collect())
        }
        _ => {
            let a = arrow::compute::cast(array, &DataType::Utf8).map_err(|e| Error::Internal(e.to_string()))?;
            let a = a.as_string::<i32>();
            Ok((0..n)
                .map(|i| a.is_valid(i).then(|| VectorId::Str(a.value(i).to_string())))
                .collect())
        }
    }
}

/// The values of a batch with each row's vector added, in the layout of
/// [`envelope`]. Returns the values and the number of rows whose vector
/// was skipped.
pub fn wrap_values(
    batch: &RecordBatch,
    keys: &BinaryArray,
    values: &BinaryArray,
    spec: &VectorSpec,
    key_encoding: KeyEncoding,
) -> Result<(BinaryArray, u64)> {
    let metric = spec.metric()?;
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::Internal(format!("vector input column {name} missing in the shard input")))
    };
    let vectors = read_vectors(column(&spec.column)?.as_ref())?;
    let ids = read_ids(column(&spec.id_column)?.as_ref(), &spec.id_column)?;
    let payloads = if spec.payload_columns.is_empty() {
        None
    } else {
        Some(encode_values(
            batch,
            &ValueSpec::JsonCols(spec.payload_columns.clone()),
        )?)
    };
    let dim = spec.dim as usize;
    let mut data = Vec::with_capacity(values.values().len() + batch.num_rows() * (dim * 4 + 32));
    let mut offsets = Vec::with_capacity(batch.num_rows() + 1);
    offsets.push(0i32);
    let mut skipped = 0u64;
    for (row, (read, id)) in vectors.into_iter().zip(ids).enumerate() {
        envelope::push_value(&mut data, values.value(row));
        let checked = match (read, id) {
            (_, None) => Err(format!("has no id (column {:?} is null)", spec.id_column)),
            (Read::Null, _) => Err("is null".to_string()),
            (Read::Unreadable(why), _) => Err(why),
            (Read::Values(v), Some(id)) => sf_router::vector::check_vector(metric, dim, &v).map(|()| (v, id)),
        };
        match checked {
            Ok((v, id)) => {
                envelope::push_vector(&mut data, &id.encode(), payloads.as_ref().map(|p| p.value(row)), &v);
            }
            Err(why) if spec.on_invalid == OnInvalid::Skip => {
                tracing::debug!(key = %show_key(keys.value(row), key_encoding), "vector skipped: {why}");
                skipped += 1;
                envelope::push_no_vector(&mut data);
            }
            Err(why) => {
                return Err(Error::Data(format!(
                    "row with key {}: the vector in column {:?} {why} (vector.dim = {}, metric {}); \
                     set vector.on_invalid = \"skip\" to build without such vectors",
                    show_key(keys.value(row), key_encoding),
                    spec.column,
                    spec.dim,
                    metric.as_str()
                )));
            }
        }
        offsets.push(
            i32::try_from(data.len()).map_err(|_| {
                Error::Data("values and vectors of one batch exceed 2 GiB; lower write.batch_size".into())
            })?,
        );
    }
    let wrapped = BinaryArray::new(
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Buffer::from_vec(data),
        None,
    );
    Ok((wrapped, skipped))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{FixedSizeListArray, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;
    use crate::route::envelope::split_value;

    fn spec(on_invalid: OnInvalid) -> VectorSpec {
        VectorSpec {
            vector_only: false,
            column: "emb".into(),
            dim: 2,
            metric: "cosine".into(),
            id_column: "id".into(),
            payload_columns: vec!["tag".into()],
            on_invalid,
        }
    }

    fn batch(vectors: Vec<Option<Vec<Option<f32>>>>) -> RecordBatch {
        let n = vectors.len();
        let emb = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(vectors, 2);
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("tag", DataType::Utf8, true),
                Field::new("emb", emb.data_type().clone(), true),
            ])),
            vec![
                Arc::new(Int64Array::from_iter_values(0..n as i64)),
                Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("t{i}")))),
                Arc::new(emb),
            ],
        )
        .unwrap()
    }

    fn keys(n: usize) -> BinaryArray {
        BinaryArray::from_iter_values((0..n as u64).map(|i| i.to_be_bytes()))
    }

    #[test]
    fn a_wrapped_value_comes_apart_as_it_went_in() {
        let b = batch(vec![Some(vec![Some(1.0), Some(0.5)])]);
        let values = BinaryArray::from_iter_values([b"v0"]);
        let (wrapped, skipped) =
            wrap_values(&b, &keys(1), &values, &spec(OnInvalid::Fail), KeyEncoding::U64Be).unwrap();
        assert_eq!(skipped, 0);
        let (kv, v) = split_value(wrapped.value(0), 2).unwrap();
        assert_eq!(kv, b"v0");
        let v = v.unwrap();
        assert_eq!(v.id, "{\"v\": 0, \"t\": \"int\"}");
        assert_eq!(v.payload, Some("{\"tag\":\"t0\"}"));
        let floats: Vec<f32> = sf_manifest::format::vector::f32s(v.vector).collect();
        assert_eq!(floats, vec![1.0, 0.5]);
    }

    #[test]
    fn invalid_vectors_fail_naming_the_key_or_are_skipped() {
        let cases: Vec<(Option<Vec<Option<f32>>>, &str)> = vec![
            (None, "is null"),
            (Some(vec![Some(f32::NAN), Some(1.0)]), "component 0 is NaN"),
            (Some(vec![Some(0.0), Some(f32::INFINITY)]), "component 1 is inf"),
            (Some(vec![Some(0.0), Some(0.0)]), "is zero"),
        ];
        for (vector, why) in cases {
            let b = batch(vec![Some(vec![Some(1.0), Some(0.0)]), vector]);
            let values = BinaryArray::from_iter_values([b"a", b"b"]);
            let err = wrap_values(&b, &keys(2), &values, &spec(OnInvalid::Fail), KeyEncoding::U64Be)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("row with key 1") && err.contains("\"emb\"") && err.contains(why),
                "{err}"
            );
            let (wrapped, skipped) =
                wrap_values(&b, &keys(2), &values, &spec(OnInvalid::Skip), KeyEncoding::U64Be).unwrap();
            assert_eq!(skipped, 1);
            assert_eq!(split_value(wrapped.value(1), 2).unwrap(), (&b"b"[..], None));
            assert!(split_value(wrapped.value(0), 2).unwrap().1.is_some());
        }
    }

    #[test]
    fn text_vectors_are_json_arrays_of_the_right_length() {
        let b = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("emb", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(StringArray::from(vec!["[0.5, 2]", "[1, 2, 3]", "x"])),
            ],
        )
        .unwrap();
        let mut s = spec(OnInvalid::Skip);
        s.payload_columns.clear();
        let values = BinaryArray::from_iter_values([b"", b"", b""]);
        let (wrapped, skipped) = wrap_values(&b, &keys(3), &values, &s, KeyEncoding::U64Be).unwrap();
        assert_eq!(skipped, 2);
        let v = split_value(wrapped.value(0), 2).unwrap().1.unwrap();
        assert_eq!(v.id, "{\"v\": \"a\", \"t\": \"str\"}");
        assert_eq!(v.payload, None);
    }
}
