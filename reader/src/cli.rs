//! `sf-read`: the reader and the admin operations on the command line.
//!
//! The binary (`src/bin/sf-read.rs`) only calls [`main`]. Output lines in
//! `--output json` mirror the reference CLI's (same keys, order, spacing
//! and escaping), so scripts written for it keep working.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use sf_manifest::format::bytes_as_text;
use sf_manifest::json::{python_float_repr, write_str};
use sf_manifest::{ErrorKind, StorageOptions};

use crate::admin::{Admin, CleanupOptions, RemovalReason, RollbackTarget};
use crate::duration::parse_duration;
use crate::error::{Error, Result};
use crate::reader::{HealthStatus, Reader};
use crate::settings::{Pin, ReaderSettings, SqliteMode};

const EXIT_CODES: &str = "\
Exit codes:
  0  success (a key that is not found is still a success: found=false)
  1  health: the served snapshot is older than --max-age
  2  error: bad arguments, missing or corrupt objects, storage failures, ...
     (the message on stderr names the object)
  3  conflict: rollback or cleanup found _CURRENT changed by someone else;
     nothing was written, run it again

S3 settings come from the AWS_* environment variables (AWS_ENDPOINT,
AWS_REGION, AWS_ACCESS_KEY_ID, ...) or --storage-option aws_endpoint=...";

/// Online reads and admin of a ShardForge snapshot.
#[derive(Debug, Parser)]
#[command(name = "sf-read", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// URL of the snapshot's `_CURRENT` (or of its prefix): s3://, gs://,
    /// az://, file:// or a local path.
    #[arg(long, env = "SF_CURRENT_URL", global = true)]
    pub current_url: Option<String>,

    /// Read this manifest instead of `_CURRENT`'s (full URL or key under
    /// the prefix); the target of `rollback`.
    #[arg(long = "ref", value_name = "REF", global = true, conflicts_with = "offset")]
    pub manifest_ref: Option<String>,

    /// Read the manifest at this history offset (0 = newest); the target
    /// of `rollback`.
    #[arg(long, value_name = "N", global = true)]
    pub offset: Option<usize>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Json, global = true)]
    pub output: OutputFormat,

    /// How values are printed: utf8 (as text; bytes that are not UTF-8 as
    /// `hex:<hex>`), hex, or base64.
    #[arg(long, value_enum, default_value_t = ValueFormat::Utf8, global = true)]
    pub value_format: ValueFormat,

    /// A storage option (repeatable), e.g. aws_endpoint=http://127.0.0.1:9000.
    #[arg(long = "storage-option", value_name = "KEY=VALUE", global = true)]
    pub storage_options: Vec<String>,

    /// How SQLite shards are read: download (whole file, cached), range
    /// (ranged GETs), or auto (range above 256 MiB).
    #[arg(long, value_enum, default_value_t = ModeArg::Auto, global = true)]
    pub sqlite_mode: ModeArg,

    /// Folder of downloaded shards, shared across runs.
    #[arg(long, env = "SF_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `--output`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One JSON line per command, as the reference CLI prints.
    Json,
    /// One JSON line per item (key, shard, manifest).
    Jsonl,
    /// Aligned columns for people.
    Table,
}

/// `--value-format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValueFormat {
    /// Text; bytes that are not UTF-8 as `hex:<hex>`.
    Utf8,
    /// Lowercase hex.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// `--sqlite-mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Download whole files into the cache.
    Download,
    /// Read pages by ranged GETs.
    Range,
    /// Range for large shards, download otherwise.
    Auto,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Value of one key.
    Get {
        /// The key (an integer for u64be/u32be, text for utf8, text or
        /// `hex:<hex>` for raw).
        #[arg(allow_hyphen_values = true)]
        key: String,
        /// A routing column's value, for snapshots routed by CEL over
        /// columns other than the key (repeatable).
        #[arg(long = "ctx", visible_alias = "routing-context", value_name = "COLUMN=VALUE")]
        ctx: Vec<String>,
    },
    /// Values of many keys (`-` reads keys from stdin, one per line).
    Multiget {
        /// The keys, or `-`.
        #[arg(required = true, allow_hyphen_values = true)]
        keys: Vec<String>,
        /// Routing context for every key (repeatable).
        #[arg(long = "ctx", visible_alias = "routing-context", value_name = "COLUMN=VALUE")]
        ctx: Vec<String>,
    },
    /// The shard a key routes to.
    Route {
        /// The key.
        #[arg(allow_hyphen_values = true)]
        key: String,
        /// Routing context (repeatable).
        #[arg(long = "ctx", visible_alias = "routing-context", value_name = "COLUMN=VALUE")]
        ctx: Vec<String>,
    },
    /// The served snapshot.
    Info,
    /// The snapshot's shards.
    Shards,
    /// The prefix's manifests, newest first.
    History,
    /// Whether the snapshot is younger than --max-age (exit 0 healthy,
    /// 1 stale, 2 error).
    Health {
        /// Oldest healthy snapshot age (by the manifest's created_at), e.g. 26h.
        #[arg(long, default_value = "24h")]
        max_age: String,
    },
    /// Point _CURRENT at an older manifest: --run-id R, or the global --ref
    /// or --offset (compare-and-swap; exit 3 if _CURRENT moved meanwhile).
    Rollback {
        /// The newest manifest of this run.
        #[arg(long)]
        run_id: Option<String>,
    },
    /// Delete losing attempts, and with --keep-last/--older-than old runs;
    /// never what _CURRENT or a kept manifest references.
    Cleanup {
        /// List what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep the newest N manifests and their runs.
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        /// Manifests published longer ago than this are old (e.g. 7d).
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
        /// Also delete data of runs that never published and are not
        /// running (by their run record).
        #[arg(long, visible_alias = "include-old-runs")]
        include_abandoned: bool,
    },
}

/// Parses the process arguments, runs, prints errors, and returns the
/// exit code (see `--help`).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sf-read: error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let stdin = std::io::stdin();
    let result = runtime.block_on(run(cli, &mut stdout.lock(), &mut stdin.lock()));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("sf-read: error: {}", chain(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

fn init_tracing() {
    // Warnings (a damaged cache file, a skipped checksum) go to stderr;
    // RUST_LOG=sf_reader=debug shows more.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,slatedb=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The error and its sources, `: `-separated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

/// The exit code of an error (see `--help`).
pub fn exit_code(e: &Error) -> u8 {
    if e.kind() == ErrorKind::Conflict { 3 } else { 2 }
}

/// Runs one command, writing its output to `out`; returns the exit code
/// for a success (0, or 1 for a stale `health`).
pub async fn run(cli: Cli, out: &mut dyn Write, stdin: &mut dyn BufRead) -> Result<u8> {
    let current_url = cli
        .current_url
        .clone()
        .ok_or_else(|| Error::config("--current-url", "is required (or set SF_CURRENT_URL)"))?;
    let mut options = StorageOptions::new();
    for pair in &cli.storage_options {
        options.insert_pair(pair)?;
    }
    let printer = Printer {
        format: cli.output,
        values: cli.value_format,
    };
    match &cli.command {
        Command::History => {
            let admin = Admin::builder(&current_url).with_storage_options(options).build()?;
            let history = sf_manifest::ManifestStore::history(admin.store()).await?;
            let items: Vec<J> = history
                .iter()
                .map(|h| {
                    obj(vec![
                        ("offset", J::Int(h.offset as i64)),
                        ("run_id", J::str(h.run_id.as_str())),
                        ("published_at", J::str(h.published_at.to_rfc3339_offset())),
                        ("ref", J::str(&h.manifest_ref)),
                    ])
                })
                .collect();
            printer.list(out, "history", "manifests", items)?;
            return Ok(0);
        }
        Command::Rollback { run_id } => {
            let target = match (run_id, &cli.manifest_ref, cli.offset) {
                (Some(r), None, None) => RollbackTarget::RunId(r.parse()?),
                (None, Some(r), None) => RollbackTarget::Ref(r.clone()),
                (None, None, Some(n)) => RollbackTarget::Offset(n),
                _ => {
                    return Err(Error::config(
                        "rollback target",
                        "give exactly one of --run-id, --ref or --offset",
                    ));
                }
            };
            let admin = Admin::builder(&current_url).with_storage_options(options).build()?;
            let r = admin.rollback(&target).await?;
            let line = obj(vec![
                ("op", J::str("rollback")),
                ("changed", J::Bool(r.changed)),
                ("from_run_id", J::opt_str(r.from_run_id.as_ref().map(|r| r.as_str()))),
                ("from_manifest_ref", J::opt_str(r.from_manifest_ref.as_deref())),
                ("run_id", J::str(r.run_id.as_str())),
                ("manifest_ref", J::str(&r.manifest_ref)),
            ]);
            printer.single(out, &line)?;
            return Ok(0);
        }
        Command::Cleanup {
            dry_run,
            keep_last,
            older_than,
            include_abandoned,
        } => {
            let older_than = older_than.as_deref().map(parse_duration).transpose()?;
            let admin = Admin::builder(&current_url).with_storage_options(options).build()?;
            let report = admin
                .cleanup(&CleanupOptions {
                    keep_last: *keep_last,
                    older_than,
                    include_abandoned: *include_abandoned,
                    dry_run: *dry_run,
                })
                .await?;
            let urls = |reason| J::Arr(report.of(reason).map(|r| J::str(&r.url)).collect::<Vec<_>>());
            let line = obj(vec![
                ("op", J::str("cleanup")),
                ("dry_run", J::Bool(report.dry_run)),
                ("run_id", J::str(report.current_run_id.as_str())),
                ("stale_attempts", urls(RemovalReason::StaleAttempt)),
                ("total_objects_deleted", J::Int(report.objects_deleted as i64)),
                ("total_prefixes_removed", J::Int(report.prefixes_removed as i64)),
                ("old_manifests", urls(RemovalReason::OldManifest)),
                ("old_run_attempts", urls(RemovalReason::OldRun)),
                ("abandoned_attempts", urls(RemovalReason::AbandonedRun)),
                ("run_records", urls(RemovalReason::RunRecord)),
                (
                    "unknown_runs",
                    J::Arr(report.unknown_runs.iter().map(|r| J::str(r.as_str())).collect()),
                ),
            ]);
            match cli.output {
                OutputFormat::Json => printer.single(out, &line)?,
                OutputFormat::Jsonl => {
                    for r in &report.removals {
                        writeln!(
                            out,
                            "{}",
                            obj(vec![
                                ("reason", J::str(format!("{:?}", r.reason))),
                                ("run_id", J::str(r.run_id.as_str())),
                                ("url", J::str(&r.url)),
                                ("objects", J::Int(r.objects as i64)),
                                ("bytes", J::Int(r.bytes as i64)),
                                ("dry_run", J::Bool(report.dry_run)),
                            ])
                            .render()
                        )
                        .map_err(output_error)?;
                    }
                }
                OutputFormat::Table => {
                    let rows = report
                        .removals
                        .iter()
                        .map(|r| {
                            vec![
                                format!("{:?}", r.reason),
                                r.run_id.to_string(),
                                r.objects.to_string(),
                                r.url.clone(),
                            ]
                        })
                        .collect();
                    table(out, &["reason", "run_id", "objects", "url"], rows)?;
                    writeln!(
                        out,
                        "{} {} objects in {} folders",
                        if report.dry_run { "would delete" } else { "deleted" },
                        report.objects_deleted,
                        report.prefixes_removed
                    )
                    .map_err(output_error)?;
                }
            }
            return Ok(0);
        }
        _ => {}
    }

    let pin = match (&cli.manifest_ref, cli.offset) {
        (Some(r), _) => Pin::Ref(r.clone()),
        (None, Some(n)) => Pin::Offset(n),
        (None, None) => Pin::Current,
    };
    let settings = ReaderSettings {
        cache_dir: cli.cache_dir.clone(),
        sqlite_mode: match cli.sqlite_mode {
            ModeArg::Download => SqliteMode::Download,
            ModeArg::Range => SqliteMode::Range,
            ModeArg::Auto => SqliteMode::Auto,
        },
        pin,
        ..ReaderSettings::default()
    };
    let reader = Reader::builder(&current_url)
        .with_settings(settings)
        .with_storage_options(options)
        .build()
        .await?;
    let code = match &cli.command {
        Command::Get { key, ctx } => {
            let k = reader.parse_key(key)?;
            let value = if ctx.is_empty() {
                reader.get(&k).await?
            } else {
                let c = reader.parse_context(ctx.iter().map(String::as_str))?;
                reader.get_with_context(&k, &c).await?
            };
            let mut fields = vec![
                ("op", J::str("get")),
                ("key", J::str(key)),
                ("found", J::Bool(value.is_some())),
            ];
            // A miss prints "value": "null" (a string), as the reference does.
            fields.push((
                "value",
                J::str(value.as_ref().map_or_else(|| "null".to_string(), |v| printer.value(v))),
            ));
            printer.single(out, &obj(fields))?;
            0
        }
        Command::Multiget { keys, ctx } => {
            let texts: Vec<String> = if keys.len() == 1 && keys[0] == "-" {
                let mut v = Vec::new();
                for line in stdin.lines() {
                    let line = line.map_err(|e| Error::Io {
                        context: "reading keys",
                        path: "stdin".into(),
                        source: e,
                    })?;
                    let t = line.trim_end_matches('\r');
                    if !t.is_empty() {
                        v.push(t.to_string());
                    }
                }
                v
            } else {
                keys.clone()
            };
            let parsed: Vec<_> = texts.iter().map(|t| reader.parse_key(t)).collect::<Result<_>>()?;
            let values = if ctx.is_empty() {
                reader.multi_get(&parsed).await?
            } else {
                let c = reader.parse_context(ctx.iter().map(String::as_str))?;
                let items: Vec<_> = parsed.into_iter().map(|k| (k, c.clone())).collect();
                reader.multi_get_with_context(&items).await?
            };
            let items: Vec<J> = texts
                .iter()
                .zip(&values)
                .map(|(t, v)| {
                    let mut f = vec![("key", J::str(t)), ("found", J::Bool(v.is_some()))];
                    if let Some(v) = v {
                        f.push(("value", J::str(printer.value(v))));
                    }
                    obj(f)
                })
                .collect();
            printer.list(out, "multiget", "results", items)?;
            0
        }
        Command::Route { key, ctx } => {
            let k = reader.parse_key(key)?;
            let c = if ctx.is_empty() {
                None
            } else {
                Some(reader.parse_context(ctx.iter().map(String::as_str))?)
            };
            let r = reader.route(&k, c.as_ref())?;
            let line = obj(vec![
                ("op", J::str("route")),
                ("key", J::str(key)),
                ("db_id", r.db_id.map_or(J::Null, |d| J::Int(i64::from(d.0)))),
            ]);
            printer.single(out, &line)?;
            0
        }
        Command::Info => {
            let i = reader.info();
            let line = obj(vec![
                ("op", J::str("info")),
                ("run_id", J::str(i.run_id.as_str())),
                ("num_dbs", J::Int(i64::from(i.num_dbs))),
                (
                    "sharding",
                    J::str(match i.sharding {
                        sf_manifest::ShardingStrategy::Hash => "hash",
                        sf_manifest::ShardingStrategy::Cel => "cel",
                    }),
                ),
                ("created_at", J::str(i.created_at.to_rfc3339_offset())),
                ("manifest_ref", J::str(&i.manifest_ref)),
                ("row_count", J::Int(i.row_count as i64)),
                ("key_encoding", J::str(i.key_encoding.as_str())),
                ("hash_algorithm", J::str("xxh3_64")),
            ]);
            printer.single(out, &line)?;
            0
        }
        Command::Shards => {
            let items: Vec<J> = reader
                .shards()
                .iter()
                .map(|s| {
                    let key = |k: &Option<sf_manifest::Key>| match k {
                        Some(k) => J::Raw(sf_manifest::json::to_sorted_string(
                            &k.to_json(),
                            sf_manifest::json::JsonStyle::Python,
                        )),
                        None => J::Null,
                    };
                    obj(vec![
                        ("db_id", J::Int(i64::from(s.db_id.0))),
                        ("row_count", J::Int(s.row_count as i64)),
                        ("min_key", key(&s.min_key)),
                        ("max_key", key(&s.max_key)),
                        ("db_url", J::opt_str(s.db_url.as_deref())),
                    ])
                })
                .collect();
            printer.list(out, "shards", "shards", items)?;
            0
        }
        Command::Health { max_age } => {
            let max_age = parse_duration(max_age)?;
            let h = reader.health(max_age);
            let line = obj(vec![
                ("op", J::str("health")),
                (
                    "status",
                    J::str(match h.status {
                        HealthStatus::Healthy => "healthy",
                        HealthStatus::Stale => "stale",
                    }),
                ),
                ("manifest_ref", J::str(&h.manifest_ref)),
                ("manifest_age_seconds", J::Float(h.snapshot_age_seconds)),
                ("num_shards", J::Int(h.num_shards as i64)),
                ("is_closed", J::Bool(h.is_closed)),
                ("max_age_seconds", J::Float(h.max_age_seconds)),
            ]);
            printer.single(out, &line)?;
            match h.status {
                HealthStatus::Healthy => 0,
                HealthStatus::Stale => 1,
            }
        }
        Command::History | Command::Rollback { .. } | Command::Cleanup { .. } => {
            return Err(Error::Internal("admin commands are handled above".into()));
        }
    };
    reader.close();
    Ok(code)
}

fn output_error(e: std::io::Error) -> Error {
    Error::Io {
        context: "writing output",
        path: "stdout".into(),
        source: e,
    }
}

/// A JSON value with ordered keys, printed the way Python's `json.dumps`
/// does by default (`", "` and `": "`, non-ASCII escaped).
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// Already encoded JSON.
    Raw(String),
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
}

fn obj(fields: Vec<(&'static str, J)>) -> J {
    J::Obj(fields)
}

impl J {
    fn str(s: impl Into<String>) -> J {
        J::Str(s.into())
    }

    fn opt_str(s: Option<&str>) -> J {
        s.map_or(J::Null, J::str)
    }

    fn write(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Int(i) => out.push_str(&i.to_string()),
            J::Float(f) => out.push_str(&python_float_repr(*f)),
            J::Str(s) => write_str(out, s),
            J::Raw(r) => out.push_str(r),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out);
                }
                out.push(']');
            }
            J::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_str(out, k);
                    out.push_str(": ");
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    fn render(&self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s
    }

    /// The value as table text.
    fn cell(&self) -> String {
        match self {
            J::Str(s) => s.clone(),
            J::Null => "-".into(),
            other => other.render(),
        }
    }
}

struct Printer {
    format: OutputFormat,
    values: ValueFormat,
}

impl Printer {
    fn value(&self, v: &Bytes) -> String {
        match self.values {
            ValueFormat::Utf8 => bytes_as_text(v),
            ValueFormat::Hex => hex::encode(v),
            ValueFormat::Base64 => base64(v),
        }
    }

    /// A one-object result.
    fn single(&self, out: &mut dyn Write, line: &J) -> Result<()> {
        match self.format {
            OutputFormat::Json | OutputFormat::Jsonl => writeln!(out, "{}", line.render()),
            OutputFormat::Table => {
                let J::Obj(fields) = line else {
                    return Err(Error::Internal("a result line is an object".into()));
                };
                let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
                fields
                    .iter()
                    .filter(|(k, _)| *k != "op")
                    .try_for_each(|(k, v)| writeln!(out, "{k:<width$}  {}", v.cell()))
            }
        }
        .map_err(output_error)
    }

    /// A result that is a list of objects: one line `{"op": op, key: [...]}`
    /// (json), a line per item (jsonl), or a table.
    fn list(&self, out: &mut dyn Write, op: &'static str, key: &'static str, items: Vec<J>) -> Result<()> {
        match self.format {
            OutputFormat::Json => {
                let line = obj(vec![("op", J::str(op)), (key, J::Arr(items))]);
                writeln!(out, "{}", line.render()).map_err(output_error)
            }
            OutputFormat::Jsonl => items
                .iter()
                .try_for_each(|i| writeln!(out, "{}", i.render()))
                .map_err(output_error),
            OutputFormat::Table => {
                let mut headers: Vec<&'static str> = Vec::new();
                for i in &items {
                    if let J::Obj(fields) = i {
                        for (k, _) in fields {
                            if !headers.contains(k) {
                                headers.push(k);
                            }
                        }
                    }
                }
                let rows = items
                    .iter()
                    .map(|i| {
                        headers
                            .iter()
                            .map(|h| match i {
                                J::Obj(fields) => fields
                                    .iter()
                                    .find(|(k, _)| k == h)
                                    .map_or_else(String::new, |(_, v)| v.cell()),
                                other => other.cell(),
                            })
                            .collect()
                    })
                    .collect();
                table(out, &headers, rows)
            }
        }
    }
}

fn table(out: &mut dyn Write, headers: &[&str], rows: Vec<Vec<String>>) -> Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut text = line(headers.iter().map(|h| h.to_string()).collect());
    text.push('\n');
    for r in rows {
        text.push_str(&line(r));
        text.push('\n');
    }
    out.write_all(text.as_bytes()).map_err(output_error)
}

/// Standard base64 with padding (RFC 4648).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn json_lines_look_like_pythons() {
        let line = obj(vec![
            ("op", J::str("get")),
            ("key", J::str("héllo")),
            ("found", J::Bool(true)),
            ("value", J::str("{\"n\": 7}")),
            ("age", J::Float(0.0)),
            ("db_id", J::Null),
        ]);
        assert_eq!(
            line.render(),
            r#"{"op": "get", "key": "h\u00e9llo", "found": true, "value": "{\"n\": 7}", "age": 0.0, "db_id": null}"#
        );
    }

    #[test]
    fn arguments_parse_before_and_after_the_command() {
        let cli = Cli::try_parse_from([
            "sf-read",
            "--current-url",
            "s3://b/p/_CURRENT",
            "--offset",
            "1",
            "get",
            "-5",
            "--routing-context",
            "region=us",
            "--output",
            "table",
        ])
        .expect("parse");
        assert_eq!(cli.offset, Some(1));
        assert_eq!(cli.output, OutputFormat::Table);
        match cli.command {
            Command::Get { key, ctx } => {
                assert_eq!(key, "-5");
                assert_eq!(ctx, vec!["region=us"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["sf-read", "--ref", "x", "--offset", "1", "info"]).is_err());
    }
}
