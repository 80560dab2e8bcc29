//! `sf-read`: the reader and the admin operations on the command line.
//!
//! One function per command ([`crate::read_ops`] has the reads, and the
//! session `exec` and `shell` run them in); [`run`] parses nothing and
//! prints only to the writer it is given, so tests drive it without a
//! process. Output lines in `--output json` mirror the reference CLI's
//! (same keys, order, spacing and escaping), so scripts written for it
//! keep working. Settings come from the flags, then `reader.toml`
//! ([`crate::read_config`]), then the defaults.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sf_manifest::StorageOptions;
use sf_reader::duration::parse_duration;
use sf_reader::{Admin, CleanupOptions, Pin, RemovalReason, RollbackTarget, SqliteMode};

use crate::exit::{self, EXIT_CODES, Failure};
use crate::output::{Json, OutputFormat, Printer, ValueFormat, obj, output_error};
use crate::read_config::ReaderFile;
pub use crate::read_ops::{HEALTH_STALE, read_keys};
use crate::read_ops::{Session, history, info, multiget, route, search, search_options, shards};

const AFTER_HELP: &str = "\
A key that is not found is still a success (found=false). `health` has its
own codes: 0 healthy, 1 stale (older than --max-age), 2 error.

S3 settings come from the AWS_* environment variables (AWS_ENDPOINT,
AWS_REGION, AWS_ACCESS_KEY_ID, ...), --storage-option aws_endpoint=...,
or reader.toml's [storage].

reader.toml (--config or SF_READ_CONFIG) holds the settings: [reader]
(current_url, cache_dir, sqlite_mode, refresh_interval, any reader
setting), [output] (format, value_encoding, null_repr) and [storage].
Flags, and SF_CURRENT_URL and SF_CACHE_DIR, override it; an unknown key
is refused (exit 2). Example: docs/reading.md.";

/// Online reads and admin of a ShardForge snapshot.
#[derive(Debug, Parser)]
#[command(name = "sf-read", version, about, after_help = after_help())]
pub struct Cli {
    /// URL of the snapshot's `_CURRENT` (or of its prefix): s3://, gs://,
    /// az://, file:// or a local path.
    #[arg(long, env = "SF_CURRENT_URL", global = true)]
    pub current_url: Option<String>,

    /// A reader.toml: `[reader]`, `[output]` and `[storage]` settings, which
    /// flags override.
    #[arg(long, env = "SF_READ_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Read this manifest instead of `_CURRENT`'s (full URL or key under
    /// the prefix); the target of `rollback`.
    #[arg(long = "ref", value_name = "REF", global = true, conflicts_with = "offset")]
    pub manifest_ref: Option<String>,

    /// Read the manifest at this history offset (0 = newest); the target
    /// of `rollback`.
    #[arg(long, value_name = "N", global = true)]
    pub offset: Option<usize>,

    /// Output format (default json, or reader.toml's `[output]` format).
    #[arg(long, value_enum, global = true)]
    pub output: Option<OutputFormat>,

    /// How values are printed: utf8 (as text; bytes that are not UTF-8 as
    /// `hex:<hex>`), hex, or base64 (default utf8, or reader.toml's
    /// `[output]` value_encoding).
    #[arg(long, value_enum, global = true)]
    pub value_format: Option<ValueFormat>,

    /// A storage option (repeatable), e.g. aws_endpoint=http://127.0.0.1:9000.
    #[arg(long = "storage-option", value_name = "KEY=VALUE", global = true)]
    pub storage_options: Vec<String>,

    /// How SQLite shards are read: download (whole file, cached), range
    /// (ranged GETs), auto (range above 256 MiB; the default), or memory
    /// (downloaded, then held in memory, up to 1 GiB in all).
    #[arg(long, value_enum, global = true)]
    pub sqlite_mode: Option<ModeArg>,

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
    /// Default: 1s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, global = true)]
    pub rate_limit_max_wait: Option<std::time::Duration>,

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
    /// Run a batch file of read ops (JSON or YAML) against one open
    /// reader: a JSON line per op, in order (exit 0 when every op
    /// succeeded, 1 when one failed, 2 for a malformed script, refused
    /// before any op runs).
    Exec {
        /// The script: a list of ops (`- op: get` / `  key: 42`), or a
        /// mapping `{commands: [...], on_error: stop|continue}`; ops get,
        /// multiget, search, route, info, shards, health, history, refresh.
        #[arg(long, value_name = "FILE")]
        script: PathBuf,
        /// Write the result lines to this file (created or emptied)
        /// instead of stdout.
        #[arg(long, value_name = "FILE")]
        output_file: Option<PathBuf>,
        /// Stop at the first op that fails (its error line is the last).
        #[arg(long)]
        stop_on_error: bool,
    },
    /// An interactive shell against one open reader: get, multiget,
    /// search, route, info, shards, health, history, refresh, use, help,
    /// quit. Line editing, history and Tab completion on a terminal;
    /// commands line by line from a pipe.
    Shell {
        /// The history file (default: sf-read-history under
        /// $XDG_DATA_HOME/shardforge, or ~/.local/share/shardforge).
        #[arg(long, value_name = "FILE", conflicts_with = "no_history")]
        history: Option<PathBuf>,
        /// Keep no history file.
        #[arg(long)]
        no_history: bool,
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

/// The settings the flags and `reader.toml` describe, flags first.
struct Resolved {
    current_url: String,
    settings: sf_reader::ReaderSettings,
    storage: StorageOptions,
    printer: Printer,
    miss: String,
}

fn resolve(cli: &Cli) -> Result<Resolved, Failure> {
    let file = match &cli.config {
        Some(path) => Some(crate::read_config::load(path)?),
        None => None,
    };
    let ReaderFile {
        current_url,
        mut settings,
        format,
        values,
        null_repr,
        storage: file_storage,
    } = file.unwrap_or_else(|| ReaderFile {
        current_url: None,
        settings: crate::read_config::default_settings(),
        format: None,
        values: None,
        null_repr: None,
        storage: Vec::new(),
    });
    let current_url = cli.current_url.clone().or(current_url).ok_or_else(|| {
        Failure::usage(
            "--current-url",
            "is required (or set SF_CURRENT_URL, or current_url in reader.toml's [reader])",
        )
    })?;
    let mut storage = StorageOptions::new();
    for (k, v) in &file_storage {
        storage.insert(k, v);
    }
    for pair in &cli.storage_options {
        storage.insert_pair(pair)?;
    }
    if let Some(dir) = &cli.cache_dir {
        settings.cache_dir = Some(dir.clone());
    }
    if let Some(bytes) = cli.cache_max_bytes {
        settings.cache_max_bytes = Some(bytes);
    }
    if let Some(n) = cli.max_keys_per_second {
        settings.max_keys_per_second = Some(n);
    }
    if let Some(n) = cli.max_bytes_per_second {
        settings.max_bytes_per_second = Some(n);
    }
    if let Some(wait) = cli.rate_limit_max_wait {
        settings.rate_limit_max_wait = wait;
    }
    if let Some(mode) = cli.sqlite_mode {
        settings.sqlite_mode = mode.into();
    }
    match (&cli.manifest_ref, cli.offset) {
        (Some(r), _) => settings.pin = Pin::Ref(r.clone()),
        (None, Some(n)) => settings.pin = Pin::Offset(n),
        (None, None) => {}
    }
    Ok(Resolved {
        current_url,
        settings,
        storage,
        printer: Printer {
            format: cli.output.or(format).unwrap_or(OutputFormat::Json),
            values: cli.value_format.or(values).unwrap_or(ValueFormat::Utf8),
        },
        miss: null_repr.unwrap_or_else(|| "null".to_string()),
    })
}

/// Runs one command, writing its output to `out`; returns the exit code
/// for a success (0, or [`HEALTH_STALE`] for a stale `health`).
pub async fn run(cli: Cli, out: &mut dyn Write, stdin: &mut dyn BufRead) -> Result<u8, Failure> {
    let Resolved {
        current_url,
        settings,
        storage,
        printer,
        miss,
    } = resolve(&cli)?;
    let admin = || {
        Admin::builder(&current_url)
            .with_storage_options(storage.clone())
            .build()
    };
    match &cli.command {
        Command::History => return history(&admin()?, None, &printer, out).await,
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
    // A script is checked whole before the reader opens.
    let script = match &cli.command {
        Command::Exec { script, .. } => {
            if cli.output == Some(OutputFormat::Table) {
                return Err(Failure::usage(
                    "--output table",
                    "exec prints JSON lines (--output json or jsonl)",
                ));
            }
            Some(crate::read_exec::load(script)?)
        }
        _ => None,
    };
    let mut session = Session::open(current_url, settings, storage, miss).await?;
    let reader = session.reader().clone();
    let code = match &cli.command {
        Command::Get { key, ctx } => crate::read_ops::get(&reader, key, ctx, &printer, &session.miss, out).await,
        Command::Multiget { keys, ctx } => {
            let texts = if keys.len() == 1 && keys[0] == "-" {
                read_keys(stdin)?
            } else {
                keys.clone()
            };
            multiget(&reader, &texts, ctx, &printer, out).await
        }
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
            let options = search_options(&reader, *top_k, *num_probes, shards, ctx, filter.clone())?;
            let from_stdin = vector == "-";
            let queries: Vec<String> = if from_stdin {
                read_keys(stdin)?.into_iter().filter(|l| !l.trim().is_empty()).collect()
            } else {
                vec![vector.clone()]
            };
            search(&reader, &queries, from_stdin, &options, *exact, &printer, out).await
        }
        Command::Info => info(&reader, &printer, out),
        Command::Shards => shards(&reader, &printer, out),
        Command::Health { max_age } => {
            let max_age = parse_duration(max_age)?;
            crate::read_ops::health(&reader, max_age, &printer, out)
        }
        Command::Exec {
            output_file,
            stop_on_error,
            ..
        } => {
            let script = script
                .as_ref()
                .ok_or_else(|| Failure::new(sf_manifest::ErrorKind::Internal, "the script is loaded above"))?;
            match output_file {
                Some(path) => {
                    let mut file = std::fs::File::create(path)
                        .map_err(|e| Failure::usage(path.display(), format!("cannot be written: {e}")))?;
                    crate::read_exec::exec(&session, script, printer.values, *stop_on_error, &mut file).await
                }
                None => crate::read_exec::exec(&session, script, printer.values, *stop_on_error, out).await,
            }
        }
        Command::Shell { history, no_history } => {
            let history = if *no_history {
                None
            } else {
                history.clone().or_else(crate::read_shell::default_history_file)
            };
            crate::read_shell::shell(&mut session, &printer, history, stdin, out).await
        }
        Command::History | Command::Rollback { .. } | Command::Cleanup { .. } => Err(Failure::new(
            sf_manifest::ErrorKind::Internal,
            "admin commands are handled above",
        )),
    };
    session.close();
    code
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
        assert_eq!(cli.output, Some(OutputFormat::Table));
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
