//! `sf-write`: run a snapshot build job.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use sf_writer::job::{BuildOptions, Embedded, Engine, Outcome, ProgressSink};

use crate::exit::{self, EXIT_CODES, Failure};

const ABOUT: &str = "Build a sharded key-value snapshot from a table and publish it.";

const LONG_ABOUT: &str = "\
Build a sharded key-value snapshot from a table and publish it.

Reads the input named in the job file (Parquet, CSV, JSON, or SQL over them),
routes every row to one of num_dbs shards (xxh3 of the key, or a CEL
expression), writes each shard (SQLite file or SlateDB database) to its own
attempt folder under the output prefix, then publishes a manifest and swaps
the prefix's _CURRENT pointer with compare-and-swap. Nothing is published
unless every shard was written and verified; a failed build leaves the
previous snapshot serving.

With [output] table = \"catalog.db.table\" (and mode = error | overwrite |
append | ignore) the input is saved as a warehouse table instead, under
the catalog's warehouse URL ([sf.catalog.NAME] warehouse = ...); query it
with sf-sql, serve it with sf-read.

Every job-file key can be overridden by an environment variable
SF_<SECTION>__<KEY>, e.g. SF_ROUTING__NUM_DBS=16 or SF_OUTPUT__PREFIX=s3://b/p.
Object-store credentials come from the usual environment variables
(AWS_*, GOOGLE_*, AZURE_*); they are never printed.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProgressMode {
    /// A progress bar when stderr is a terminal, log lines otherwise.
    Auto,
    /// Always a progress bar.
    Bar,
    /// Plain log lines.
    Log,
    /// Nothing.
    Off,
}

#[derive(Debug, Parser)]
#[command(name = "sf-write", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = EXIT_CODES)]
struct Args {
    /// The job file (TOML); see docs/configuration.md.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,

    /// Resolve and print the plan (schema, routing, shard count, output),
    /// reading the input's schema but writing nothing.
    #[arg(long)]
    dry_run: bool,

    /// Run on a Ballista cluster at this scheduler (df://host:port) instead
    /// of embedded; overrides [cluster] scheduler in the job file.
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,

    /// How to show progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,

    /// Print the build summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,

    /// Log filter (e.g. `info`, `sf_writer=debug`); default `warn`, or
    /// `info` when progress goes to log lines. RUST_LOG works too.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
}

/// Runs `sf-write` with the process's arguments and environment.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let bar = match args.progress {
        ProgressMode::Auto => std::io::stderr().is_terminal(),
        ProgressMode::Bar => true,
        ProgressMode::Log | ProgressMode::Off => false,
    };
    let default_log = if !bar && args.progress != ProgressMode::Off {
        "info"
    } else {
        "warn"
    };
    // DataFusion's spill code warns about its own memory accounting
    // (nothing a job can act on); keep it out of the default output.
    crate::run::init_logging(
        args.log.as_deref(),
        &format!("{default_log},datafusion_physical_plan::spill=error"),
    );
    crate::run::exit_code(crate::run::run_cli("sf-write", run(args, bar)))
}

/// The engine a job runs on: embedded, or the Ballista cluster at
/// `--cluster` / `[cluster] scheduler`.
pub fn engine_for(cluster: Option<&str>, job: &sf_writer::config::JobConfig) -> Result<Box<dyn Engine>, Failure> {
    match cluster {
        None => Ok(Box::new(Embedded::default())),
        Some(url) => Ok(sf_executor::cluster::engine::factory(url, job)?),
    }
}

async fn run(args: Args, bar: bool) -> Result<u8, Failure> {
    let mut job = sf_writer::config::load(&args.config, std::env::vars())?;
    let scheduler = args
        .cluster
        .clone()
        .or_else(|| job.cluster.as_ref().and_then(|c| c.scheduler.clone()));
    let engine = engine_for(scheduler.as_deref(), &job)?;
    let sink: Option<Arc<dyn ProgressSink>> = match (args.progress, bar) {
        (ProgressMode::Off, _) => None,
        (_, true) => Some(Arc::new(BarSink::new())),
        (_, false) => Some(Arc::new(LogSink::default())),
    };
    // Shard tasks on a cluster run elsewhere, so the in-process counters
    // stay at zero; count the shards that reached their upload instead
    // (their claim markers), which needs the run id up front.
    let sink = match sink {
        Some(inner) if !engine.runs_locally() && !args.dry_run => {
            let run_id = match &job.output.run_id {
                Some(r) => r.clone(),
                None => {
                    let r = sf_manifest::RunId::generate().as_str().to_string();
                    job.output.run_id = Some(r.clone());
                    r
                }
            };
            let watch = ClaimWatch::new(inner, &job, &run_id);
            Some(Arc::new(watch) as Arc<dyn ProgressSink>)
        }
        other => other,
    };
    let options = BuildOptions {
        dry_run: args.dry_run,
        progress: sink.clone(),
        ..BuildOptions::default()
    };
    let outcome = sf_warehouse::run_job(&job, engine.as_ref(), &options).await;
    if let Some(s) = &sink {
        s.phase("done");
    }
    match outcome? {
        Outcome::DryRun(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "dry_run": true,
                        "run_id": report.run_id.as_str(),
                        "num_dbs": report.num_dbs,
                        "key_col": report.key_col,
                        "key_encoding": report.key_encoding.as_str(),
                        "sharding": report.sharding.to_json(),
                        "prefix": report.prefix_url,
                        "backend": report.backend,
                    })
                );
            } else {
                println!("dry run: nothing was written\n{report}");
            }
        }
        Outcome::Unchanged(why) => {
            if args.json {
                println!("{}", serde_json::json!({"unchanged": true, "reason": why}));
            } else {
                println!("{why}");
            }
        }
        Outcome::Built(summary) => {
            if args.json {
                let (lo, med, hi) = summary.rows_per_shard;
                println!(
                    "{}",
                    serde_json::json!({
                        "run_id": summary.run_id.as_str(),
                        "manifest_ref": summary.manifest_ref,
                        "num_dbs": summary.num_dbs,
                        "shards_written": summary.shards_written,
                        "rows": summary.rows,
                        "duplicates": summary.duplicates,
                        "bytes": summary.bytes,
                        "rows_per_shard": {"min": lo, "median": med, "max": hi},
                        "retries": summary.retries,
                        "losers_deleted": summary.losers_deleted,
                        "seconds": {
                            "plan": summary.plan_time.as_secs_f64(),
                            "write": summary.write_time.as_secs_f64(),
                            "publish": summary.publish_time.as_secs_f64(),
                            "total": summary.total_time.as_secs_f64(),
                        },
                        "phases": {
                            "input": summary.phases.input.map(|d| d.as_secs_f64()),
                            "shards_built": summary.phases.shards_built,
                            "build_sum": summary.phases.build_sum.as_secs_f64(),
                            "claim_sum": summary.phases.claim_sum.as_secs_f64(),
                            "upload_sum": summary.phases.upload_sum.as_secs_f64(),
                            "verify": summary.phases.verify.as_secs_f64(),
                            "publish": summary.phases.publish.as_secs_f64(),
                            "cleanup": summary.phases.cleanup.as_secs_f64(),
                        },
                        "spilled_runs": summary.spilled_runs,
                        "peak_rss_bytes": summary.peak_rss_bytes,
                    })
                );
            } else {
                println!("{summary}");
            }
        }
    }
    Ok(exit::OK)
}

/// Progress of a build whose shard tasks run on a cluster: phases as
/// usual and, while shards are written, how many shards have reached
/// their upload (have a claimed attempt folder), polled every 2 s. Rows
/// are not counted: Ballista reports no task progress to the client.
struct ClaimWatch {
    inner: Arc<dyn ProgressSink>,
    shards: Option<sf_manifest::Location>,
    total: Option<u32>,
    poller: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ClaimWatch {
    fn new(inner: Arc<dyn ProgressSink>, job: &sf_writer::config::JobConfig, run_id: &str) -> Self {
        let shards = sf_manifest::resolve(&job.output.prefix, &job.storage_options())
            .ok()
            .map(|prefix| prefix.child(&format!("shards/run_id={run_id}")));
        ClaimWatch {
            inner,
            shards,
            total: job.routing.num_dbs,
            poller: Mutex::new(None),
        }
    }

    fn stop(&self) {
        if let Some(p) = self.poller.lock().expect("poller lock").take() {
            p.abort();
        }
    }
}

/// Shards with at least one claimed attempt under `shards`.
async fn claimed_shards(shards: &sf_manifest::Location) -> Option<usize> {
    use futures::TryStreamExt;
    let metas: Vec<_> = shards.store.list(Some(&shards.path)).try_collect().await.ok()?;
    let dbs: std::collections::BTreeSet<String> = metas
        .iter()
        .filter(|m| m.location.filename() == Some(sf_writer::exec::CLAIM_FILE))
        .filter_map(|m| {
            m.location
                .parts()
                .find(|p| p.as_ref().starts_with("db="))
                .map(|p| p.as_ref().to_string())
        })
        .collect();
    Some(dbs.len())
}

impl ProgressSink for ClaimWatch {
    fn phase(&self, name: &str) {
        self.stop();
        self.inner.phase(name);
        if name != "writing shards" {
            return;
        }
        let Some(shards) = self.shards.clone() else {
            return;
        };
        let (inner, total) = (Arc::clone(&self.inner), self.total);
        let handle = tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let Some(n) = claimed_shards(&shards).await else {
                    continue;
                };
                if n != last {
                    last = n;
                    let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
                    inner.phase(&format!(
                        "writing shards on the cluster: {n}{of} shards built and uploading"
                    ));
                }
            }
        });
        *self.poller.lock().expect("poller lock") = Some(handle);
    }

    fn progress(&self, rows: u64, shards_done: u32, num_dbs: u32) {
        self.inner.progress(rows, shards_done, num_dbs);
    }
}

impl Drop for ClaimWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A progress bar on stderr: shards done of num_dbs, rows written.
struct BarSink {
    bar: ProgressBar,
}

impl BarSink {
    fn new() -> Self {
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        BarSink { bar }
    }
}

impl ProgressSink for BarSink {
    fn phase(&self, name: &str) {
        if name == "done" {
            self.bar.finish_and_clear();
        } else {
            self.bar.set_message(name.to_string());
        }
    }

    fn progress(&self, rows: u64, shards_done: u32, num_dbs: u32) {
        if self.bar.length() != Some(u64::from(num_dbs)) {
            self.bar.set_length(u64::from(num_dbs));
            self.bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}] {bar:30} {pos}/{len} shards")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
        }
        self.bar.set_position(u64::from(shards_done));
        self.bar.set_message(format!("{rows} rows written"));
    }
}

/// Progress as log lines, at most every few seconds.
#[derive(Default)]
struct LogSink {
    last: Mutex<Option<Instant>>,
}

impl ProgressSink for LogSink {
    fn phase(&self, name: &str) {
        if name != "done" {
            tracing::info!("{name}");
        }
    }

    fn progress(&self, rows: u64, shards_done: u32, num_dbs: u32) {
        let mut last = self.last.lock().expect("progress lock");
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) || shards_done == num_dbs;
        if due {
            *last = Some(Instant::now());
            tracing::info!("{rows} rows written, {shards_done}/{num_dbs} shards done");
        }
    }
}
