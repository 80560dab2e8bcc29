//! The job configuration (`job.toml`), its environment overrides, and its
//! validation ([`JobConfig::validate`]).
//!
//! Every key is documented in docs/configuration.md with its
//! default. Unknown keys are errors. An environment variable
//! `SF_<SECTION>__<KEY>` overrides a key (`SF_ROUTING__NUM_DBS=16`,
//! `SF_OUTPUT__PREFIX=s3://b/p`, `SF_KEY_COL=id`,
//! `SF_OUTPUT__SQLITE__CACHE_MIB=32`); its value is read as TOML when it
//! parses as such (numbers, booleans, arrays) and as a string otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sf_manifest::{CelType, KeyEncoding, RoutingValue, RunId, StorageOptions};

use crate::build::backend::{BackendConfig, DuplicatePolicy, SlateDbSettings, SqliteSettings};
use crate::build::ratelimit::RateLimits;
use crate::error::{Error, Result};

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SF_";

/// The whole `job.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Name of the key column.
    pub key_col: String,
    /// `u64be`, `u32be`, `utf8` or `raw`; default from the key column's type.
    #[serde(default)]
    pub key_encoding: Option<KeyEncoding>,
    /// Name given to the computed shard id column (must not clash with an
    /// input column).
    #[serde(default = "default_shard_id_col")]
    pub shard_id_col: String,
    /// Where rows come from (required for `sf-write`; the warehouse API
    /// passes a DataFrame instead).
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
    /// Running on a Ballista cluster instead of embedded.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Gates a build must pass before it is published.
    #[serde(default)]
    pub validate: crate::publish::gates::ValidateConfig,
    /// Old snapshots and abandoned runs removed after a successful publish.
    #[serde(default)]
    pub retention: Option<RetentionConfig>,
    /// Settings with dotted names, like `sf.catalog.<name>.warehouse =
    /// "<url>"` (warehouse catalogs for `[output] table`).
    #[serde(default)]
    pub sf: toml::Table,
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

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `df://host:port` of the scheduler.
    pub scheduler: Option<String>,
    /// Sessions a driver (`sf_warehouse::Driver`) keeps at most, borrowed
    /// one caller at a time (default 8).
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Session settings applied to every session on the cluster (and to
    /// every session of a driver built from this job).
    #[serde(default)]
    pub session: BTreeMap<String, toml::Value>,
}

impl ClusterConfig {
    /// `[cluster.session]` as `key = value` pairs, values as text (strings,
    /// numbers and booleans; anything else is an error naming the key).
    pub fn session_pairs(&self) -> Result<Vec<(String, String)>> {
        self.session
            .iter()
            .map(|(key, value)| {
                let text = value
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| value.as_integer().map(|i| i.to_string()))
                    .or_else(|| value.as_float().map(|f| f.to_string()))
                    .or_else(|| value.as_bool().map(|b| b.to_string()))
                    .ok_or_else(|| {
                        Error::config(
                            format!("cluster.session.{key:?}"),
                            format!(
                                "is a {}; session settings are strings, numbers or booleans",
                                value.type_str()
                            ),
                        )
                    })?;
                Ok((key.clone(), text))
            })
            .collect()
    }
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
    /// A warehouse table (`table = "catalog.db.table"`), read through
    /// `sf-warehouse`, which owns catalogs.
    Table,
}

/// `[input]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// `parquet`, `csv`, `json`, `sql` or `table`.
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
    /// The warehouse table read, for `format = "table"`
    /// (`[catalog.][db.]table`; catalogs from `[sf.catalog.NAME]`).
    #[serde(default)]
    pub table: Option<String>,
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
    /// Snapshot prefix URL (or local path); or give `table`.
    #[serde(default)]
    pub prefix: String,
    /// A warehouse table (`[catalog.][db.]table`) to write instead of a
    /// prefix; its catalog comes from `sf.catalog.<name>.warehouse`.
    #[serde(default)]
    pub table: Option<String>,
    /// When the table exists: `error`, `overwrite`, `append` or `ignore`.
    #[serde(default)]
    pub mode: SaveMode,
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

/// What saving a warehouse table does when the table exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveMode {
    /// Fail, writing nothing.
    #[default]
    Error,
    /// Replace its rows with a new run (compare-and-swap on `_CURRENT`).
    Overwrite,
    /// A new run holding the old rows and the new ones; a key in both
    /// keeps the new row (`on_duplicate = "error"` fails instead).
    Append,
    /// Do nothing.
    Ignore,
}

impl std::str::FromStr for SaveMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "error" | "errorifexists" => Ok(SaveMode::Error),
            "overwrite" => Ok(SaveMode::Overwrite),
            "append" => Ok(SaveMode::Append),
            "ignore" => Ok(SaveMode::Ignore),
            _ => Err(Error::config(
                "mode",
                format!("{s:?}; expected error, overwrite, append or ignore"),
            )),
        }
    }
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

/// Loads a job file, applies `SF_...` overrides from `env`, resolves paths
/// relative to the file, and validates what can be validated without
/// reading the input.
pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<JobConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(path.display().to_string(), format!("cannot read: {e}")))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &path.display().to_string(), &base, env)
}

/// [`load`] from text; `origin` names the text in errors, `base` is the
/// folder relative paths start from.
pub fn parse(
    text: &str,
    origin: &str,
    base: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<JobConfig> {
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| Error::config(origin, e.to_string().trim_end().to_string()))?;
    let mut overrides: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    overrides.sort();
    for (var, value) in &overrides {
        apply_override(&mut doc, var, value)?;
    }
    let mut config: JobConfig = if overrides.is_empty() {
        // Straight from the text, so errors point at a line and column.
        toml::from_str(text)
            .map_err(|e: toml::de::Error| Error::config(origin, e.to_string().trim_end().to_string()))?
    } else {
        toml::Value::Table(doc).try_into().map_err(|e: toml::de::Error| {
            let names: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
            Error::config(
                origin,
                format!(
                    "{} (with overrides from {})",
                    e.to_string().trim_end(),
                    names.join(", ")
                ),
            )
        })?
    };
    config.resolve_paths(base);
    config.validate()?;
    Ok(config)
}

fn apply_override(doc: &mut toml::Table, var: &str, value: &str) -> Result<()> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(Error::config(var, "is not SF_<SECTION>__<KEY> (empty part)"));
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut table = doc;
    for part in &path[..path.len() - 1] {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| Error::config(var, format!("{part} is a value, not a section")))?;
    }
    table.insert(path[path.len() - 1].clone(), parsed);
    Ok(())
}

/// The `[sf]` table of a TOML document as dotted `sf.a.b = "v"` pairs,
/// values as strings (`[sf.catalog.NAME] warehouse = "<url>"` becomes
/// `sf.catalog.NAME.warehouse`).
pub fn sf_settings(sf: &toml::Table) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    flatten("sf", sf, &mut pairs)?;
    Ok(pairs)
}

/// `a.b.c = "v"` pairs of a TOML table, values as strings.
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) -> Result<()> {
    for (k, v) in table {
        let key = format!("{prefix}.{k}");
        match v {
            toml::Value::Table(t) => flatten(&key, t, out)?,
            toml::Value::String(s) => out.push((key, s.clone())),
            toml::Value::Integer(i) => out.push((key, i.to_string())),
            toml::Value::Boolean(b) => out.push((key, b.to_string())),
            toml::Value::Float(f) => out.push((key, f.to_string())),
            other => return Err(Error::config(key, format!("{other} is not a plain value"))),
        }
    }
    Ok(())
}

fn validate_input(i: &InputConfig) -> Result<()> {
    if i.format != InputFormat::Table && i.table.is_some() {
        return Err(Error::config("input.table", "is for format = \"table\""));
    }
    match i.format {
        InputFormat::Sql => {
            if i.sql.as_deref().is_none_or(|s| s.trim().is_empty()) {
                return Err(Error::config(
                    "input.sql",
                    "format = \"sql\" needs a query in input.sql",
                ));
            }
            if i.tables.is_empty() {
                return Err(Error::config(
                    "input.tables",
                    "format = \"sql\" needs at least one [input.tables.NAME] for the query to read",
                ));
            }
            if i.path.is_some() {
                return Err(Error::config(
                    "input.path",
                    "format = \"sql\" reads [input.tables.*]; give their paths there",
                ));
            }
            for (name, t) in &i.tables {
                if matches!(t.format, InputFormat::Sql | InputFormat::Table) {
                    return Err(Error::config(
                        format!("input.tables.{name}.format"),
                        "must be parquet, csv or json",
                    ));
                }
                if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(Error::config(
                        format!("input.tables.{name}"),
                        "table names are letters, digits and underscores",
                    ));
                }
            }
        }
        InputFormat::Table => {
            if i.table.as_deref().is_none_or(|t| t.trim().is_empty()) {
                return Err(Error::config(
                    "input.table",
                    "format = \"table\" needs the warehouse table to read (table = \"catalog.db.table\")",
                ));
            }
            if i.path.is_some() || i.sql.is_some() || !i.tables.is_empty() {
                return Err(Error::config(
                    "input.table",
                    "format = \"table\" reads the table alone; path, sql and [input.tables] do not apply",
                ));
            }
        }
        _ => {
            if i.path.as_deref().is_none_or(|s| s.trim().is_empty()) {
                return Err(Error::config("input.path", "needs a file, folder or glob to read"));
            }
            if i.sql.is_some() || !i.tables.is_empty() {
                return Err(Error::config(
                    "input.sql",
                    "input.sql and input.tables need format = \"sql\"",
                ));
            }
        }
    }
    for (key, csv) in std::iter::once(("input.csv".to_string(), &i.csv))
        .chain(i.tables.iter().map(|(n, t)| (format!("input.tables.{n}.csv"), &t.csv)))
    {
        if !csv.delimiter.is_ascii() {
            return Err(Error::config(format!("{key}.delimiter"), "must be one ASCII character"));
        }
    }
    Ok(())
}

fn resolve_local(base: &Path, p: &str) -> String {
    if p.contains("://") || Path::new(p).is_absolute() {
        p.to_string()
    } else {
        base.join(p).to_string_lossy().into_owned()
    }
}

impl JobConfig {
    fn resolve_paths(&mut self, base: &Path) {
        if let Some(input) = &mut self.input {
            if let Some(p) = &input.path {
                input.path = Some(resolve_local(base, p));
            }
            for t in input.tables.values_mut() {
                t.path = resolve_local(base, &t.path);
            }
        }
        if !self.output.prefix.trim().is_empty() {
            self.output.prefix = resolve_local(base, &self.output.prefix);
        }
        if let Some(w) = &self.write.work_dir {
            self.write.work_dir = Some(PathBuf::from(resolve_local(base, &w.to_string_lossy())));
        }
        if let Some(c) = &mut self.validate.canary {
            c.path = PathBuf::from(resolve_local(base, &c.path.to_string_lossy()));
        }
        // Catalog warehouses given as local paths are relative to the job
        // file too.
        if let Some(toml::Value::Table(catalogs)) = self.sf.get_mut("catalog") {
            for (_, catalog) in catalogs.iter_mut() {
                if let toml::Value::Table(c) = catalog
                    && let Some(toml::Value::String(w)) = c.get_mut("warehouse")
                {
                    *w = resolve_local(base, w);
                }
            }
        }
    }

    /// Checks everything that does not need the input's schema.
    pub fn validate(&self) -> Result<()> {
        let i = self
            .input
            .as_ref()
            .ok_or_else(|| Error::config("input", "the job has no [input] section saying what to read"))?;
        validate_input(i)?;
        self.validate_settings()
    }

    /// [`validate`](Self::validate) without the input (for callers that
    /// hand in a DataFrame).
    pub fn validate_settings(&self) -> Result<()> {
        if self.key_col.trim().is_empty() {
            return Err(Error::config("key_col", "must name the key column"));
        }
        self.validate.validate()?;
        if let Some(r) = &self.retention {
            if r.keep_last == Some(0) {
                return Err(Error::config(
                    "retention.keep_last",
                    "must be at least 1 (the snapshot just published is always kept)",
                ));
            }
            if r.keep_last.is_none() && r.older_than.is_none() {
                return Err(Error::config("retention", "give keep_last, older_than or both"));
            }
        }
        if self.write.run_lease_secs < 3 {
            return Err(Error::config(
                "write.run_lease_secs",
                "must be at least 3 (the lease is renewed every third of it)",
            ));
        }
        if self.shard_id_col.trim().is_empty() {
            return Err(Error::config("shard_id_col", "must not be empty"));
        }
        if self.shard_id_col == self.key_col {
            return Err(Error::config("shard_id_col", "must differ from key_col"));
        }
        if self.value.binary_col.is_some() && self.value.json_cols.is_some() {
            return Err(Error::config("value", "set binary_col or json_cols, not both"));
        }
        if self.value.json_cols.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::config(
                "value.json_cols",
                "must name at least one column (omit it for all columns)",
            ));
        }
        let r = &self.routing;
        if r.num_dbs == Some(0) {
            return Err(Error::config("routing.num_dbs", "must be at least 1"));
        }
        match r.strategy {
            Strategy::Hash => {
                if r.num_dbs.is_some() == r.max_keys_per_shard.is_some() {
                    return Err(Error::config(
                        "routing",
                        "hash routing needs exactly one of num_dbs or max_keys_per_shard",
                    ));
                }
                if r.max_keys_per_shard == Some(0) {
                    return Err(Error::config("routing.max_keys_per_shard", "must be at least 1"));
                }
                if r.expr.is_some() || !r.columns.is_empty() || r.routing_values.is_some() || r.mode.is_some() {
                    return Err(Error::config(
                        "routing",
                        "expr, columns, routing_values and mode are for strategy = \"cel\"",
                    ));
                }
            }
            Strategy::Cel => {
                if r.expr.as_deref().is_none_or(|e| e.trim().is_empty()) {
                    return Err(Error::config("routing.expr", "strategy = \"cel\" needs an expression"));
                }
                if r.columns.is_empty() {
                    return Err(Error::config(
                        "routing.columns",
                        "strategy = \"cel\" needs the columns the expression reads, with types (e.g. columns = { region = \"string\" })",
                    ));
                }
                if r.max_keys_per_shard.is_some() {
                    return Err(Error::config("routing.max_keys_per_shard", "is for hash routing"));
                }
                // Readers (ours and the reference's) bind only the name
                // `key` to the key they are asked for; a snapshot whose
                // expression reads the key column by its own name could
                // only be read with the key passed again as context.
                if self.key_col != sf_router::KEY_VARIABLE && r.columns.contains_key(&self.key_col) {
                    return Err(Error::config(
                        format!("routing.columns.{}", self.key_col),
                        format!(
                            "{:?} is the key column: name it \"key\" in columns and in the expression \
                             (columns = {{ key = \"{}\" }}), so readers can route from the key alone",
                            self.key_col, r.columns[&self.key_col]
                        ),
                    ));
                }
                if let Some(values) = &r.routing_values {
                    sf_manifest::format::sharding::validate_routing_values(values)
                        .map_err(|e| Error::config("routing.routing_values", e.to_string()))?;
                    if r.mode == Some(CelMode::Direct) {
                        return Err(Error::config(
                            "routing.routing_values",
                            "mode = \"direct\" takes no routing_values",
                        ));
                    }
                    if let Some(n) = r.num_dbs
                        && n as usize != values.len()
                    {
                        return Err(Error::config(
                            "routing.num_dbs",
                            format!(
                                "is {n} but routing_values has {} values (one shard per value)",
                                values.len()
                            ),
                        ));
                    }
                }
            }
        }
        if r.verify_routing && r.verify_sample_size == 0 {
            return Err(Error::config(
                "routing.verify_sample_size",
                "must be at least 1 when verify_routing is on",
            ));
        }
        if let Some(id) = &self.output.run_id {
            RunId::new(id.clone()).map_err(|e| Error::config("output.run_id", e.to_string()))?;
        }
        match (&self.output.table, self.output.prefix.trim().is_empty()) {
            (Some(_), false) => {
                return Err(Error::config("output", "give prefix or table, not both"));
            }
            (None, true) => {
                return Err(Error::config(
                    "output.prefix",
                    "needs the snapshot's prefix URL (or output.table)",
                ));
            }
            // The table's name and catalog are checked by the warehouse,
            // which owns catalogs, before anything is read or written.
            (Some(_), true) => {}
            (None, false) => {
                sf_manifest::resolve(&self.output.prefix, &self.storage_options())
                    .map_err(|e| Error::config("output.prefix", e.to_string()))?;
            }
        }
        match self.output.backend {
            Backend::Sqlite => self.output.sqlite.validate()?,
            Backend::Slatedb => {
                self.output.slatedb.validate()?;
                if !self.write.sort_within_shard {
                    return Err(Error::config(
                        "write.sort_within_shard",
                        "the slatedb backend writes keys in order; sort_within_shard = false is for sqlite only",
                    ));
                }
            }
        }
        let w = &self.write;
        if w.batch_size == 0 {
            return Err(Error::config("write.batch_size", "must be at least 1"));
        }
        for (key, v) in [
            ("write.max_writes_per_second", w.max_writes_per_second),
            ("write.max_write_bytes_per_second", w.max_write_bytes_per_second),
        ] {
            if let Some(v) = v
                && !(v > 0.0 && v.is_finite())
            {
                return Err(Error::config(
                    key,
                    format!("{v} is not a positive rate; omit it for no limit"),
                ));
            }
        }
        if w.memory_limit_mib < 16 {
            return Err(Error::config("write.memory_limit_mib", "must be at least 16"));
        }
        if w.upload_concurrency == 0 {
            return Err(Error::config("write.upload_concurrency", "must be at least 1"));
        }
        if self.cluster.as_ref().and_then(|c| c.pool_size) == Some(0) {
            return Err(Error::config("cluster.pool_size", "must be at least 1"));
        }
        Ok(())
    }

    /// The job's `[sf]` settings as dotted pairs (see [`sf_settings`]).
    pub fn sf_settings(&self) -> Result<Vec<(String, String)>> {
        sf_settings(&self.sf)
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use sf_manifest::Classified;

    const MINIMAL: &str = r#"
key_col = "id"
[input]
format = "parquet"
path = "data/users.parquet"
[routing]
num_dbs = 8
[output]
prefix = "out/snap"
"#;

    fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<JobConfig> {
        parse(
            text,
            "job.toml",
            Path::new("/jobs"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn minimal_job_gets_documented_defaults() {
        let c = parse_env(MINIMAL, &[]).expect("parse");
        assert_eq!(c.shard_id_col, "_shard_id");
        assert_eq!(
            c.input.as_ref().and_then(|i| i.path.as_deref()),
            Some("/jobs/data/users.parquet")
        );
        assert_eq!(c.output.prefix, "/jobs/out/snap");
        assert_eq!(c.output.backend, Backend::Sqlite);
        assert!(c.routing.verify_routing);
        assert_eq!(c.routing.verify_sample_size, 10_000);
        assert_eq!(c.write.batch_size, 8192);
        assert!(c.write.sort_within_shard);
        assert_eq!(c.write.on_duplicate, DuplicatePolicy::LastWins);
        assert_eq!(c.write.shard_retries, 3);
        assert_eq!(c.output.sqlite, SqliteSettings::default());
    }

    #[test]
    fn cel_over_the_key_column_must_call_it_key() {
        let cel = |columns: &str, expr: &str| {
            MINIMAL.replace(
                "[routing]\nnum_dbs = 8",
                &format!("[routing]\nstrategy = \"cel\"\nnum_dbs = 8\nexpr = \"{expr}\"\ncolumns = {columns}"),
            )
        };
        let e = parse_env(&cel("{ id = \"int\" }", "id % 8"), &[]).expect_err("key column by its name");
        let m = e.to_string();
        assert!(m.starts_with("routing.columns.id:"), "{m}");
        assert!(m.contains("name it \"key\"") && m.contains("key = \"int\""), "{m}");
        assert_eq!(e.kind(), sf_manifest::ErrorKind::Config);
        parse_env(&cel("{ key = \"int\" }", "key % 8"), &[]).expect("the key by its routing name");
        parse_env(&cel("{ region = \"string\" }", "region"), &[]).expect("another column");
    }

    #[test]
    fn catalog_warehouses_resolve_against_the_job_file() {
        let c = parse_env(
            &format!(
                "{}\n[sf.catalog.wh]\nwarehouse = \"lake\"\n[sf.catalog.s3]\nwarehouse = \"s3://b/w\"\n",
                MINIMAL.replace("prefix = \"out/snap\"", "table = \"wh.db.t\"")
            ),
            &[],
        )
        .expect("parse");
        let pairs = c.sf_settings().expect("settings");
        assert!(
            pairs.contains(&("sf.catalog.wh.warehouse".into(), "/jobs/lake".into())),
            "{pairs:?}"
        );
        assert!(
            pairs.contains(&("sf.catalog.s3.warehouse".into(), "s3://b/w".into())),
            "{pairs:?}"
        );
    }

    #[test]
    fn any_shard_count_fits_any_memory_limit() {
        assert!(default_memory_limit_mib() >= 1024);
        // Sort memory is shared on demand, not set aside per shard: 100,000
        // sorting shards are as welcome in 16 MiB as 8 are.
        let c = parse_env(
            MINIMAL,
            &[("SF_WRITE__MEMORY_LIMIT_MIB", "16"), ("SF_ROUTING__NUM_DBS", "100000")],
        )
        .expect("any shard count");
        assert_eq!((c.write.memory_limit_mib, c.routing.num_dbs), (16, Some(100_000)));
        let e = parse_env(MINIMAL, &[("SF_WRITE__MEMORY_LIMIT_MIB", "15")]).expect_err("too small");
        let m = e.to_string();
        assert!(m.contains("write.memory_limit_mib") && m.contains("at least 16"), "{m}");
    }

    #[test]
    fn unknown_keys_are_errors_with_their_place() {
        let e = parse_env(&format!("{MINIMAL}\n[write]\nbatchsize = 3\n"), &[]).expect_err("unknown");
        let m = e.to_string();
        assert!(m.contains("job.toml") && m.contains("batchsize"), "{m}");
        assert!(m.contains("line"), "mentions where: {m}");
        let e = parse_env(MINIMAL, &[("SF_ROUTING__NUMDBS", "4")]).expect_err("unknown override");
        assert!(e.to_string().contains("SF_ROUTING__NUMDBS"), "{e}");
    }

    #[test]
    fn environment_overrides_keys() {
        let c = parse_env(
            MINIMAL,
            &[
                ("SF_ROUTING__NUM_DBS", "16"),
                ("SF_OUTPUT__PREFIX", "s3://bucket/other"),
                ("SF_WRITE__SORT_WITHIN_SHARD", "false"),
                ("SF_OUTPUT__SQLITE__CACHE_MIB", "32"),
                ("SF_KEY_COL", "user_id"),
                ("OTHER", "ignored"),
            ],
        )
        .expect("parse");
        assert_eq!(c.routing.num_dbs, Some(16));
        assert_eq!(c.output.prefix, "s3://bucket/other");
        assert!(!c.write.sort_within_shard);
        assert_eq!(c.output.sqlite.cache_mib, 32);
        assert_eq!(c.key_col, "user_id");
    }

    #[test]
    fn contradictions_are_config_errors() {
        let cases = [
            ("[value]\nbinary_col = \"a\"\njson_cols = [\"b\"]\n", "not both"),
            ("[write]\nbatch_size = 0\n", "write.batch_size"),
            ("[write]\nmax_writes_per_second = -1.0\n", "positive rate"),
            ("shard_id_col = \"id\"\n", "must differ"),
        ];
        for (extra, want) in cases {
            let text = if extra.starts_with('[') {
                format!("{MINIMAL}\n{extra}")
            } else {
                format!("{extra}{MINIMAL}")
            };
            let e = parse_env(&text, &[]).expect_err(want);
            assert!(e.to_string().contains(want), "{want}: {e}");
            assert_eq!(e.kind(), sf_manifest::ErrorKind::Config);
        }
        let both = MINIMAL.replace("num_dbs = 8", "num_dbs = 8\nmax_keys_per_shard = 10");
        assert!(
            parse_env(&both, &[])
                .expect_err("both")
                .to_string()
                .contains("exactly one")
        );
        let cel = MINIMAL.replace("num_dbs = 8", "strategy = \"cel\"\nexpr = \"region\"");
        assert!(
            parse_env(&cel, &[])
                .expect_err("cel columns")
                .to_string()
                .contains("routing.columns")
        );
        let slate = format!("{MINIMAL}\n[write]\nsort_within_shard = false\n")
            .replace("[output]", "[output]\nbackend = \"slatedb\"");
        assert!(
            parse_env(&slate, &[])
                .expect_err("slatedb unsorted")
                .to_string()
                .contains("slatedb")
        );
        let sql = MINIMAL.replace("format = \"parquet\"", "format = \"sql\"");
        assert!(parse_env(&sql, &[]).expect_err("sql").to_string().contains("input.sql"));
        let bad_run = MINIMAL.replace("[output]", "[output]\nrun_id = \"a/b\"");
        assert!(
            parse_env(&bad_run, &[])
                .expect_err("run id")
                .to_string()
                .contains("output.run_id")
        );
    }

    #[test]
    fn a_table_input_names_its_table_alone() {
        let table = MINIMAL.replace(
            "format = \"parquet\"\npath = \"data/users.parquet\"",
            "format = \"table\"\ntable = \"wh.db.users\"",
        );
        let c = parse_env(&format!("{table}\n[cluster]\npool_size = 3\n"), &[]).expect("table input");
        let input = c.input.as_ref().expect("input");
        assert_eq!(input.format, InputFormat::Table);
        assert_eq!(input.table.as_deref(), Some("wh.db.users"));
        assert_eq!(input.path, None);
        assert_eq!(c.cluster.as_ref().and_then(|c| c.pool_size), Some(3));

        let cases = [
            (MINIMAL.replace("path = \"data/users.parquet\"", ""), "input.path"),
            (table.replace("table = \"wh.db.users\"", ""), "input.table"),
            (
                table.replace(
                    "table = \"wh.db.users\"",
                    "table = \"wh.db.users\"\npath = \"x.parquet\"",
                ),
                "path, sql and [input.tables] do not apply",
            ),
            (
                MINIMAL.replace(
                    "path = \"data/users.parquet\"",
                    "path = \"a.parquet\"\ntable = \"wh.db.t\"",
                ),
                "input.table: is for format = \"table\"",
            ),
            (format!("{table}\n[cluster]\npool_size = 0\n"), "cluster.pool_size"),
        ];
        for (text, want) in cases {
            let e = parse_env(&text, &[]).expect_err(want);
            assert!(e.to_string().contains(want), "{want}: {e}");
            assert_eq!(e.kind(), sf_manifest::ErrorKind::Config);
        }
    }

    #[test]
    fn retry_backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            retries: 5,
            backoff_ms: 100,
            max_backoff_ms: 350,
        };
        let waits: Vec<u64> = (1..=4).map(|n| p.backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, vec![100, 200, 350, 350]);
    }
}
