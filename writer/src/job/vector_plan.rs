//! Planning a vector-only build (`[vector] sharding = ...`): its routing
//! artifact (centroids given or trained on a sample of the input,
//! hyperplanes given or drawn), the routing the kernel runs, and the
//! manifest's `custom.vector`, all in the reference's format.
//!
//! A vector-only job runs through the same plan as a key-value job: the
//! id column stands in for the key (rows are sorted and deduplicated by
//! id in each shard), the shard id comes from the vector
//! ([`VectorRouting`] inside `sf_shard_id`) or, for `cel`, from the job's
//! `[routing]` CEL expression over the row's columns, resolved and run
//! exactly as a key-value job's (`routing_values` the categorical lookup,
//! inferred from the data when absent), and the shard builder writes
//! only the vector tables (an empty `kv` table, as the reference's shards
//! have). The manifest's `required` block is the reference's filler for
//! vector-only snapshots (key column `_vector_id`, `raw` keys, hash
//! sharding).

use datafusion::dataframe::DataFrame;
use datafusion::prelude::ident;
use serde_json::{Value, json};
use sf_manifest::format::npy::{self, Matrix};
use sf_manifest::format::vector::{Metric, VectorCel};
use sf_manifest::{KeyEncoding, RunId, ShardingSpec, StorageOptions};
use sf_router::vector::check_vector;

use crate::config::{JobConfig, VectorConfig, VectorShardingConfig};
use crate::error::{Error, Result};
use crate::plan::vector_route::{Bits, VectorRouting};
use crate::route::vector::{read_vector_column, vector_type_fits};

/// The manifest's `required.key_col` of a vector-only snapshot.
pub const VECTOR_ONLY_KEY_COL: &str = "_vector_id";
/// The manifest's `required.key_encoding` of a vector-only snapshot.
pub const VECTOR_ONLY_KEY_ENCODING: KeyEncoding = KeyEncoding::Raw;

/// A routing artifact the build publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    /// `centroids.npy` or `hyperplanes.npy`.
    pub name: &'static str,
    /// Its values.
    pub matrix: Matrix,
}

/// What `sf_shard_id` runs for a vector-only build placed by its vectors
/// (or explicit shard ids).
#[derive(Debug, Clone, PartialEq)]
pub struct VectorKernel {
    /// The routing.
    pub routing: VectorRouting,
    /// The column it reads (the vector, or the shard id column).
    pub column: String,
}

/// A vector-only build, planned.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorOnlyPlan {
    /// How vectors are placed.
    pub sharding: VectorShardingConfig,
    /// What the kernel runs; `None` for `cel`, routed by the job's CEL
    /// routing as a key-value job is.
    pub kernel: Option<VectorKernel>,
    /// Shards (`None` for `cel`: resolved with its routing, from
    /// `routing_values` or the data when `num_dbs` is not given).
    pub num_dbs: Option<u32>,
    /// Shards a search probes by default.
    pub num_probes: u32,
    /// The routing artifact, if the strategy has one.
    pub artifact: Option<Artifact>,
    /// Components per vector.
    pub dim: u32,
    /// The metric.
    pub metric: Metric,
}

/// Where a run's routing artifacts live, under the snapshot prefix.
pub fn artifact_key(run_id: &RunId, name: &str) -> String {
    format!("vector_meta/run_id={}/{name}", run_id.as_str())
}

async fn read_artifact(url: &str, key: &str, storage: &StorageOptions, dim: u32) -> Result<Matrix> {
    let loc = sf_manifest::resolve(url, storage).map_err(|e| Error::config(key, e.to_string()))?;
    let bytes = loc
        .store
        .get(&loc.path)
        .await
        .map_err(|e| Error::config(key, format!("cannot read {url}: {e}")))?
        .bytes()
        .await
        .map_err(|e| Error::config(key, format!("cannot read {url}: {e}")))?;
    let m = npy::read(&bytes, url).map_err(|e| Error::config(key, e.to_string()))?;
    if m.cols != dim as usize {
        return Err(Error::config(
            key,
            format!("{url} has {} columns, vector.dim is {dim}", m.cols),
        ));
    }
    if let Some(i) = m.values.iter().position(|x| !x.is_finite()) {
        return Err(Error::config(
            key,
            format!("{url}: value {i} is {}, not a finite number", m.values[i]),
        ));
    }
    Ok(m)
}

/// The valid vectors among the first `n` rows of the input: what trains
/// the centroids.
async fn sample(df: &DataFrame, v: &VectorConfig, metric: Metric) -> Result<Matrix> {
    let batches = df
        .clone()
        .select(vec![ident(&v.column)])?
        .limit(0, Some(v.train_sample))?
        .collect()
        .await?;
    let mut values = Vec::new();
    let mut rows = 0;
    for b in &batches {
        for vector in read_vector_column(b.column(0).as_ref())?.into_iter().flatten() {
            if check_vector(metric, v.dim as usize, &vector).is_ok() {
                values.extend_from_slice(&vector);
                rows += 1;
            }
        }
    }
    if rows == 0 {
        return Err(Error::Input(format!(
            "the first {} rows of the input hold no valid vector in column {:?} to train centroids on",
            v.train_sample, v.column
        )));
    }
    Ok(Matrix {
        rows,
        cols: v.dim as usize,
        values,
    })
}

/// Plans a vector-only job over its input (`job.validate_settings` passed).
pub async fn plan(job: &JobConfig, v: &VectorConfig, df: &DataFrame) -> Result<VectorOnlyPlan> {
    let sharding = v
        .sharding
        .ok_or_else(|| Error::Internal("a vector-only plan of a unified job".into()))?;
    let metric = Metric::parse(&v.metric).map_err(|e| Error::config("vector.metric", e.to_string()))?;
    let schema = df.schema().as_arrow().clone();
    let field = schema.field_with_name(&v.column).map_err(|_| {
        Error::config(
            "vector.column",
            format!(
                "{:?} is not a column of the input (columns: {})",
                v.column,
                crate::input::field_list(&schema)
            ),
        )
    })?;
    if !vector_type_fits(field.data_type()) {
        return Err(Error::config(
            "vector.column",
            format!(
                "{:?} has type {}; it must be a list of floats (FixedSizeList or List of Float32/Float64) or text holding JSON arrays",
                v.column,
                field.data_type()
            ),
        ));
    }
    let storage = job.storage_options();
    let given_dbs = job.routing.num_dbs;
    let (kernel, num_dbs, artifact) = match sharding {
        VectorShardingConfig::Cluster => {
            let (centroids, num_dbs) = match &v.centroids {
                Some(url) => {
                    let m = read_artifact(url, "vector.centroids", &storage, v.dim).await?;
                    let n = u32::try_from(m.rows).unwrap_or(u32::MAX);
                    if n == 0 || given_dbs.is_some_and(|d| d != n) {
                        return Err(Error::config(
                            "vector.centroids",
                            format!(
                                "{url} holds {n} centroids; the snapshot has one shard per centroid (routing.num_dbs = {})",
                                given_dbs.map_or("not set".into(), |d| d.to_string())
                            ),
                        ));
                    }
                    (m, n)
                }
                None => {
                    let n = given_dbs.ok_or_else(|| Error::config("routing.num_dbs", "needs the number of shards"))?;
                    let sample = sample(df, v, metric).await?;
                    let m = sf_router::vector::train_centroids(&sample, n as usize, v.seed)
                        .map_err(|e| Error::Input(format!("training centroids: {e}")))?;
                    (m, n)
                }
            };
            (
                Some(VectorKernel {
                    routing: VectorRouting::Cluster {
                        centroids: Bits::from(&centroids),
                        metric: metric.as_str().into(),
                    },
                    column: v.column.clone(),
                }),
                Some(num_dbs),
                Some(Artifact {
                    name: "centroids.npy",
                    matrix: centroids,
                }),
            )
        }
        VectorShardingConfig::Lsh => {
            let n = given_dbs.ok_or_else(|| Error::config("routing.num_dbs", "needs the number of shards"))?;
            let hyperplanes = match &v.hyperplanes {
                Some(url) => {
                    let m = read_artifact(url, "vector.hyperplanes", &storage, v.dim).await?;
                    if let Some(bits) = v.num_hash_bits
                        && bits as usize != m.rows
                    {
                        return Err(Error::config(
                            "vector.hyperplanes",
                            format!("{url} holds {} hyperplanes but vector.num_hash_bits is {bits}", m.rows),
                        ));
                    }
                    if !(1..=63).contains(&m.rows) {
                        return Err(Error::config(
                            "vector.hyperplanes",
                            format!("{url} holds {} hyperplanes; from 1 to 63 make a hash", m.rows),
                        ));
                    }
                    m
                }
                None => {
                    sf_router::vector::random_hyperplanes(v.num_hash_bits.unwrap_or(8) as usize, v.dim as usize, v.seed)
                }
            };
            (
                Some(VectorKernel {
                    routing: VectorRouting::Lsh {
                        hyperplanes: Bits::from(&hyperplanes),
                        metric: metric.as_str().into(),
                    },
                    column: v.column.clone(),
                }),
                Some(n),
                Some(Artifact {
                    name: "hyperplanes.npy",
                    matrix: hyperplanes,
                }),
            )
        }
        VectorShardingConfig::Explicit => {
            let n = given_dbs.ok_or_else(|| Error::config("routing.num_dbs", "needs the number of shards"))?;
            let column = v
                .shard_id_column
                .clone()
                .ok_or_else(|| Error::config("vector.shard_id_column", "needs the shard id column"))?;
            let f = schema.field_with_name(&column).map_err(|_| {
                Error::config(
                    "vector.shard_id_column",
                    format!(
                        "{column:?} is not a column of the input (columns: {})",
                        crate::input::field_list(&schema)
                    ),
                )
            })?;
            if !f.data_type().is_integer() {
                return Err(Error::config(
                    "vector.shard_id_column",
                    format!("{column:?} has type {}; shard ids are integers", f.data_type()),
                ));
            }
            (
                Some(VectorKernel {
                    routing: VectorRouting::Explicit,
                    column,
                }),
                Some(n),
                None,
            )
        }
        // The job's [routing] CEL, resolved against the input with the
        // key-value jobs' code (its columns checked there).
        VectorShardingConfig::Cel => (None, given_dbs, None),
    };
    let num_probes = v.num_probes.unwrap_or(1);
    if let Some(num_dbs) = num_dbs
        && num_probes > num_dbs
    {
        return Err(Error::config(
            "vector.num_probes",
            format!("is {num_probes} but the snapshot has {num_dbs} shards"),
        ));
    }
    Ok(VectorOnlyPlan {
        sharding,
        kernel,
        num_dbs,
        num_probes,
        artifact,
        dim: v.dim,
        metric,
    })
}

impl VectorOnlyPlan {
    /// The job as the shared plan runs it: the id column as the key, the
    /// shard count fixed.
    pub fn effective_job(&self, job: &JobConfig) -> JobConfig {
        let mut job = job.clone();
        if let Some(v) = &mut job.vector {
            let id = v.id_column.clone().unwrap_or_else(|| job.key_col.clone());
            v.id_column = Some(id.clone());
            job.key_col = id;
        }
        if self.num_dbs.is_some() {
            job.routing.num_dbs = self.num_dbs;
        }
        job
    }

    /// The manifest's `custom.vector`, with the keys the reference writes
    /// for a vector-only snapshot (`total_vectors` is filled in at
    /// publish, from the shards' counts); `cel` is the resolved CEL
    /// routing of a `cel` build (its `cel_expr`, `cel_columns` and
    /// `routing_values`, bytes tokens as `{"__bytes_hex__": ...}` when the
    /// expression yields bytes).
    pub fn custom(&self, artifact_url: Option<&str>, cel: Option<(&ShardingSpec, bool)>) -> Value {
        let mut v = json!({
            "dim": self.dim,
            "index_type": "hnsw",
            "metric": self.metric.as_str(),
            "num_probes": self.num_probes,
            "quantization": null,
            "sharding_strategy": match self.sharding {
                VectorShardingConfig::Cluster => "cluster",
                VectorShardingConfig::Lsh => "lsh",
                VectorShardingConfig::Explicit => "explicit",
                VectorShardingConfig::Cel => "cel",
            },
            "total_vectors": 0,
        });
        if let (Some((spec, bytes_tokens)), Some(obj)) = (cel, v.as_object_mut()) {
            obj.insert("cel_expr".into(), json!(spec.cel_expr));
            obj.insert("cel_columns".into(), json!(spec.cel_columns));
            if let Some(values) = &spec.routing_values {
                obj.insert(
                    "routing_values".into(),
                    VectorCel::routing_values_json(values, bytes_tokens),
                );
            }
        }
        if let (Some(a), Some(url), Some(obj)) = (&self.artifact, artifact_url, v.as_object_mut()) {
            match a.name {
                "centroids.npy" => {
                    obj.insert("centroids_ref".into(), json!(url));
                }
                _ => {
                    obj.insert("hyperplanes_ref".into(), json!(url));
                    obj.insert("num_hash_bits".into(), json!(a.matrix.rows));
                }
            }
        }
        v
    }
}
