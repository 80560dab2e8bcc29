//! What a build job says, section by section: the types a job file
//! deserialises into, with their documented defaults, and the settings
//! derived from them (storage options, backend, rate limits, retries).
//!
//! Every key is documented in docs/configuration.md with its default.
//! Unknown keys are errors (`deny_unknown_fields` on every section).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sf_manifest::{CelType, KeyEncoding, RoutingValue, StorageOptions};

use crate::build::backend::{BackendConfig, DuplicatePolicy, SlateDbSettings, SqliteSettings};
use crate::build::ratelimit::RateLimits;
use crate::publish::gates::ValidateConfig;

/// A build job: where rows come from, how each becomes a key and a value,
/// how keys are routed to shards, where and how shards are written, the
/// gates a build must pass, and what old snapshots retention removes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Name of the key column (required, except for a vector-only job,
    /// where it is the default id column).
    #[serde(default)]
    pub key_col: String,
    /// `u64be`, `u32be`, `utf8` or `raw`; default from the key column's type.
    #[serde(default)]
    pub key_encoding: Option<KeyEncoding>,
    /// Name given to the computed shard id column (must not clash with an
    /// input column).
    #[serde(default = "default_shard_id_col")]
    pub shard_id_col: String,
    /// Where rows come from (required for a job file the writer runs on its
    /// own; callers that hand in a DataFrame leave it out).
    #[serde(default)]
    pub input: Option<InputConfig>,
    /// How a row becomes its value.
    #[serde(default)]
    pub value: ValueConfig,
    /// How rows are routed to shards.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Where and how shards are written.
    pub output: OutputConfig,
    /// Writing knobs.
    #[serde(default)]
    pub write: WriteConfig,
    /// object_store options for every URL of the job (`endpoint`, `region`,
    /// `allow_http`, ...). Credentials belong in the environment.
    #[serde(default)]
    pub storage: BTreeMap<String, String>,
    /// Gates a build must pass before it is published.
    #[serde(default)]
    pub validate: ValidateConfig,
    /// Old snapshots and abandoned runs removed after a successful publish.
    #[serde(default)]
    pub retention: Option<RetentionConfig>,
    /// Each row's vector: stored beside its key-value row (a unified
    /// snapshot), or alone when `sharding` is set (a vector-only snapshot);
    /// see docs/vectors.md.
    #[serde(default)]
    pub vector: Option<VectorConfig>,
}

/// `[vector]`: every row also carries a vector, stored in its shard's
/// sqlite-vec index next to the row's key and value (a unified snapshot,
/// searchable by similarity and readable by key), or, with `sharding`, a
/// vector-only snapshot whose shards hold vectors placed by the vectors
/// themselves (or an explicit shard id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorConfig {
    /// The vector column: a list of floats (Arrow `FixedSizeList` or
    /// `List` of `Float32`/`Float64`), or text holding a JSON array of
    /// numbers (CSV, JSON inputs). Stored as 32-bit floats.
    pub column: String,
    /// Components of every vector (1..=8192).
    pub dim: u32,
    /// `cosine` (1 - cosine similarity) or `l2` (Euclidean distance).
    /// `dot` cannot be stored by sqlite-vec shards and is refused.
    #[serde(default = "default_vector_metric")]
    pub metric: String,
    /// The column whose value is each vector's id (integers are stored as
    /// integer ids, anything else as text; bytes as hex). Default: the key.
    #[serde(default)]
    pub id_column: Option<String>,
    /// Columns stored with each vector as a JSON object and returned with
    /// search hits. None by default (hits then have no payload).
    #[serde(default)]
    pub payload_columns: Vec<String>,
    /// What a row with an invalid vector (null, a length other than `dim`,
    /// a NaN or infinite component, all zeros under cosine) does: `fail`
    /// the build, or `skip` its vector (the key-value row is kept).
    #[serde(default)]
    pub on_invalid: OnInvalid,
    /// Vector-only: how vectors are placed in shards (`cluster`, `lsh`,
    /// `explicit`, `cel`). Absent: a unified snapshot, routed by
    /// `[routing]`.
    #[serde(default)]
    pub sharding: Option<VectorShardingConfig>,
    /// Vector-only: shards a search probes by default (1 for `explicit`
    /// and `cel`).
    #[serde(default)]
    pub num_probes: Option<u32>,
    /// `cluster`: a `.npy` file (path or URL) of `num_dbs` x `dim`
    /// centroids. Absent: centroids trained by the build (k-means).
    #[serde(default)]
    pub centroids: Option<String>,
    /// `cluster` without `centroids`: the first this many valid vectors of
    /// the input train the centroids.
    #[serde(default = "default_train_sample")]
    pub train_sample: usize,
    /// `cluster` training and `lsh` hyperplanes: the random seed (the same
    /// seed and input give the same artifacts).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// `lsh`: bits of the hash (hyperplanes), 1 to 63.
    #[serde(default)]
    pub num_hash_bits: Option<u32>,
    /// `lsh`: a `.npy` file (path or URL) of `num_hash_bits` x `dim`
    /// hyperplanes. Absent: standard-normal hyperplanes drawn with `seed`.
    #[serde(default)]
    pub hyperplanes: Option<String>,
    /// `explicit`: the integer column holding each vector's shard id.
    #[serde(default)]
    pub shard_id_column: Option<String>,
}

fn default_train_sample() -> usize {
    100_000
}

fn default_seed() -> u64 {
    42
}

/// How a vector-only job places its vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorShardingConfig {
    /// The nearest of `num_dbs` centroids.
    Cluster,
    /// Random-hyperplane hash modulo `num_dbs`.
    Lsh,
    /// The shard id in `shard_id_column`.
    Explicit,
    /// The job's `[routing]` CEL expression over routing columns (its
    /// result the shard id, or a token of `routing_values`).
    Cel,
}

impl VectorConfig {
    /// Whether the job builds a vector-only snapshot.
    pub fn vector_only(&self) -> bool {
        self.sharding.is_some()
    }
}

fn default_vector_metric() -> String {
    "cosine".to_string()
}

/// What a row with an invalid vector does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    /// The build fails before anything is published, naming the row's key.
    #[default]
    Fail,
    /// The row's vector is left out and counted in the build report.
    Skip,
}

/// `[retention]`: after a successful publish, the build runs the same
/// cleanup as `sf-read cleanup --include-abandoned` with these rules.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Keep the newest N manifests (and their runs); at least 1.
    pub keep_last: Option<usize>,
    /// Manifests published longer ago than this are old (`7d`, `36h`);
    /// with both rules a manifest is old only if both say so.
    #[serde(default, with = "sf_manifest::format::duration::option_serde")]
    pub older_than: Option<std::time::Duration>,
}

impl RetentionConfig {
    /// The cleanup these rules ask for (abandoned runs included).
    pub fn cleanup_options(&self) -> sf_manifest::publish::gc::CleanupOptions {
        sf_manifest::publish::gc::CleanupOptions {
            keep_last: self.keep_last,
            older_than: self.older_than,
            include_abandoned: true,
            dry_run: false,
        }
    }
}

fn default_shard_id_col() -> String {
    "_shard_id".to_string()
}

/// The format of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// Parquet files.
    Parquet,
    /// CSV files.
    Csv,
    /// Newline-delimited JSON files.
    Json,
    /// A SQL query over `[input.tables.*]`.
    Sql,
}

/// `[input]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// `parquet`, `csv`, `json` or `sql`.
    pub format: InputFormat,
    /// A file, a folder or a glob (URL or local path; relative paths are
    /// relative to the job file). Not for `sql`.
    #[serde(default)]
    pub path: Option<String>,
    /// The query, for `format = "sql"`.
    #[serde(default)]
    pub sql: Option<String>,
    /// Named inputs the query reads, for `format = "sql"`.
    #[serde(default)]
    pub tables: BTreeMap<String, TableConfig>,
    /// CSV options.
    #[serde(default)]
    pub csv: CsvOptions,
}

/// `[input.tables.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `parquet`, `csv` or `json`.
    pub format: InputFormat,
    /// A file, a folder or a glob.
    pub path: String,
    /// CSV options.
    #[serde(default)]
    pub csv: CsvOptions,
}

/// CSV reading options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsvOptions {
    /// Whether the first line names the columns.
    pub has_header: bool,
    /// Field separator (one byte).
    pub delimiter: char,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            has_header: true,
            delimiter: ',',
        }
    }
}

/// `[value]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueConfig {
    /// Store this column's bytes as the value.
    #[serde(default)]
    pub binary_col: Option<String>,
    /// Store these columns as a JSON object.
    #[serde(default)]
    pub json_cols: Option<Vec<String>>,
}

/// Routing strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// xxh3 of the key.
    #[default]
    Hash,
    /// A CEL expression.
    Cel,
}

/// `[routing]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// `hash` or `cel`.
    pub strategy: Strategy,
    /// Number of shards.
    pub num_dbs: Option<u32>,
    /// Hash routing: choose num_dbs so no shard holds more keys than this.
    pub max_keys_per_shard: Option<u64>,
    /// CEL: the expression.
    pub expr: Option<String>,
    /// CEL: column name -> type (int, uint, string, bytes, double, bool).
    pub columns: BTreeMap<String, CelType>,
    /// CEL categorical: the tokens; db id = index. Omit to infer them from
    /// the data (sorted distinct values) — unless `num_dbs` makes the
    /// expression direct.
    pub routing_values: Option<Vec<RoutingValue>>,
    /// CEL: `direct` (the result is the db id) or `categorical` (a token).
    /// Default: categorical when `routing_values` is given or `num_dbs` is
    /// not, else direct.
    pub mode: Option<CelMode>,
    /// Re-check the routing of a sample of rows with the row router.
    pub verify_routing: bool,
    /// Rows in that sample.
    pub verify_sample_size: usize,
}

/// How a CEL result becomes a db id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CelMode {
    /// The result is the db id.
    Direct,
    /// The result is a token looked up in `routing_values`.
    Categorical,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            strategy: Strategy::Hash,
            num_dbs: None,
            max_keys_per_shard: None,
            expr: None,
            columns: BTreeMap::new(),
            routing_values: None,
            mode: None,
            verify_routing: true,
            verify_sample_size: 10_000,
        }
    }
}

/// Shard storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite files.
    #[default]
    Sqlite,
    /// SlateDB databases.
    Slatedb,
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Snapshot prefix URL (or local path). Required to build; callers
    /// that choose the prefix themselves may leave it empty and set it
    /// before the build.
    #[serde(default)]
    pub prefix: String,
    /// `sqlite` or `slatedb`.
    #[serde(default)]
    pub backend: Backend,
    /// Run id; default a random 32-hex id.
    #[serde(default)]
    pub run_id: Option<String>,
    /// SQLite settings.
    #[serde(default)]
    pub sqlite: SqliteSettings,
    /// SlateDB settings.
    #[serde(default)]
    pub slatedb: SlateDbSettings,
}

/// `[write]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriteConfig {
    /// Rows per batch, read and written.
    pub batch_size: usize,
    /// Rows per second per shard attempt (unlimited when absent).
    pub max_writes_per_second: Option<f64>,
    /// Key+value bytes per second per shard attempt (unlimited when absent).
    pub max_write_bytes_per_second: Option<f64>,
    /// Write each shard's keys in order.
    pub sort_within_shard: bool,
    /// `last_wins` or `error`.
    pub on_duplicate: DuplicatePolicy,
    /// Retries of a shard's upload after a retryable failure.
    pub shard_retries: u32,
    /// First backoff between retries, doubling up to `retry_max_backoff_ms`.
    pub retry_backoff_ms: u64,
    /// Largest backoff.
    pub retry_max_backoff_ms: u64,
    /// Shards uploading at once in one process.
    pub upload_concurrency: usize,
    /// Where shards are staged locally (default: the system temp folder).
    pub work_dir: Option<PathBuf>,
    /// Re-read every winning shard and check its checksum before publishing.
    pub verify_checksums: bool,
    /// Memory a build process may use for rows, in MiB: half holds the
    /// rows waiting to be sorted and built, all shards together, taken on
    /// demand (a shard with few rows takes little; beyond it rows spill as
    /// sorted runs to `work_dir`), a quarter is DataFusion's pool, a
    /// quarter SQLite's page caches of the builds running at once. Any
    /// shard count fits any limit. Default: half of the memory this
    /// process may use (the machine's, or its cgroup's limit), at least
    /// 1024.
    pub memory_limit_mib: u64,
    /// Lease of the build's run record, in seconds: renewed every third of
    /// it while the build runs. A run record whose lease is past is a
    /// build that died: another build may then take the run id, and
    /// cleanup may remove what it left.
    pub run_lease_secs: u64,
}

/// Half of the memory this process may use: the machine's (`MemTotal`) or
/// its cgroup's limit when lower; at least 1024 MiB; 2048 MiB when neither
/// can be read.
pub fn default_memory_limit_mib() -> u64 {
    fn read_u64(path: &str, field: Option<&str>) -> Option<u64> {
        let text = std::fs::read_to_string(path).ok()?;
        match field {
            Some(name) => text
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024),
            None => text.trim().parse().ok(),
        }
    }
    let machine = read_u64("/proc/meminfo", Some("MemTotal:"));
    // cgroup v2, then v1; "max" (no limit) does not parse.
    let cgroup = read_u64("/sys/fs/cgroup/memory.max", None)
        .or_else(|| read_u64("/sys/fs/cgroup/memory/memory.limit_in_bytes", None));
    let usable = match (machine, cgroup) {
        (Some(m), Some(c)) => m.min(c),
        (Some(m), None) => m,
        (None, Some(c)) => c,
        (None, None) => return 2048,
    };
    (usable / 2 / (1 << 20)).max(1024)
}

impl Default for WriteConfig {
    fn default() -> Self {
        WriteConfig {
            batch_size: 8192,
            max_writes_per_second: None,
            max_write_bytes_per_second: None,
            sort_within_shard: true,
            on_duplicate: DuplicatePolicy::LastWins,
            shard_retries: 3,
            retry_backoff_ms: 200,
            retry_max_backoff_ms: 10_000,
            upload_concurrency: 8,
            work_dir: None,
            verify_checksums: true,
            memory_limit_mib: default_memory_limit_mib(),
            run_lease_secs: 60,
        }
    }
}

/// Retries of one shard's upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub retries: u32,
    /// First backoff.
    pub backoff_ms: u64,
    /// Largest backoff.
    pub max_backoff_ms: u64,
}

impl RetryPolicy {
    /// Backoff before retry number `n` (1-based).
    pub fn backoff(&self, n: u32) -> std::time::Duration {
        let ms = self
            .backoff_ms
            .saturating_mul(1u64 << n.saturating_sub(1).min(20))
            .min(self.max_backoff_ms);
        std::time::Duration::from_millis(ms)
    }
}

impl JobConfig {
    /// The `[storage]` options.
    pub fn storage_options(&self) -> StorageOptions {
        self.storage.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The backend with its settings.
    pub fn backend(&self) -> BackendConfig {
        match self.output.backend {
            Backend::Sqlite => BackendConfig::Sqlite(self.output.sqlite.clone()),
            Backend::Slatedb => BackendConfig::Slatedb(self.output.slatedb.clone()),
        }
    }

    /// Write limits per shard attempt.
    pub fn limits(&self) -> RateLimits {
        RateLimits {
            rows_per_second: self.write.max_writes_per_second,
            bytes_per_second: self.write.max_write_bytes_per_second,
        }
    }

    /// Upload retries.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            retries: self.write.shard_retries,
            backoff_ms: self.write.retry_backoff_ms,
            max_backoff_ms: self.write.retry_max_backoff_ms.max(self.write.retry_backoff_ms),
        }
    }
}
