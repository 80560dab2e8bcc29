//! The shard of each vector of a vector-only build, computed where the
//! writer computes every row's shard: in `sf_shard_id`'s Arrow kernel
//! ([`super::udf::ShardIdUdf`]), so it runs in this process and on a
//! cluster's executors alike. The routing artifact (centroids,
//! hyperplanes) travels inside the function's spec.
//!
//! A vector is placed by `sf_router::vector`'s routers, the same code the
//! readers probe with, so a stored vector is always in the first shard a
//! search of itself probes. A vector that cannot be stored (null, wrong
//! length, not finite, zero under cosine) is routed to shard 0 here; the
//! encoder then refuses it or, with `on_invalid = "skip"`, leaves it out.

use arrow::array::{Array, AsArray, UInt32Array};
use arrow::datatypes::{DataType, Int64Type};
use serde::{Deserialize, Serialize};
use sf_manifest::format::npy::Matrix;
use sf_manifest::format::vector::Metric;
use sf_router::vector::{ClusterRouter, LshRouter, check_vector};

use crate::error::{Error, Result};
use crate::route::vector::read_vector_column;

/// How a vector-only build assigns shards (plain data, shipped to
/// executors; matrices as their values' bit patterns, so the spec
/// compares exactly).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VectorRouting {
    /// The nearest centroid.
    Cluster {
        /// The centroids.
        centroids: Bits,
        /// `cosine` or `l2`.
        metric: String,
    },
    /// The hyperplane hash modulo `num_dbs`.
    Lsh {
        /// The hyperplanes.
        hyperplanes: Bits,
        /// The snapshot's metric (a zero vector under cosine is invalid).
        metric: String,
    },
    /// The shard id in the function's argument column.
    Explicit,
}

/// A matrix whose values are kept as `f32` bit patterns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bits {
    /// Rows.
    pub rows: usize,
    /// Columns (the dimension).
    pub cols: usize,
    /// `rows * cols` values' bits, row after row.
    pub values: Vec<u32>,
}

impl From<&Matrix> for Bits {
    fn from(m: &Matrix) -> Bits {
        Bits {
            rows: m.rows,
            cols: m.cols,
            values: m.values.iter().map(|v| v.to_bits()).collect(),
        }
    }
}

impl From<&Bits> for Matrix {
    fn from(b: &Bits) -> Matrix {
        Matrix {
            rows: b.rows,
            cols: b.cols,
            values: b.values.iter().map(|v| f32::from_bits(*v)).collect(),
        }
    }
}

fn metric(name: &str) -> Result<Metric> {
    Metric::parse(name).map_err(|e| Error::config("vector.metric", e.to_string()))
}

impl VectorRouting {
    /// Each row's shard; `array` is the vector column (the shard id column
    /// for `Explicit`), named `column` in errors.
    pub fn assign(&self, array: &dyn Array, num_dbs: u32, column: &str) -> Result<UInt32Array> {
        match self {
            VectorRouting::Cluster { centroids, metric: m } => {
                let metric = metric(m)?;
                let router = ClusterRouter::new(Matrix::from(centroids), metric);
                self.by_vector(array, centroids.cols, metric, |v| router.assign(v))
            }
            VectorRouting::Lsh { hyperplanes, metric: m } => {
                let router = LshRouter::new(Matrix::from(hyperplanes), num_dbs).map_err(Error::Internal)?;
                self.by_vector(array, hyperplanes.cols, metric(m)?, |v| router.assign(v))
            }
            VectorRouting::Explicit => {
                if !array.data_type().is_integer() {
                    return Err(Error::Data(format!(
                        "vector.shard_id_column {column:?} has type {}; shard ids are integers",
                        array.data_type()
                    )));
                }
                let ids = arrow::compute::cast(array, &DataType::Int64).map_err(|e| {
                    Error::Data(format!(
                        "vector.shard_id_column {column:?}: a shard id is out of range ({e})"
                    ))
                })?;
                let ids = ids.as_primitive::<Int64Type>();
                let mut out = Vec::with_capacity(ids.len());
                for row in 0..ids.len() {
                    let id = ids.is_valid(row).then(|| ids.value(row));
                    match id {
                        Some(id) if (0..i64::from(num_dbs)).contains(&id) => out.push(id as u32),
                        other => {
                            return Err(Error::Data(format!(
                                "vector.shard_id_column {column:?}: row {row} of a batch has shard id {}, not one of 0..{num_dbs}",
                                other.map_or("null".to_string(), |i| i.to_string())
                            )));
                        }
                    }
                }
                Ok(UInt32Array::from(out))
            }
        }
    }

    fn by_vector(
        &self,
        array: &dyn Array,
        dim: usize,
        metric: Metric,
        route: impl Fn(&[f32]) -> u32,
    ) -> Result<UInt32Array> {
        let vectors = read_vector_column(array)?;
        Ok(vectors
            .iter()
            .map(|v| match v {
                Some(v) if check_vector(metric, dim, v).is_ok() => route(v),
                _ => 0,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{FixedSizeListArray, Int32Array};
    use arrow::datatypes::Float32Type;

    use super::*;

    #[test]
    fn cluster_routes_to_the_nearest_centroid_and_invalid_vectors_to_zero() {
        let centroids = Matrix {
            rows: 3,
            cols: 2,
            values: vec![0.0, 0.0, 10.0, 0.0, 0.0, 10.0],
        };
        let routing = VectorRouting::Cluster {
            centroids: Bits::from(&centroids),
            metric: "l2".into(),
        };
        let vectors = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
            vec![
                Some(vec![Some(9.0), Some(1.0)]),
                Some(vec![Some(1.0), Some(8.0)]),
                Some(vec![Some(f32::NAN), Some(8.0)]),
                None,
            ],
            2,
        );
        let ids = routing.assign(&vectors, 3, "emb").unwrap();
        assert_eq!(ids.values().to_vec(), vec![1, 2, 0, 0]);
    }

    #[test]
    fn explicit_shard_ids_must_be_in_range() {
        let ids = VectorRouting::Explicit
            .assign(&Int32Array::from(vec![0, 2, 1]), 3, "shard")
            .unwrap();
        assert_eq!(ids.values().to_vec(), vec![0, 2, 1]);
        let e = VectorRouting::Explicit
            .assign(&Int32Array::from(vec![0, 3]), 3, "shard")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("row 1 of a batch has shard id 3, not one of 0..3"),
            "{e}"
        );
    }
}
