//! `sf-read`: the reader and the admin operations on the command line.
//!
//! One function per command; [`run`] parses nothing and prints only to the
//! writer it is given, so tests drive it without a process. Output lines in
//! `--output json` mirror the reference CLI's (same keys, order, spacing
//! and escaping), so scripts written for it keep working.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sf_manifest::StorageOptions;
use sf_reader::duration::parse_duration;
use sf_reader::{
    Admin, CleanupOptions, HealthStatus, Pin, Reader, ReaderSettings, RemovalReason, RollbackTarget, SqliteMode,
};

use crate::exit::{self, EXIT_CODES, Failure};
use crate::output::{Json, OutputFormat, Printer, ValueFormat, obj, output_error};

const AFTER_HELP: &str = "\
A key that is not found is still a success (found=false). `health` has its
own codes: 0 healthy, 1 stale (older than --max-age), 2 error.

S3 settings come from the AWS_* environment variables (AWS_ENDPOINT,
AWS_REGION, AWS_ACCESS_KEY_ID, ...) or --storage-option aws_endpoint=...";

/// Online reads and admin of a ShardForge snapshot.
#[derive(Debug, Parser)]
#[command(name = "sf-read", version, about, after_help = after_help())]
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
    /// (ranged GETs), auto (range above 256 MiB), or memory (downloaded,
    /// then held in memory, up to 1 GiB in all).
    #[arg(long, value_enum, default_value_t = ModeArg::Auto, global = true)]
    pub sqlite_mode: ModeArg,

    /// Folder of downloaded shards, shared across runs. Default:
    /// `<temp dir>/shardforge-cache-<uid>`, private to the user.
    #[arg(long, env = "SF_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,

    /// Bytes the shard cache folder may hold: after a download, cached
    /// files no open snapshot needs go, least recently used first.
    #[arg(long, value_name = "BYTES", global = true)]
    pub cache_max_bytes: Option<u64>,

    /// Keys read per second at most (token bucket holding one second's
    /// worth; a multiget counts its keys). Above zero. Default: no limit.
    #[arg(long, value_name = "N", allow_negative_numbers = true, global = true)]
    pub max_keys_per_second: Option<f64>,

    /// Bytes of values read per second at most, charged as each read ends.
    /// Above zero. Default: no limit.
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true, global = true)]
    pub max_bytes_per_second: Option<f64>,

    /// The longest a read waits for those limits (e.g. `500ms`, `2s`); a
    /// read that would wait longer fails at once (rate limited, exit 5).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s", global = true)]
    pub rate_limit_max_wait: std::time::Duration,

    /// The command.
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub common: crate::run::CommonArgs,
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
    /// Download, then hold each shard in memory.
    Memory,
}

impl From<ModeArg> for SqliteMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Download => SqliteMode::Download,
            ModeArg::Range => SqliteMode::Range,
            ModeArg::Auto => SqliteMode::Auto,
            ModeArg::Memory => SqliteMode::Memory,
        }
    }
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
    /// Values of many keys (`-` reads keys from stdin, one per line; a
    /// blank line is the empty key).
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
    /// The vectors nearest a query, in a snapshot that holds vectors
    /// (nearest first, with their ids, distances, payloads and shards).
    Search {
        /// The query as a JSON array of numbers (`[0.1, -2, 3.5]`), or
        /// `-` to read queries from stdin, one array a line (one result
        /// line each).
        #[arg(long, value_name = "JSON", allow_hyphen_values = true)]
        vector: String,
        /// Results per query (1 to 10000).
        #[arg(long, default_value_t = 10, value_name = "K")]
        top_k: usize,
        /// Shards to probe in a vector-only snapshot (default: the
        /// manifest's num_probes).
        #[arg(long, value_name = "N")]
        num_probes: Option<u32>,
        /// Search only this shard (repeatable).
        #[arg(long = "shard", value_name = "DB_ID")]
        shards: Vec<u32>,
        /// Routing context naming the one shard of a CEL snapshot
        /// (repeatable): a unified one routed by CEL, or a vector-only
        /// `cel` one (whose searches need it, or --shard).
        #[arg(long = "ctx", visible_alias = "routing-context", value_name = "COLUMN=VALUE")]
        ctx: Vec<String>,
        /// Keep only hits whose payload passes this CEL predicate (payload
        /// fields are its variables: 'category == "a" && price < 10'),
        /// checked before the top-k cut; a missing field does not match.
        #[arg(long, value_name = "CEL")]
        filter: Option<String>,
        /// Also run the exact search (every shard of the snapshot, no
        /// routing) and print, after each query's results, a `recall` line
        /// (the share of the exact top-k the routed search found), and at
        /// the end the mean over the queries: numbers to choose
        /// --num-probes with.
        #[arg(long)]
        exact: bool,
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
    /// or --offset (compare-and-swap; exit 4 if _CURRENT moved meanwhile).
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

fn after_help() -> String {
    format!("{EXIT_CODES}\n\n{AFTER_HELP}")
}

/// `sf-read health`'s code for a snapshot older than `--max-age`.
pub const HEALTH_STALE: u8 = 1;
/// `sf-read health`'s code for any error.
pub const HEALTH_ERROR: u8 = 2;

/// Parses the process arguments, runs, prints errors, and returns the
/// exit code (see `--help`).
pub fn main() -> ExitCode {
    let cli: Cli = crate::run::parse();
    // Warnings (a damaged cache file, a skipped checksum) go to stderr;
    // RUST_LOG=sf_reader=debug shows more.
    crate::run::init_logging(None, "warn,slatedb=error", cli.common.log_format);
    let health = matches!(cli.command, Command::Health { .. });
    let outcome = crate::run::run_cli("sf-read", async move {
        let stdout = std::io::stdout();
        let stdin = std::io::stdin();
        run(cli, &mut stdout.lock(), &mut stdin.lock()).await
    });
    match outcome {
        // `health` keeps its own table: anything that is not an answer is 2.
        Err(_) if health => ExitCode::from(HEALTH_ERROR),
        other => crate::run::exit_code(other),
    }
}

/// Runs one command, writing its output to `out`; returns the exit code
/// for a success (0, or [`HEALTH_STALE`] for a stale `health`).
pub async fn run(cli: Cli, out: &mut dyn Write, stdin: &mut dyn BufRead) -> Result<u8, Failure> {
    let current_url = cli
        .current_url
        .clone()
        .ok_or_else(|| Failure::usage("--current-url", "is required (or set SF_CURRENT_URL)"))?;
    let mut options = StorageOptions::new();
    for pair in &cli.storage_options {
        options.insert_pair(pair)?;
    }
    let printer = Printer {
        format: cli.output,
        values: cli.value_format,
    };
    let admin = || {
        Admin::builder(&current_url)
            .with_storage_options(options.clone())
            .build()
    };
    match &cli.command {
        Command::History => return history(&admin()?, &printer, out).await,
        Command::Rollback { run_id } => return rollback(&admin()?, &cli, run_id.as_deref(), &printer, out).await,
        Command::Cleanup {
            dry_run,
            keep_last,
            older_than,
            include_abandoned,
        } => {
            let options = CleanupOptions {
                keep_last: *keep_last,
                older_than: older_than.as_deref().map(parse_duration).transpose()?,
                include_abandoned: *include_abandoned,
                dry_run: *dry_run,
            };
            return cleanup(&admin()?, &options, &printer, out).await;
        }
        _ => {}
    }
    let reader = open_reader(&cli, &current_url, options).await?;
    let code = match &cli.command {
        Command::Get { key, ctx } => get(&reader, key, ctx, &printer, out).await,
        Command::Multiget { keys, ctx } => multiget(&reader, keys, ctx, stdin, &printer, out).await,
        Command::Route { key, ctx } => route(&reader, key, ctx, &printer, out),
        Command::Search {
            vector,
            top_k,
            num_probes,
            shards,
            ctx,
            filter,
            exact,
        } => {
            let options = sf_reader::SearchOptions {
                top_k: *top_k,
                num_probes: *num_probes,
                shard_ids: (!shards.is_empty()).then(|| shards.iter().map(|d| sf_manifest::DbId(*d)).collect()),
                routing_context: if ctx.is_empty() {
                    None
                } else {
                    Some(reader.parse_context(ctx.iter().map(String::as_str))?)
                },
                filter: filter.clone(),
            };
            search(&reader, vector, &options, *exact, stdin, &printer, out).await
        }
        Command::Info => info(&reader, &printer, out),
        Command::Shards => shards(&reader, &printer, out),
        Command::Health { max_age } => health(&reader, max_age, &printer, out),
        Command::History | Command::Rollback { .. } | Command::Cleanup { .. } => Err(Failure::new(
            sf_manifest::ErrorKind::Internal,
            "admin commands are handled above",
        )),
    };
    reader.close();
    code
}

/// The reader the read commands share: pinned by `--ref`/`--offset`.
async fn open_reader(cli: &Cli, current_url: &str, options: StorageOptions) -> Result<Reader, Failure> {
    let pin = match (&cli.manifest_ref, cli.offset) {
        (Some(r), _) => Pin::Ref(r.clone()),
        (None, Some(n)) => Pin::Offset(n),
        (None, None) => Pin::Current,
    };
    let settings = ReaderSettings {
        cache_dir: cli.cache_dir.clone(),
        cache_max_bytes: cli.cache_max_bytes,
        sqlite_mode: cli.sqlite_mode.into(),
        pin,
        // One read, asked for now: a broken current manifest is the answer
        // (exit 3), not an older run.
        history_fallback: false,
        max_keys_per_second: cli.max_keys_per_second,
        max_bytes_per_second: cli.max_bytes_per_second,
        rate_limit_max_wait: cli.rate_limit_max_wait,
        ..ReaderSettings::default()
    };
    Ok(Reader::builder(current_url)
        .with_settings(settings)
        .with_storage_options(options)
        .build()
        .await?)
}

async fn history(admin: &Admin, printer: &Printer, out: &mut dyn Write) -> Result<u8, Failure> {
    let history = sf_manifest::ManifestStore::history(admin.store()).await?;
    let items: Vec<Json> = history
        .iter()
        .map(|h| {
            obj(vec![
                ("offset", Json::count(h.offset as u64)),
                ("run_id", Json::str(h.run_id.as_str())),
                ("published_at", Json::str(h.published_at.to_rfc3339_offset())),
                ("ref", Json::str(&h.manifest_ref)),
            ])
        })
        .collect();
    printer.list(out, "history", "manifests", items)?;
    Ok(exit::OK)
}

async fn rollback(
    admin: &Admin,
    cli: &Cli,
    run_id: Option<&str>,
    printer: &Printer,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let target = match (run_id, &cli.manifest_ref, cli.offset) {
        (Some(r), None, None) => RollbackTarget::RunId(r.parse()?),
        (None, Some(r), None) => RollbackTarget::Ref(r.clone()),
        (None, None, Some(n)) => RollbackTarget::Offset(n),
        _ => {
            return Err(Failure::usage(
                "rollback target",
                "give exactly one of --run-id, --ref or --offset",
            ));
        }
    };
    let r = admin.rollback(&target).await?;
    let line = obj(vec![
        ("op", Json::str("rollback")),
        ("changed", Json::Bool(r.changed)),
        ("from_run_id", Json::opt_str(r.from_run_id.as_ref().map(|r| r.as_str()))),
        ("from_manifest_ref", Json::opt_str(r.from_manifest_ref.as_deref())),
        ("run_id", Json::str(r.run_id.as_str())),
        ("manifest_ref", Json::str(&r.manifest_ref)),
    ]);
    printer.single(out, &line)?;
    Ok(exit::OK)
}

async fn cleanup(
    admin: &Admin,
    options: &CleanupOptions,
    printer: &Printer,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let report = admin.cleanup(options).await?;
    match printer.format {
        OutputFormat::Json => {
            let urls = |reason| Json::Arr(report.of(reason).map(|r| Json::str(&r.url)).collect::<Vec<_>>());
            let line = obj(vec![
                ("op", Json::str("cleanup")),
                ("dry_run", Json::Bool(report.dry_run)),
                ("run_id", Json::str(report.current_run_id.as_str())),
                ("stale_attempts", urls(RemovalReason::StaleAttempt)),
                ("total_objects_deleted", Json::count(report.objects_deleted as u64)),
                ("total_prefixes_removed", Json::count(report.prefixes_removed as u64)),
                ("old_manifests", urls(RemovalReason::OldManifest)),
                ("old_run_attempts", urls(RemovalReason::OldRun)),
                ("abandoned_attempts", urls(RemovalReason::AbandonedRun)),
                ("run_records", urls(RemovalReason::RunRecord)),
                (
                    "unknown_runs",
                    Json::Arr(report.unknown_runs.iter().map(|r| Json::str(r.as_str())).collect()),
                ),
            ]);
            printer.single(out, &line)?;
        }
        OutputFormat::Jsonl => {
            for r in &report.removals {
                let line = obj(vec![
                    ("reason", Json::str(format!("{:?}", r.reason))),
                    ("run_id", Json::str(r.run_id.as_str())),
                    ("url", Json::str(&r.url)),
                    ("objects", Json::count(r.objects as u64)),
                    ("bytes", Json::count(r.bytes)),
                    ("dry_run", Json::Bool(report.dry_run)),
                ]);
                writeln!(out, "{}", line.render()).map_err(output_error)?;
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
            crate::output::table(out, &["reason", "run_id", "objects", "url"], rows)?;
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
    Ok(exit::OK)
}

async fn get(
    reader: &Reader,
    key: &str,
    ctx: &[String],
    printer: &Printer,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let k = reader.parse_key(key)?;
    let value = if ctx.is_empty() {
        reader.get(&k).await?
    } else {
        let c = reader.parse_context(ctx.iter().map(String::as_str))?;
        reader.get_with_context(&k, &c).await?
    };
    // A miss prints "value": "null" (a string), as the reference does.
    let line = obj(vec![
        ("op", Json::str("get")),
        ("key", Json::str(key)),
        ("found", Json::Bool(value.is_some())),
        (
            "value",
            Json::str(value.as_ref().map_or_else(|| "null".to_string(), |v| printer.value(v))),
        ),
    ]);
    printer.single(out, &line)?;
    Ok(exit::OK)
}

/// `search`: one result line per query, `--vector` or each line of stdin.
async fn search(
    reader: &Reader,
    vector: &str,
    options: &sf_reader::SearchOptions,
    exact: bool,
    stdin: &mut dyn BufRead,
    printer: &Printer,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    // Both searches of a query, and every query, from one snapshot.
    let view = reader.current();
    let everywhere = sf_reader::SearchOptions {
        shard_ids: Some(reader.shards().into_iter().map(|s| s.db_id).collect()),
        num_probes: None,
        routing_context: None,
        ..options.clone()
    };
    let mut recalls = Vec::new();
    let queries: Vec<String> = if vector == "-" {
        read_keys(stdin)?.into_iter().filter(|l| !l.trim().is_empty()).collect()
    } else {
        vec![vector.to_string()]
    };
    for (n, text) in queries.iter().enumerate() {
        let query = parse_vector(text).map_err(|e| {
            let place = if vector == "-" {
                format!("stdin line {}", n + 1)
            } else {
                "--vector".to_string()
            };
            Failure::usage(place, e)
        })?;
        let found = view.search(&query, options).await?;
        let items: Vec<Json> = found
            .hits
            .iter()
            .map(|h| {
                obj(vec![
                    (
                        "id",
                        match &h.id {
                            sf_reader::vector::VectorId::Int(i) => Json::Int(*i),
                            sf_reader::vector::VectorId::Str(s) => Json::str(s.as_str()),
                        },
                    ),
                    ("score", Json::Float(h.score)),
                    (
                        "payload",
                        h.payload.as_ref().map_or(Json::Null, |p| Json::Raw(p.to_string())),
                    ),
                    ("db_id", Json::count(u64::from(h.db_id.0))),
                ])
            })
            .collect();
        printer.list(out, "search", "results", items)?;
        if exact {
            let truth = view.search(&query, &everywhere).await?;
            let recall = recall(&found.hits, &truth.hits);
            recalls.push(recall);
            printer.single(
                out,
                &obj(vec![
                    ("op", Json::str("recall")),
                    ("query", Json::count(n as u64 + 1)),
                    ("k", Json::count(options.top_k as u64)),
                    ("recall", Json::Float(recall)),
                    ("shards", Json::count(found.shards.len() as u64)),
                    ("exact_shards", Json::count(truth.shards.len() as u64)),
                ]),
            )?;
        }
    }
    if exact {
        let mean = if recalls.is_empty() {
            1.0
        } else {
            recalls.iter().sum::<f64>() / recalls.len() as f64
        };
        printer.single(
            out,
            &obj(vec![
                ("op", Json::str("recall_mean")),
                ("queries", Json::count(recalls.len() as u64)),
                ("k", Json::count(options.top_k as u64)),
                ("mean_recall", Json::Float(mean)),
            ]),
        )?;
    }
    Ok(exit::OK)
}

/// recall@k: the share of the exact search's hits (shard and id) that the
/// routed search found; 1 when the exact search found none.
fn recall(routed: &[sf_reader::SearchHit], exact: &[sf_reader::SearchHit]) -> f64 {
    if exact.is_empty() {
        return 1.0;
    }
    let found = exact
        .iter()
        .filter(|e| routed.iter().any(|r| r.db_id == e.db_id && r.id == e.id))
        .count();
    found as f64 / exact.len() as f64
}

/// A query vector from a JSON array of numbers.
fn parse_vector(text: &str) -> Result<Vec<f32>, String> {
    let values: Vec<f64> =
        serde_json::from_str(text.trim()).map_err(|e| format!("{text:?} is not a JSON array of numbers: {e}"))?;
    Ok(values.into_iter().map(|v| v as f32).collect())
}

/// Keys from stdin, one per line (`\r\n` endings too). Every line is a
/// key, a blank one included: the empty string is a valid `utf8` key.
pub fn read_keys(stdin: &mut dyn BufRead) -> Result<Vec<String>, Failure> {
    let mut keys = Vec::new();
    for line in stdin.lines() {
        let line = line.map_err(|e| Failure::usage("reading keys from stdin", e))?;
        keys.push(line.strip_suffix('\r').unwrap_or(&line).to_string());
    }
    Ok(keys)
}

async fn multiget(
    reader: &Reader,
    keys: &[String],
    ctx: &[String],
    stdin: &mut dyn BufRead,
    printer: &Printer,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let texts: Vec<String> = if keys.len() == 1 && keys[0] == "-" {
        read_keys(stdin)?
    } else {
        keys.to_vec()
    };
    let parsed: Vec<_> = texts
        .iter()
        .map(|t| reader.parse_key(t))
        .collect::<sf_reader::Result<_>>()?;
    let values = if ctx.is_empty() {
        reader.multi_get(&parsed).await?
    } else {
        let c = reader.parse_context(ctx.iter().map(String::as_str))?;
        let items: Vec<_> = parsed.into_iter().map(|k| (k, c.clone())).collect();
        reader.multi_get_with_context(&items).await?
    };
    let items: Vec<Json> = texts
        .iter()
        .zip(&values)
        .map(|(t, v)| {
            let mut f = vec![("key", Json::str(t)), ("found", Json::Bool(v.is_some()))];
            if let Some(v) = v {
                f.push(("value", Json::str(printer.value(v))));
            }
            obj(f)
        })
        .collect();
    printer.list(out, "multiget", "results", items)?;
    Ok(exit::OK)
}

fn route(reader: &Reader, key: &str, ctx: &[String], printer: &Printer, out: &mut dyn Write) -> Result<u8, Failure> {
    let k = reader.parse_key(key)?;
    let c = if ctx.is_empty() {
        None
    } else {
        Some(reader.parse_context(ctx.iter().map(String::as_str))?)
    };
    let r = reader.route(&k, c.as_ref())?;
    let line = obj(vec![
        ("op", Json::str("route")),
        ("key", Json::str(key)),
        ("db_id", r.db_id.map_or(Json::Null, |d| Json::Int(i64::from(d.0)))),
    ]);
    printer.single(out, &line)?;
    Ok(exit::OK)
}

fn info(reader: &Reader, printer: &Printer, out: &mut dyn Write) -> Result<u8, Failure> {
    let i = reader.info();
    let line = obj(vec![
        ("op", Json::str("info")),
        ("run_id", Json::str(i.run_id.as_str())),
        ("num_dbs", Json::Int(i64::from(i.num_dbs))),
        (
            "sharding",
            Json::str(match i.sharding {
                sf_manifest::ShardingStrategy::Hash => "hash",
                sf_manifest::ShardingStrategy::Cel => "cel",
            }),
        ),
        ("created_at", Json::str(i.created_at.to_rfc3339_offset())),
        ("manifest_ref", Json::str(&i.manifest_ref)),
        ("row_count", Json::count(i.row_count)),
        ("key_encoding", Json::str(i.key_encoding.as_str())),
        ("hash_algorithm", Json::str("xxh3_64")),
    ]);
    printer.single(out, &line)?;
    Ok(exit::OK)
}

fn shards(reader: &Reader, printer: &Printer, out: &mut dyn Write) -> Result<u8, Failure> {
    let key = |k: &Option<sf_manifest::Key>| match k {
        Some(k) => Json::Raw(sf_manifest::format::json::to_sorted_string(
            &k.to_json(),
            sf_manifest::format::json::JsonStyle::Python,
        )),
        None => Json::Null,
    };
    // Streamed: a snapshot may have 100,000 shards. One snapshot for
    // every pass, whatever a refresh does meanwhile.
    let infos = reader.shard_infos();
    let items = || {
        infos.clone().map(|s| {
            obj(vec![
                ("db_id", Json::Int(i64::from(s.db_id.0))),
                ("row_count", Json::count(s.row_count)),
                ("min_key", key(&s.min_key)),
                ("max_key", key(&s.max_key)),
                ("db_url", Json::opt_str(s.db_url.as_deref())),
            ])
        })
    };
    printer.list_stream(out, "shards", "shards", items)?;
    Ok(exit::OK)
}

fn health(reader: &Reader, max_age: &str, printer: &Printer, out: &mut dyn Write) -> Result<u8, Failure> {
    let max_age = parse_duration(max_age)?;
    let h = reader.health(max_age);
    let line = obj(vec![
        ("op", Json::str("health")),
        (
            "status",
            Json::str(match h.status {
                HealthStatus::Healthy => "healthy",
                HealthStatus::Stale => "stale",
            }),
        ),
        ("manifest_ref", Json::str(&h.manifest_ref)),
        ("manifest_age_seconds", Json::Float(h.snapshot_age_seconds)),
        ("num_shards", Json::count(h.num_shards as u64)),
        ("is_closed", Json::Bool(h.is_closed)),
        ("max_age_seconds", Json::Float(h.max_age_seconds)),
    ]);
    printer.single(out, &line)?;
    Ok(match h.status {
        HealthStatus::Healthy => exit::OK,
        HealthStatus::Stale => HEALTH_STALE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn every_stdin_line_is_a_key_blank_ones_too() {
        let mut input: &[u8] = b"a\r\n\nb\n\r\n";
        assert_eq!(read_keys(&mut input).expect("keys"), vec!["a", "", "b", ""]);
        let mut none: &[u8] = b"";
        assert!(read_keys(&mut none).expect("keys").is_empty());
    }
}
