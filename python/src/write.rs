//! `shardforge.write` and `shardforge.write_job`: the embedded build of
//! `sf-write` (routing, shard writes, retries, checksums, gates, publish),
//! run in process on rows Python hands in, or on a job file.
//!
//! ```text
//!  data (__arrow_c_stream__, or (key, value) pairs)
//!        │ imported once, zero-copy for Arrow (arrow's PyCapsule bridge)
//!        ▼
//!  Replay: a DataFusion streaming table over the source, read on demand;
//!        │ each batch kept for the build's later scans (routing sample)
//!        ▼
//!  sf_writer::job::build_table ─▶ the same driver as sf-write's build
//! ```
//!
//! The build runs on the module's runtime while the calling thread waits
//! with the GIL released, waking at a bounded rate to report progress to
//! a Python callback and to let Ctrl-C through. An Arrow stream is read
//! from Rust without the GIL (a producer that needs Python, such as a
//! `RecordBatchReader` over a generator, takes it itself per batch); an
//! iterable of pairs is read with the GIL, one batch at a time.

use std::fmt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, BinaryBuilder, Int64Builder, NullArray, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ffi_stream::ArrowArrayStreamReader;
use arrow::record_batch::RecordBatchReader;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyString, PyTuple};
use serde_json::Value;
use sf_manifest::{Classified, ErrorKind, ManifestStore, ObjectManifestStore};
use sf_warehouse::JobFile;
use sf_writer::config::JobConfig;
use sf_writer::job::{BuildOptions, Embedded, Outcome, ProgressSink};

use crate::errors::{ConfigError, to_py};

/// Rows taken from an iterable of pairs per batch (and per GIL hold).
const PAIRS_PER_BATCH: usize = 16_384;

/// How often the waiting thread wakes to report progress and check for
/// signals.
const TICK: Duration = Duration::from_millis(200);

/// Where rows come from, one batch at a time.
trait BatchSource: Send {
    /// The next batch, an error, or `None` at the end.
    fn next_batch(&mut self) -> Option<Result<RecordBatch, ArrowError>>;
}

impl BatchSource for ArrowArrayStreamReader {
    fn next_batch(&mut self) -> Option<Result<RecordBatch, ArrowError>> {
        self.next()
    }
}

/// A source read once, on demand, whose batches are kept for the build's
/// later scans of the same input (the routing check's sample, a count):
/// every scan replays what was read and reads on where the last stopped.
/// Arrow batches are the producer's own buffers (imported without a copy),
/// so keeping them costs no memory an in-memory table does not already use.
struct Replay {
    schema: SchemaRef,
    state: Arc<Mutex<ReplayState>>,
}

struct ReplayState {
    source: Option<Box<dyn BatchSource>>,
    batches: Vec<RecordBatch>,
    /// The source's failure, replayed to every later scan.
    failed: Option<String>,
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl Replay {
    fn new(schema: SchemaRef, source: Box<dyn BatchSource>) -> Self {
        Replay {
            schema,
            state: Arc::new(Mutex::new(ReplayState {
                source: Some(source),
                batches: Vec::new(),
                failed: None,
            })),
        }
    }

    /// Batch `i`: kept, or read from the source (blocking: called on
    /// tokio's blocking pool).
    fn batch(state: &Mutex<ReplayState>, i: usize) -> Option<Result<RecordBatch, ArrowError>> {
        let mut s = sf_manifest::sync::lock(state);
        if let Some(b) = s.batches.get(i) {
            return Some(Ok(b.clone()));
        }
        if let Some(why) = &s.failed {
            return Some(Err(ArrowError::ExternalError(why.clone().into())));
        }
        let next = s.source.as_mut()?.next_batch();
        match next {
            None => {
                s.source = None;
                None
            }
            Some(Ok(b)) => {
                s.batches.push(b.clone());
                Some(Ok(b))
            }
            Some(Err(e)) => {
                s.source = None;
                s.failed = Some(e.to_string());
                Some(Err(e))
            }
        }
    }
}

impl PartitionStream for Replay {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let state = Arc::clone(&self.state);
        let stream = futures::stream::unfold(0usize, move |i| {
            let state = Arc::clone(&state);
            async move {
                let next = tokio::task::spawn_blocking(move || Replay::batch(&state, i)).await;
                let next = match next {
                    Ok(n) => n?,
                    Err(e) => Err(ArrowError::ExternalError(Box::new(e))),
                };
                Some((next.map_err(datafusion::error::DataFusionError::from), i + 1))
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.schema), stream))
    }
}

/// The key column's type of an iterable of pairs, from its first key.
#[derive(Debug, Clone, Copy)]
enum PairKey {
    Int,
    Str,
    Bytes,
    /// No rows: a key without a type (the build types it).
    Untyped,
}

/// An iterable of `(key, value)` pairs as batches of a `key` column and a
/// binary `value` column, read with the GIL one batch at a time.
struct Pairs {
    iter: Py<PyAny>,
    first: Option<Py<PyAny>>,
    key: PairKey,
    schema: SchemaRef,
    /// A Python exception raised while iterating, re-raised by `write`.
    error: Arc<Mutex<Option<PyErr>>>,
}

impl Pairs {
    fn new(data: &Bound<'_, PyAny>, key_col: &str, error: Arc<Mutex<Option<PyErr>>>) -> PyResult<Self> {
        let iter = data.try_iter()?;
        let first = iter.clone().next().transpose()?;
        let key = match &first {
            None => PairKey::Untyped,
            Some(item) => {
                let (k, _) = pair(item)?;
                if k.is_instance_of::<PyInt>() {
                    PairKey::Int
                } else if k.is_instance_of::<PyString>() {
                    PairKey::Str
                } else if k.is_instance_of::<PyBytes>() {
                    PairKey::Bytes
                } else {
                    return Err(PyTypeError::new_err(format!(
                        "data: a key is int, str or bytes, not {}",
                        k.get_type().name()?
                    )));
                }
            }
        };
        let key_type = match key {
            PairKey::Int => DataType::Int64,
            PairKey::Str => DataType::Utf8,
            PairKey::Bytes => DataType::Binary,
            PairKey::Untyped => DataType::Null,
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new(key_col, key_type, true),
            Field::new(PAIR_VALUE_COL, DataType::Binary, false),
        ]));
        Ok(Pairs {
            iter: iter.into_any().unbind(),
            first: first.map(Bound::unbind),
            key,
            schema,
            error,
        })
    }

    fn read(&mut self, py: Python<'_>) -> PyResult<Option<RecordBatch>> {
        let iter = self.iter.bind(py);
        let mut keys_i = Int64Builder::new();
        let mut keys_s = StringBuilder::new();
        let mut keys_b = BinaryBuilder::new();
        let mut values = BinaryBuilder::new();
        let mut n = 0usize;
        while n < PAIRS_PER_BATCH {
            let item = match self.first.take() {
                Some(first) => first.into_bound(py),
                None => match iter.call_method0("__next__") {
                    Ok(item) => item,
                    Err(e) if e.is_instance_of::<pyo3::exceptions::PyStopIteration>(py) => break,
                    Err(e) => return Err(e),
                },
            };
            let (k, v) = pair(&item)?;
            match self.key {
                PairKey::Int => keys_i.append_value(k.extract::<i64>().map_err(|_| {
                    PyValueError::new_err(format!(
                        "data: integer key {k} is outside the 64-bit signed range (hand in an Arrow table with a uint64 key column)"
                    ))
                })?),
                PairKey::Str => keys_s.append_value(k.downcast::<PyString>().map_err(|_| mixed(&k, "str"))?.to_cow()?),
                PairKey::Bytes => keys_b.append_value(bytes_of(&k).ok_or_else(|| mixed(&k, "bytes"))?),
                PairKey::Untyped => {}
            }
            if let Ok(s) = v.downcast::<PyString>() {
                values.append_value(s.to_cow()?.as_bytes());
            } else {
                let b = bytes_of(&v).ok_or_else(|| {
                    PyTypeError::new_err(format!(
                        "data: a value is bytes or str, not {}",
                        v.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                    ))
                })?;
                values.append_value(b);
            }
            n += 1;
        }
        if n == 0 {
            return Ok(None);
        }
        let key: ArrayRef = match self.key {
            PairKey::Int => Arc::new(keys_i.finish()),
            PairKey::Str => Arc::new(keys_s.finish()),
            PairKey::Bytes => Arc::new(keys_b.finish()),
            PairKey::Untyped => Arc::new(NullArray::new(n)),
        };
        RecordBatch::try_new(Arc::clone(&self.schema), vec![key, Arc::new(values.finish())])
            .map(Some)
            .map_err(|e| PyValueError::new_err(format!("data: {e}")))
    }
}

impl BatchSource for Pairs {
    fn next_batch(&mut self) -> Option<Result<RecordBatch, ArrowError>> {
        Python::attach(|py| match self.read(py) {
            Ok(b) => b.map(Ok),
            Err(e) => {
                let message = format!("reading the data's pairs: {e}");
                *sf_manifest::sync::lock(&self.error) = Some(e);
                Some(Err(ArrowError::ExternalError(message.into())))
            }
        })
    }
}

/// The value column of the table an iterable of pairs becomes.
pub(crate) const PAIR_VALUE_COL: &str = "value";

fn pair<'py>(item: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let t = item
        .downcast::<PyTuple>()
        .ok()
        .filter(|t| t.len() == 2)
        .ok_or_else(|| {
            PyTypeError::new_err(format!(
                "data: an item of an iterable is a (key, value) pair, not {}",
                item.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            ))
        })?;
    Ok((t.get_item(0)?, t.get_item(1)?))
}

fn bytes_of<'a>(obj: &'a Bound<'_, PyAny>) -> Option<&'a [u8]> {
    if let Ok(b) = obj.downcast::<PyBytes>() {
        return Some(b.as_bytes());
    }
    None
}

fn mixed(k: &Bound<'_, PyAny>, first: &str) -> PyErr {
    PyTypeError::new_err(format!(
        "data: keys are all of one type: the first was {first}, a later one is {}",
        k.get_type().name().map(|n| n.to_string()).unwrap_or_default()
    ))
}

/// The job of `write`'s keyword arguments (a JSON document with the job
/// file's sections), checked before anything is read or written.
fn job_from_json(text: &str) -> PyResult<JobConfig> {
    let doc: Value = serde_json::from_str(text).map_err(|e| ConfigError::new_err(format!("the job: {e}")))?;
    let job: JobConfig = match serde_json::from_value(doc.clone()) {
        Ok(job) => job,
        Err(e) => {
            return Err(ConfigError::new_err(
                section_error(&doc).unwrap_or_else(|| e.to_string()),
            ));
        }
    };
    job.validate_settings().map_err(to_py)?;
    Ok(job)
}

/// The first section of `doc` that does not parse, as `section: why`.
fn section_error(doc: &Value) -> Option<String> {
    let Value::Object(map) = doc else { return None };
    for (name, value) in map {
        let mut probe = serde_json::Map::new();
        probe.insert("output".into(), serde_json::json!({ "prefix": "p" }));
        if name == "output" {
            let mut output = value.clone();
            if let Value::Object(o) = &mut output {
                o.entry("prefix").or_insert(Value::String("p".into()));
            }
            probe.insert(name.clone(), output);
        } else {
            probe.insert(name.clone(), value.clone());
        }
        if let Err(e) = serde_json::from_value::<JobConfig>(Value::Object(probe)) {
            return Some(format!("{name}: {e}"));
        }
    }
    None
}

/// Progress as the build reports it, read by the waiting thread: every
/// phase change, and the newest shard count since the last report.
#[derive(Default)]
struct Latest {
    phase: String,
    /// Calls not yet made: `(phase, done, total)`.
    events: Vec<(String, u32, Option<u32>)>,
    /// Shards done of `num_dbs`, newer than the last event.
    pending: Option<(u32, u32)>,
    last: Option<(u32, u32)>,
}

impl Latest {
    fn flush(&mut self) {
        if let Some((done, total)) = self.pending.take() {
            self.events.push((self.phase.clone(), done, Some(total)));
        }
    }
}

#[derive(Default)]
struct Watch(Mutex<Latest>);

impl ProgressSink for Watch {
    fn phase(&self, name: &str) {
        let mut l = sf_manifest::sync::lock(&self.0);
        l.flush();
        l.phase = name.to_string();
        l.events.push((name.to_string(), 0, None));
    }

    fn progress(&self, _rows: u64, shards_done: u32, num_dbs: u32) {
        let mut l = sf_manifest::sync::lock(&self.0);
        if l.last != Some((shards_done, num_dbs)) && num_dbs > 0 {
            l.last = Some((shards_done, num_dbs));
            l.pending = Some((shards_done, num_dbs));
        }
    }
}

impl Watch {
    /// Calls `callback(phase, done, total)` for what happened since the
    /// last call: each phase that started (`(phase, 0, None)`), and the
    /// newest count of shards done of `num_dbs` while shards are written.
    fn report(&self, callback: &Bound<'_, PyAny>) -> PyResult<()> {
        let events = {
            let mut l = sf_manifest::sync::lock(&self.0);
            l.flush();
            std::mem::take(&mut l.events)
        };
        for (phase, done, total) in events {
            if phase != "done" {
                callback.call1((phase, done, total))?;
            }
        }
        Ok(())
    }
}

/// A failure of the build, classified as the writer's exit codes are.
#[derive(Debug)]
struct Failed {
    kind: ErrorKind,
    message: String,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failed {}

impl Classified for Failed {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

fn failed<E: Classified + fmt::Display>(e: E) -> Failed {
    Failed {
        kind: e.kind(),
        message: e.to_string(),
    }
}

/// What a build returned, with the published manifest's rows per shard.
struct Done {
    outcome: Outcome,
    prefix: String,
    shard_rows: Option<Vec<u64>>,
}

/// Rows of every shard (by db id) of the manifest `manifest_ref` under
/// `prefix`; `None` when it cannot be read (the build is published
/// either way).
async fn shard_rows(prefix: &str, options: &sf_manifest::StorageOptions, manifest_ref: &str) -> Option<Vec<u64>> {
    let store = ObjectManifestStore::open(prefix, options).ok()?;
    let manifest = store.load_manifest(manifest_ref).await.ok()?;
    let mut rows = vec![0u64; usize::try_from(manifest.build.num_dbs).ok()?];
    for s in &manifest.shards {
        if let Some(r) = rows.get_mut(s.db_id.0 as usize) {
            *r = s.row_count;
        }
    }
    Some(rows)
}

/// Runs `build` on the runtime and waits for it with the GIL released,
/// reporting progress to `callback` and checking for signals every
/// [`TICK`]. A signal (Ctrl-C) stops the build where it is, as it stops
/// `sf-write`.
fn run<F>(py: Python<'_>, watch: &Watch, callback: Option<&Bound<'_, PyAny>>, build: F) -> PyResult<Done>
where
    F: std::future::Future<Output = Result<Done, Failed>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    // Locked by the one waiting thread: a receiver to wait on with the
    // GIL released.
    let rx = Mutex::new(rx);
    let task = crate::runtime::spawn(async move {
        let _ = tx.send(build.await);
    });
    let result = loop {
        match py.detach(|| sf_manifest::sync::lock(&rx).recv_timeout(TICK)) {
            Ok(r) => break r,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(Failed {
                    kind: ErrorKind::Internal,
                    message: "the build task ended without a result".into(),
                });
            }
        }
        let interim = py.check_signals().and_then(|()| match callback {
            Some(c) => watch.report(c),
            None => Ok(()),
        });
        if let Err(e) = interim {
            task.abort();
            return Err(e);
        }
    };
    if let Some(c) = callback {
        watch.report(c)?;
    }
    result.map_err(to_py)
}

fn options(watch: &Arc<Watch>, rebuild: bool, force: bool) -> BuildOptions {
    BuildOptions {
        progress: Some(Arc::clone(watch) as Arc<dyn ProgressSink>),
        rebuild,
        force,
        ..BuildOptions::default()
    }
}

async fn finish(outcome: Outcome, prefix: String, storage: sf_manifest::StorageOptions) -> Done {
    let shard_rows = match &outcome {
        Outcome::Built(s) => shard_rows(&prefix, &storage, &s.manifest_ref).await,
        _ => None,
    };
    Done {
        outcome,
        prefix,
        shard_rows,
    }
}

/// `shardforge.write`'s native part: `job` is the JSON of a job's
/// sections (no `[input]`), `data` an Arrow stream or, with `pairs`, an
/// iterable of `(key, value)` pairs. Returns the result as a dict.
#[pyfunction]
#[pyo3(name = "_write", signature = (data, job, *, pairs, rebuild, force, progress=None))]
pub(crate) fn write<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    job: &str,
    pairs: bool,
    rebuild: bool,
    force: bool,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let job = job_from_json(job)?;
    let error = Arc::new(Mutex::new(None));
    let (schema, source): (SchemaRef, Box<dyn BatchSource>) = if pairs {
        let p = Pairs::new(data, &job.key_col, Arc::clone(&error))?;
        (Arc::clone(&p.schema), Box::new(p))
    } else {
        let reader = crate::arrow_stream::stream_reader(data).map_err(|e| {
            let why = PyTypeError::new_err(format!(
                "data exports no Arrow stream (`__arrow_c_stream__`): a PyArrow table or RecordBatchReader, a Polars or pandas DataFrame, a DuckDB result, or an iterable of (key, value) pairs ({e})"
            ));
            why.set_cause(py, Some(e));
            why
        })?;
        (reader.schema(), Box::new(reader))
    };
    let table = StreamingTable::try_new(Arc::clone(&schema), vec![Arc::new(Replay::new(schema, source))])
        .map_err(|e| PyValueError::new_err(format!("data: {e}")))?;
    let watch = Arc::new(Watch::default());
    let opts = options(&watch, rebuild, force);
    let build = async move {
        let prefix = job.output.prefix.clone();
        let storage = job.storage_options();
        let outcome = sf_writer::job::build_table(&job, Arc::new(table), &Embedded::default(), &opts)
            .await
            .map_err(failed)?;
        Ok(finish(outcome, prefix, storage).await)
    };
    let done = run(py, &watch, progress.as_ref(), build);
    if let Some(e) = sf_manifest::sync::lock(&error).take() {
        // The iterable's own exception (a generator's error, a value of
        // the wrong type) says more than the build's report of it.
        if done.is_err() {
            return Err(e);
        }
    }
    result(py, &done?)
}

/// `shardforge.write_job`'s native part: the job file at `path`, with the
/// process's `SF_SECTION__KEY` variables and then `overrides` (pairs of
/// the same form) applied, run as `sf-write --config` runs it, embedded.
#[pyfunction]
#[pyo3(name = "_write_job", signature = (path, overrides, *, rebuild, force, progress=None))]
pub(crate) fn write_job<'py>(
    py: Python<'py>,
    path: PathBuf,
    overrides: Vec<(String, String)>,
    rebuild: bool,
    force: bool,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let env: Vec<(String, String)> = std::env::vars().chain(overrides).collect();
    let mut job = py.detach(|| JobFile::load(&path, env)).map_err(to_py)?;
    if let Some(s) = job.scheduler() {
        return Err(ConfigError::new_err(format!(
            "cluster.scheduler: the job runs on the cluster at {s}; the Python package builds in process (run it with sf-write)"
        )));
    }
    // As sf-write: the run id is fixed before the build.
    if job.build.output.run_id.is_none() {
        job.build.output.run_id = Some(sf_manifest::RunId::generate().as_str().to_string());
    }
    let watch = Arc::new(Watch::default());
    let opts = options(&watch, rebuild, force);
    let build = async move {
        let prefix = job.destination().to_string();
        let storage = job.build.storage_options();
        let outcome = sf_warehouse::run_job(&job, &Embedded::default(), &opts)
            .await
            .map_err(failed)?;
        Ok(finish(outcome, prefix, storage).await)
    };
    let done = run(py, &watch, progress.as_ref(), build)?;
    result(py, &done)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The result as a dict of plain values (`shardforge.WriteResult` wraps it).
fn result<'py>(py: Python<'py>, done: &Done) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("prefix", &done.prefix)?;
    match &done.outcome {
        Outcome::Built(s) => {
            d.set_item("outcome", "built")?;
            d.set_item("run_id", s.run_id.as_str())?;
            d.set_item("manifest_url", &s.manifest_ref)?;
            d.set_item("rows", s.rows)?;
            d.set_item("duplicates", s.duplicates)?;
            d.set_item("bytes", s.bytes)?;
            d.set_item("num_dbs", s.num_dbs)?;
            d.set_item("shards_written", s.shards_written)?;
            d.set_item("shard_rows", done.shard_rows.clone())?;
            d.set_item("retries", s.retries)?;
            d.set_item("gates", s.gates.iter().map(ToString::to_string).collect::<Vec<_>>())?;
            let t = PyDict::new(py);
            t.set_item("plan", secs(s.plan_time))?;
            t.set_item("write", secs(s.write_time))?;
            t.set_item("publish", secs(s.publish_time))?;
            t.set_item("total", secs(s.total_time))?;
            t.set_item("input", s.phases.input.map(secs))?;
            t.set_item("build_sum", secs(s.phases.build_sum))?;
            t.set_item("upload_sum", secs(s.phases.upload_sum))?;
            t.set_item("verify", secs(s.phases.verify))?;
            t.set_item("cleanup", secs(s.phases.cleanup))?;
            d.set_item("times", t)?;
        }
        Outcome::AlreadyPublished(a) => {
            d.set_item("outcome", "already_published")?;
            d.set_item("run_id", a.run_id.as_str())?;
            d.set_item("manifest_url", &a.manifest_ref)?;
            d.set_item("rows", a.rows)?;
            d.set_item("num_dbs", a.num_dbs)?;
            d.set_item("shards_written", a.shards_written)?;
        }
        Outcome::Unchanged(why) => {
            d.set_item("outcome", "unchanged")?;
            d.set_item("message", why)?;
        }
        Outcome::DryRun(plan) => {
            d.set_item("outcome", "dry_run")?;
            d.set_item("run_id", plan.run_id.as_str())?;
            d.set_item("num_dbs", plan.num_dbs)?;
        }
    }
    Ok(d)
}
