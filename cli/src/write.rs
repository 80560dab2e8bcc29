//! `sf-write`: run a snapshot build job.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use sf_warehouse::JobFile;
use sf_writer::job::{BuildOptions, Embedded, Engine, Outcome, ProgressSink};
use tracing::Instrument;

use crate::exit::{self, EXIT_CODES, Failure};
use crate::report::Recorder;

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

A job-file key can be overridden by an environment variable
SF_<SECTION>__<KEY>, e.g. SF_ROUTING__NUM_DBS=16, SF_OUTPUT__PREFIX=s3://b/p,
SF_OUTPUT__RUN_ID=nightly-1 (the value typed by the key it sets: a text key
takes the text as it is, whatever it looks like). Only names with a `__` are
overrides: SF_* variables without one (SF_CURRENT_URL, SF_CACHE_DIR,
SF_LOG_FORMAT, a deployment's SF_CLUSTER_URL) belong to other programs and
are ignored, so one environment can hold them all; an override of a key
that does not exist is an error naming the variable.
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

    /// Print the build's report as one JSON object on stdout (on success
    /// and on failure): run id, outcome, exit code, each phase with its
    /// duration, each validation gate, the summary (rows, bytes, shards,
    /// retries, `vectors_skipped` of a `[vector]` job, ...), the error.
    #[arg(long)]
    json: bool,

    /// Write the same JSON report to this file, on success and on failure
    /// (whole or not at all).
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,

    /// Write the report's figures in Prometheus text format to this file
    /// (for node_exporter's textfile collector), on success and on failure.
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,

    /// Build the job's run_id again although it was published before
    /// (without it such a run does nothing and exits 0). Data any manifest
    /// references is never touched.
    #[arg(long)]
    rebuild: bool,

    /// Publish even when validation gates fail; the overridden gates are
    /// recorded in the manifest and the run record.
    #[arg(long)]
    force: bool,

    /// Log filter (e.g. `info`, `sf_writer=debug`); default `warn`, or
    /// `info` when progress goes to log lines. RUST_LOG works too.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    #[command(flatten)]
    common: crate::run::CommonArgs,
}

/// Runs `sf-write` with the process's arguments and environment.
pub fn main() -> ExitCode {
    let args: Args = crate::run::parse();
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
        args.common.log_format,
    );
    crate::run::exit_code(crate::run::run_cli("sf-write", run(args, bar)))
}

/// The engine a job runs on: the Ballista cluster at `--cluster` or the
/// job's `[cluster] scheduler` (with its `[cluster.session]` settings), else
/// embedded.
pub fn engine_for(cluster: Option<&str>, job: &JobFile) -> Result<Box<dyn Engine>, Failure> {
    Ok(match sf_executor::engine_for(cluster, job)? {
        Some(engine) => Box::new(engine),
        None => Box::new(Embedded::default()),
    })
}

async fn run(args: Args, bar: bool) -> Result<u8, Failure> {
    let sink: Option<Arc<dyn ProgressSink>> = match (args.progress, bar) {
        (ProgressMode::Off, _) => None,
        (_, true) => Some(Arc::new(BarSink::new())),
        (_, false) => Some(Arc::new(LogSink::default())),
    };
    let mut run_id: Option<String> = None;
    let mut prefix = String::new();
    let mut recorder: Option<Arc<Recorder>> = None;
    let result = build(&args, sink.clone(), &mut run_id, &mut prefix, &mut recorder).await;
    if let Some(s) = &sink {
        s.phase("done");
    }
    let recorder = recorder.unwrap_or_else(|| Arc::new(Recorder::new(None)));
    let doc = crate::report::document(&result, run_id.as_deref(), &prefix, &recorder);
    if let Some(path) = &args.report {
        crate::report::write_atomically(path, &format!("{doc}\n"))?;
    }
    if let Some(path) = &args.metrics_file {
        crate::report::write_metrics_file(path, &doc)?;
    }
    if args.json {
        println!("{doc}");
    }
    match result? {
        _ if args.json => {}
        Outcome::DryRun(report) => println!("dry run: nothing was written\n{report}"),
        Outcome::Unchanged(why) => println!("{why}"),
        Outcome::AlreadyPublished(done) => println!("{done}"),
        Outcome::Built(summary) => println!("{summary}"),
    }
    Ok(exit::OK)
}

/// Loads the job and runs it; `run_id` and `prefix` are filled as soon as
/// they are known, so a report names them even when the build fails.
async fn build(
    args: &Args,
    sink: Option<Arc<dyn ProgressSink>>,
    run_id: &mut Option<String>,
    prefix: &mut String,
    recorder_slot: &mut Option<Arc<Recorder>>,
) -> Result<Outcome, Failure> {
    let mut job = JobFile::load(&args.config, std::env::vars())?;
    // The run id is fixed up front: reports name it whatever happens, and
    // a cluster build's progress watches its claim markers.
    let id = job
        .build
        .output
        .run_id
        .clone()
        .unwrap_or_else(|| sf_manifest::RunId::generate().as_str().to_string());
    job.build.output.run_id = Some(id.clone());
    *run_id = Some(id.clone());
    *prefix = job.destination().to_string();
    let engine = engine_for(args.cluster.as_deref(), &job)?;
    // Shard tasks on a cluster run elsewhere, so the in-process counters
    // stay at zero; count the shards that reached their upload instead
    // (their claim markers).
    let sink = match sink {
        Some(inner) if !engine.runs_locally() && !args.dry_run => {
            Some(Arc::new(ClaimWatch::new(inner, &job.build, &id)) as Arc<dyn ProgressSink>)
        }
        other => other,
    };
    let recorder = Arc::new(Recorder::new(sink));
    *recorder_slot = Some(Arc::clone(&recorder));
    let options = BuildOptions {
        dry_run: args.dry_run,
        progress: Some(recorder as Arc<dyn ProgressSink>),
        rebuild: args.rebuild,
        force: args.force,
        ..BuildOptions::default()
    };
    // Every line logged while the job runs names its run id (a field of
    // `--log-format json`); an exported build span says whether it failed.
    let span = tracing::info_span!("build", run_id = %id, otel.status_code = tracing::field::Empty);
    let outcome = sf_warehouse::run_job(&job, engine.as_ref(), &options)
        .instrument(span.clone())
        .await
        .map_err(|e| name_the_input(Failure::from(e), &job));
    if outcome.is_err() {
        span.record("otel.status_code", "error");
    }
    outcome
}

/// `failure` naming the job's input when it is bad input the query engine
/// found while reading it (a CSV row cut short, a value that does not
/// parse), which the engine reports without the file: it then names the
/// input path (once). Other failures, and inputs read through SQL, as they
/// are.
fn name_the_input(failure: Failure, job: &JobFile) -> Failure {
    let Some(path) = job.build.input.as_ref().and_then(|i| i.path.as_deref()) else {
        return failure;
    };
    if failure.kind() != sf_manifest::ErrorKind::Data {
        return failure;
    }
    match failure.message().strip_prefix("input: ") {
        // Already names it ("input users.csv: the file is empty").
        Some(what) if what.starts_with("input ") => Failure::new(sf_manifest::ErrorKind::Data, what.to_string()),
        Some(what) => Failure::new(sf_manifest::ErrorKind::Data, format!("input {path}: {what}")),
        None => failure,
    }
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
        if let Some(p) = sf_manifest::sync::lock(&self.poller).take() {
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
        .filter(|m| m.location.filename() == Some(sf_manifest::format::layout::CLAIM_FILE))
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
        *sf_manifest::sync::lock(&self.poller) = Some(handle);
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
        let mut last = sf_manifest::sync::lock(&self.last);
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) || shards_done == num_dbs;
        if due {
            *last = Some(Instant::now());
            tracing::info!("{rows} rows written, {shards_done}/{num_dbs} shards done");
        }
    }
}
