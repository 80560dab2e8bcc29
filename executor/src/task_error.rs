//! The class of a task's failure, from the executor that ran it to the
//! driver that submitted the job.
//!
//! Ballista carries a failed task back as text only: the executor formats
//! the error (with `{:?}`, quoting and escaping it), the scheduler prefixes
//! it with the stage that failed and hands the driver that string as the
//! job's failure reason. The [`ErrorKind`] ShardForge gave the failure on
//! the executor (storage unavailable, bad data, a conflict) would be lost,
//! and every failure of a cluster build would exit 1.
//!
//! So each executor runs its stages through [`ShardForgeExecutionEngine`],
//! which puts [`MapErrors::classifying`] under the stage's shuffle writer: a failure
//! of the stage's plan is classified there, on the executor, while it is
//! still the typed error, and travels on as a marker at the end of the
//! text:
//!
//! ```text
//! <the error, readable> [sf-task-error <kind> <the error, percent-encoded>]
//! ```
//!
//! The encoded part uses only letters, digits and `-._~%`, which no
//! escaping on the way changes; the driver takes the last marker of the
//! reason ([`decode`]) and fails with the kind and the exact message. A
//! reason without a marker (a Ballista failure of its own, a stock
//! executor) stays an engine failure.
//!
//! Failures Ballista itself acts on pass through untouched: its own
//! errors, such as a failed shuffle fetch (shuffle readers' errors are
//! kept recognisable through the shard writer, which converts its input's
//! errors), and a local I/O error (the task is retried).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use ballista_core::error::BallistaError;
use ballista_core::execution_plans::ShuffleReaderExec;
use ballista_executor::execution_engine::{DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::TryStreamExt;
use sf_manifest::{Classified, ErrorKind, chain};

/// What begins the marker in a task's failure text.
pub const MARKER: &str = "[sf-task-error ";

/// Ballista's execution engine with every stage's failures classified
/// ([`MapErrors::classifying`] under the shuffle writer).
#[derive(Debug, Default)]
pub struct ShardForgeExecutionEngine;

impl ExecutionEngine for ShardForgeExecutionEngine {
    fn create_query_stage_exec(
        &self,
        job_id: String,
        stage_id: usize,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
    ) -> DfResult<Arc<dyn QueryStageExecutor>> {
        let children = plan.children();
        let plan = match children.as_slice() {
            [input] => {
                let input = keep_fetch_failures(Arc::clone(input))?;
                let wrapped: Arc<dyn ExecutionPlan> = Arc::new(MapErrors::classifying(input));
                Arc::clone(&plan).with_new_children(vec![wrapped])?
            }
            _ => plan,
        };
        DefaultExecutionEngine {}.create_query_stage_exec(job_id, stage_id, plan, work_dir)
    }
}

/// A plan node that passes its input through and maps its failures with
/// `map`: [`MapErrors::classifying`] (see the [module](self)) and the
/// wrapper that keeps shuffle readers' failures recognisable as Ballista's.
#[derive(Debug)]
pub struct MapErrors {
    name: &'static str,
    map: fn(DataFusionError) -> DataFusionError,
    input: Arc<dyn ExecutionPlan>,
}

impl MapErrors {
    /// The node under a stage's shuffle writer: `input`'s failures
    /// classified ([`classify`]).
    pub fn classifying(input: Arc<dyn ExecutionPlan>) -> Self {
        MapErrors {
            name: "TaskErrors",
            map: classify,
            input,
        }
    }

    /// A shuffle reader whose Ballista errors surface as DataFusion's
    /// `External` (see [`keep_fetch_failures`]).
    fn fetch_failures(input: Arc<dyn ExecutionPlan>) -> Self {
        MapErrors {
            name: "FetchFailures",
            map: unwrap_ballista,
            input,
        }
    }
}

impl DisplayAs for MapErrors {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl ExecutionPlan for MapErrors {
    fn name(&self) -> &str {
        self.name
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &PlanProperties {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        match <[_; 1]>::try_from(children) {
            Ok([input]) => Ok(Arc::new(MapErrors {
                name: self.name,
                map: self.map,
                input,
            })),
            Err(c) => Err(DataFusionError::Internal(format!(
                "{} has one input, not {}",
                self.name,
                c.len()
            ))),
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let stream = self.input.execute(partition, context).map_err(self.map)?;
        let schema = stream.schema();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.map_err(self.map),
        )))
    }
}

/// `plan` with every shuffle reader's failures kept recognisable as
/// Ballista's: a reader reports a failed fetch inside an Arrow error,
/// which a consumer that converts its input's errors (the shard writer)
/// would turn into text; as DataFusion's `External` it keeps the error
/// itself as its cause, so [`classify`] lets it pass.
fn keep_fetch_failures(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    plan.transform_up(|node| {
        if node.as_any().is::<ShuffleReaderExec>() {
            Ok(Transformed::yes(
                Arc::new(MapErrors::fetch_failures(node)) as Arc<dyn ExecutionPlan>
            ))
        } else {
            Ok(Transformed::no(node))
        }
    })
    .map(|t| t.data)
}

/// A Ballista error inside an Arrow error, as DataFusion's `External`.
fn unwrap_ballista(e: DataFusionError) -> DataFusionError {
    match e {
        DataFusionError::ArrowError(a, context) => match *a {
            arrow::error::ArrowError::ExternalError(inner) if inner.is::<BallistaError>() => {
                DataFusionError::External(inner)
            }
            other => DataFusionError::ArrowError(Box::new(other), context),
        },
        other => other,
    }
}

/// `e` as the text a task's failure travels as, with its kind; failures
/// Ballista acts on itself unchanged.
pub fn classify(e: DataFusionError) -> DataFusionError {
    if ballistas_own(&e) {
        return e;
    }
    let ours = sf_writer::Error::from(e);
    DataFusionError::Execution(encode(ours.kind(), &chain(&ours)))
}

/// Whether Ballista handles `e` itself: a local I/O error (retried) or
/// any of its own errors (a failed shuffle fetch, which reruns the map
/// stage).
fn ballistas_own(e: &DataFusionError) -> bool {
    if matches!(e, DataFusionError::IoError(_)) {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<BallistaError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn kind_from_name(name: &str) -> Option<ErrorKind> {
    [
        ErrorKind::Config,
        ErrorKind::Routing,
        ErrorKind::Data,
        ErrorKind::Conflict,
        ErrorKind::Unavailable,
        ErrorKind::Gate,
        ErrorKind::Internal,
    ]
    .into_iter()
    .find(|k| k.to_string() == name)
}

/// `message` readable, then the marker with `kind` and `message`
/// percent-encoded.
pub fn encode(kind: ErrorKind, message: &str) -> String {
    format!("{message} {MARKER}{kind} {}]", percent_encode(message))
}

/// The kind and message of the last marker in `text` (a job's failure
/// reason), if there is a well-formed one.
pub fn decode(text: &str) -> Option<(ErrorKind, String)> {
    let at = text.rfind(MARKER)?;
    let rest = &text[at + MARKER.len()..];
    let end = rest.find(']')?;
    let (kind, message) = rest[..end].split_once(' ')?;
    Some((kind_from_name(kind)?, percent_decode(message)?))
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3 / 2);
    for b in text.bytes() {
        if unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if unreserved(b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_survives_the_way_through_ballista() {
        let message =
            "shard 3 attempt 0: uploading s3://b/p/shards/x: Generic S3 error: \"503\" ]\n[sf-task-error data x]";
        let text = encode(ErrorKind::Unavailable, message);
        // The executor's `{:?}`, the scheduler's prefix and its own `{:?}`.
        let executor = format!(
            "Task failed due to runtime execution error: {:?}",
            DataFusionError::Execution(text.clone())
        );
        let reason = format!("Job failed due to stage 2 failed: {:?}\n", executor);
        assert_eq!(decode(&reason), Some((ErrorKind::Unavailable, message.to_string())));
        for kind in [
            ErrorKind::Data,
            ErrorKind::Conflict,
            ErrorKind::Routing,
            ErrorKind::Internal,
        ] {
            assert_eq!(decode(&encode(kind, "x y")), Some((kind, "x y".to_string())));
        }
    }

    #[test]
    fn text_without_a_good_marker_decodes_to_nothing() {
        assert_eq!(decode("Job failed: a task panicked"), None);
        assert_eq!(decode("[sf-task-error unavailable"), None);
        assert_eq!(decode("[sf-task-error weird abc]"), None);
        assert_eq!(decode("[sf-task-error data %ZZ]"), None);
        assert_eq!(decode("[sf-task-error data a\"b]"), None);
    }

    #[test]
    fn failures_are_classified_on_the_executor_and_ballistas_own_pass() {
        let store = object_store::Error::Generic {
            store: "S3",
            source: "connection refused".into(),
        };
        let e = classify(DataFusionError::ObjectStore(Box::new(store)));
        let (kind, message) = decode(&e.to_string()).expect("a marker");
        assert_eq!(kind, ErrorKind::Unavailable);
        assert!(message.contains("connection refused"), "{message}");
        let data = classify(sf_writer::Error::Input("input x.csv: the file is empty".into()).into());
        assert_eq!(decode(&data.to_string()).map(|d| d.0), Some(ErrorKind::Data));
        let io = classify(DataFusionError::IoError(std::io::Error::other("disk")));
        assert!(matches!(io, DataFusionError::IoError(_)));
        let fetch = DataFusionError::External(Box::new(BallistaError::FetchFailed("e".into(), 1, 0, "gone".into())));
        let passed = classify(fetch);
        assert!(decode(&passed.to_string()).is_none(), "{passed}");
        // A failed fetch as a shuffle reader reports it, through the shard
        // writer's conversion of its input's errors: still Ballista's.
        let from_reader = DataFusionError::ArrowError(
            Box::new(arrow::error::ArrowError::ExternalError(Box::new(
                BallistaError::FetchFailed("e".into(), 1, 0, "gone".into()),
            ))),
            None,
        );
        let in_writer = sf_writer::Error::from(unwrap_ballista(from_reader));
        let passed = classify(in_writer.into());
        assert!(decode(&passed.to_string()).is_none(), "{passed}");
    }
}
