//! The driver's side of a Ballista query: submit the logical plan, follow
//! the job, fetch the result partitions.
//!
//! It does what Ballista's own `DistributedQueryExec` does, with one
//! difference that matters when an executor is lost: every result
//! partition is read exactly once.
//!
//! Ballista 52 keeps appending the final stage's result locations when
//! that stage runs again after an executor was lost, and never drops the
//! old ones. A finished job can therefore list a partition twice (its
//! first and its second run) or at a dead executor. The stock client reads
//! every listed location, so it fails on the dead executor's, and for an
//! ordinary query it would return a re-run partition's rows twice. Here
//! the locations of one partition are alternatives: the most recent one
//! that opens is read, the others are skipped. For the shard write that
//! means one result per shard; an attempt whose result is not read is a
//! loser, deleted after publishing.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use ballista_core::client::BallistaClient;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::execute_query_params::Query;
use ballista_core::serde::protobuf::get_job_status_result::FlightProxy;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    ExecuteQueryParams, GetJobStatusResult, KeyValuePair, PartitionLocation, RemoveSessionParams, SuccessfulJob,
    job_status,
};
use ballista_core::serde::scheduler::PartitionId;
use ballista_core::utils::{GrpcClientConfig, create_grpc_client_endpoint};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::{QueryPlanner, SessionState};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::SessionConfig;
use datafusion_proto::logical_plan::{AsLogicalPlan, LogicalExtensionCodec};
use datafusion_proto::protobuf::LogicalPlanNode;
use futures::{StreamExt, TryStreamExt};

/// Plans every query of a cluster session as one Ballista job.
#[derive(Debug)]
pub struct ClusterQueryPlanner {
    scheduler_url: String,
    codec: Arc<dyn LogicalExtensionCodec>,
}

impl ClusterQueryPlanner {
    /// A planner submitting to `scheduler_url` (`http://host:port`), plans
    /// encoded with `codec`.
    pub fn new(scheduler_url: String, codec: Arc<dyn LogicalExtensionCodec>) -> Self {
        ClusterQueryPlanner { scheduler_url, codec }
    }
}

#[async_trait]
impl QueryPlanner for ClusterQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &SessionState,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if let LogicalPlan::EmptyRelation(e) = logical_plan
            && !e.produce_one_row
        {
            return Ok(Arc::new(EmptyExec::new(logical_plan.schema().inner().clone())));
        }
        if reads_only_information_schema(logical_plan) {
            // The listing describes this session's catalogs (the scheduler
            // has none of them): answer it here, as Ballista's own client does.
            return DefaultPhysicalPlanner::default()
                .create_physical_plan(logical_plan, session_state)
                .await;
        }
        Ok(Arc::new(ClusterQueryExec::new(
            self.scheduler_url.clone(),
            logical_plan.clone(),
            Arc::clone(&self.codec),
            session_state.session_id().to_string(),
        )))
    }
}

/// Whether every table `plan` scans is in `information_schema` (and it
/// scans at least one).
fn reads_only_information_schema(plan: &LogicalPlan) -> bool {
    let mut scans = 0usize;
    let mut local = true;
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            scans += 1;
            if scan.table_name.schema() != Some("information_schema") {
                local = false;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    local && scans > 0
}

/// One Ballista job; its output is the job's result partitions, one
/// stream.
#[derive(Debug)]
pub struct ClusterQueryExec {
    scheduler_url: String,
    plan: LogicalPlan,
    codec: Arc<dyn LogicalExtensionCodec>,
    session_id: String,
    properties: PlanProperties,
}

impl ClusterQueryExec {
    fn new(
        scheduler_url: String,
        plan: LogicalPlan,
        codec: Arc<dyn LogicalExtensionCodec>,
        session_id: String,
    ) -> Self {
        let schema: SchemaRef = plan.schema().inner().clone();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        ClusterQueryExec {
            scheduler_url,
            plan,
            codec,
            session_id,
            properties,
        }
    }
}

impl DisplayAs for ClusterQueryExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterQueryExec: scheduler={}", self.scheduler_url)
    }
}

impl ExecutionPlan for ClusterQueryExec {
    fn name(&self) -> &str {
        "ClusterQueryExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &PlanProperties {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        sf_warehouse::table::leaf(self, children)
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "ClusterQueryExec has one partition, not {partition}"
            )));
        }
        let mut buf = vec![];
        LogicalPlanNode::try_from_logical_plan(&self.plan, self.codec.as_ref())
            .and_then(|node| {
                node.try_encode(&mut buf)
                    .map_err(|e| DataFusionError::Internal(format!("encoding the plan: {e}")))
            })
            .map_err(|e| DataFusionError::Internal(format!("serialising the plan for the cluster: {e}")))?;
        let config = context.session_config().clone();
        let settings = config
            .options()
            .entries()
            .into_iter()
            .map(|e| KeyValuePair {
                key: e.key,
                value: e.value,
            })
            .collect();
        let query = ExecuteQueryParams {
            query: Some(Query::LogicalPlan(buf)),
            settings,
            session_id: self.session_id.clone(),
            operation_id: sf_manifest::format::ids::unique_hex(),
        };
        let scheduler_url = self.scheduler_url.clone();
        let results = futures::stream::once(run_job(scheduler_url, query, config)).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), results)))
    }
}

/// How `sf-scheduler` begins the reason of a job it fails because every
/// executor is lost; such a failure is the engine being unavailable (an
/// outage, exit 5), not the build failing.
pub const CLUSTER_LOST: &str = "every executor of the cluster is lost";

/// The error of a job the scheduler failed with `reason`: the engine being
/// unavailable when the scheduler lost every executor; the failure of a
/// task with the kind and message its executor gave it
/// ([`crate::task_error`]); else an engine failure. The reason is the only
/// channel across the processes.
fn job_failed(job_id: &str, reason: &str) -> DataFusionError {
    if let Some(at) = reason.find(CLUSTER_LOST) {
        return unavailable(format!("cluster unavailable: {}", &reason[at..]));
    }
    match crate::task_error::decode(reason) {
        Some((kind, message)) => DataFusionError::External(Box::new(sf_writer::Error::Task { message, kind })),
        None => execution(format!("Job {job_id} failed: {reason}")),
    }
}

/// The engine being unavailable (exit 5): the scheduler cannot be reached,
/// or was lost while the job ran.
fn unavailable(message: impl Into<String>) -> DataFusionError {
    DataFusionError::External(Box::new(sf_writer::Error::EngineUnavailable {
        message: message.into(),
    }))
}

/// A gRPC failure talking to the scheduler while `doing`: the scheduler
/// being unavailable when the call did not reach it or was cut off, an
/// engine failure when the scheduler answered with an error.
fn scheduler_status(doing: &str, url: &str, status: &tonic::Status) -> DataFusionError {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted => {
            unavailable(format!("scheduler at {url} lost while {doing}: {}", status.message()))
        }
        // A failure of the connection itself (no answer of the scheduler's
        // carries a source): something that does not speak the
        // scheduler's gRPC listens there, or the connection broke.
        _ if std::error::Error::source(status).is_some() => unavailable(format!(
            "scheduler at {url} failed while {doing}: {}; is that sf-scheduler's gRPC port?",
            status.message()
        )),
        _ => execution(format!("{doing}: {}", status.message())),
    }
}

fn execution(e: impl fmt::Display) -> DataFusionError {
    DataFusionError::Execution(e.to_string())
}

/// A client of the scheduler at `$url` (a `&str`), with the session
/// config's gRPC settings (timeouts, message sizes, endpoint override,
/// metadata), in a function returning `DfResult` (failures return from
/// it). A macro so the client's service type (tonic's) need not be named
/// here.
macro_rules! scheduler_client {
    ($url:expr, $config:expr) => {{
        let url: &str = $url;
        let config: &SessionConfig = $config;
        let ballista = config.ballista_config();
        let max_message_size = ballista.default_grpc_client_max_message_size();
        let mut endpoint = create_grpc_client_endpoint(url.to_string(), Some(&GrpcClientConfig::from(&ballista)))
            .map_err(|e| execution(format!("scheduler address {url}: {e}")))?;
        if let Some(customize) = config.ballista_override_create_grpc_client_endpoint() {
            endpoint = customize
                .configure_endpoint(endpoint)
                .map_err(|e| execution(format!("scheduler endpoint: {e}")))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| unavailable(format!("cannot reach the scheduler at {url}: {e}")))?;
        SchedulerGrpcClient::with_interceptor(channel, config.ballista_grpc_interceptor().as_ref().clone())
            .max_encoding_message_size(max_message_size)
            .max_decoding_message_size(max_message_size)
    }};
}

/// Asks the scheduler at `scheduler_url` to forget session `session_id`
/// (the state it keeps for the session's jobs).
pub async fn remove_session(scheduler_url: &str, session_id: &str, config: &SessionConfig) -> DfResult<()> {
    let mut scheduler = scheduler_client!(scheduler_url, config);
    scheduler
        .remove_session(RemoveSessionParams {
            session_id: session_id.to_string(),
        })
        .await
        .map_err(|e| execution(format!("removing session {session_id}: {}", e.message())))?;
    Ok(())
}

/// Submits the job, follows it to its end, and returns its results.
async fn run_job(
    scheduler_url: String,
    query: ExecuteQueryParams,
    config: SessionConfig,
) -> DfResult<futures::stream::BoxStream<'static, DfResult<datafusion::arrow::array::RecordBatch>>> {
    let max_message_size = config.ballista_config().default_grpc_client_max_message_size();
    let mut scheduler = scheduler_client!(&scheduler_url, &config);
    let mut updates = scheduler
        .execute_query_push(query)
        .await
        .map_err(|e| scheduler_status("submitting the job", &scheduler_url, &e))?
        .into_inner();
    let mut announced = false;
    let (job, flight_proxy) = loop {
        let update: GetJobStatusResult = updates
            .message()
            .await
            .map_err(|e| scheduler_status("following the job", &scheduler_url, &e))?
            .ok_or_else(|| {
                unavailable(format!(
                    "scheduler at {scheduler_url} lost: it closed the job's status stream before the job ended"
                ))
            })?;
        let job_id = update.status.as_ref().map(|s| s.job_id.clone()).unwrap_or_default();
        match update.status.and_then(|s| s.status) {
            Some(job_status::Status::Failed(f)) => return Err(job_failed(&job_id, &f.error)),
            Some(job_status::Status::Successful(job)) => {
                tracing::debug!(
                    "cluster job {job_id} finished in {} ms",
                    job.ended_at.saturating_sub(job.started_at)
                );
                break (job, update.flight_proxy);
            }
            Some(job_status::Status::Running(_)) if !announced => {
                announced = true;
                tracing::debug!("cluster job {job_id} is running");
            }
            _ => {}
        }
    };
    let partitions = result_partitions(job);
    let transport = Transport {
        scheduler_url,
        flight_proxy,
        max_message_size,
        use_tls: config.ballista_use_tls(),
        customize: config.ballista_override_create_grpc_client_endpoint(),
    };
    let transport = Arc::new(transport);
    Ok(futures::stream::iter(partitions)
        .then(move |locations| {
            let transport = Arc::clone(&transport);
            async move { transport.open_one(locations).await }
        })
        .try_flatten()
        .boxed())
}

/// The job's result locations grouped by result partition, each group
/// ordered most recent first (Ballista appends re-runs at the end).
fn result_partitions(job: SuccessfulJob) -> Vec<Vec<PartitionLocation>> {
    let mut by_partition: BTreeMap<u32, Vec<PartitionLocation>> = BTreeMap::new();
    for location in job.partition_location {
        let id = location.partition_id.as_ref().map_or(0, |p| p.partition_id);
        by_partition.entry(id).or_default().push(location);
    }
    by_partition
        .into_values()
        .map(|mut v| {
            v.reverse();
            v
        })
        .collect()
}

struct Transport {
    scheduler_url: String,
    flight_proxy: Option<FlightProxy>,
    max_message_size: usize,
    use_tls: bool,
    customize: Option<Arc<ballista_core::extension::BallistaConfigGrpcEndpoint>>,
}

impl Transport {
    /// Opens the first of `locations` that answers.
    async fn open_one(&self, locations: Vec<PartitionLocation>) -> DfResult<SendableRecordBatchStream> {
        let mut failures = vec![];
        for location in locations {
            match self.open(&location).await {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    tracing::warn!("result location unavailable, trying the next one: {e}");
                    failures.push(e.to_string());
                }
            }
        }
        Err(execution(format!(
            "no copy of a result partition could be read: {}",
            failures.join("; ")
        )))
    }

    async fn open(&self, location: &PartitionLocation) -> DfResult<SendableRecordBatchStream> {
        let executor = location
            .executor_meta
            .as_ref()
            .ok_or_else(|| DataFusionError::Internal("a result location without an executor".into()))?;
        let partition = location
            .partition_id
            .as_ref()
            .ok_or_else(|| DataFusionError::Internal("a result location without a partition id".into()))?;
        let (host, port) = match &self.flight_proxy {
            Some(FlightProxy::External(address)) => split_host_port(&format!("http://{address}"))?,
            Some(FlightProxy::Local(true)) => split_host_port(&self.scheduler_url)?,
            Some(FlightProxy::Local(false)) | None => (executor.host.clone(), executor.port as u16),
        };
        let mut client =
            BallistaClient::try_new(&host, port, self.max_message_size, self.use_tls, self.customize.clone())
                .await
                .map_err(|e| execution(format!("executor {} at {host}:{port}: {e}", executor.id)))?;
        let id = PartitionId {
            job_id: partition.job_id.clone(),
            stage_id: partition.stage_id as usize,
            partition_id: partition.partition_id as usize,
        };
        client
            .fetch_partition(
                &executor.id,
                &id,
                &location.path,
                &executor.host,
                executor.port as u16,
                true,
            )
            .await
            .map_err(|e| execution(format!("executor {} at {host}:{port}: {e}", executor.id)))
    }
}

fn split_host_port(address: &str) -> DfResult<(String, u16)> {
    let url = url::Url::parse(address).map_err(|e| execution(format!("{address:?}: {e}")))?;
    let host = url
        .host_str()
        .ok_or_else(|| execution(format!("no host in {address:?}")))?
        .to_string();
    let port = url.port().ok_or_else(|| execution(format!("no port in {address:?}")))?;
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use ballista_core::serde::protobuf::ExecutorMetadata;

    use super::*;

    #[test]
    fn a_job_failed_for_want_of_executors_is_the_engine_unavailable() {
        use sf_manifest::{Classified, ErrorKind};
        let lost = job_failed(
            "j1",
            &format!("{CLUSTER_LOST}: no executor has been registered for 10s while job j1 ran"),
        );
        let e = sf_writer::Error::from(lost);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        let m = e.to_string();
        assert!(
            m.starts_with("cluster unavailable: every executor") && m.ends_with("nothing was published"),
            "{m}"
        );
        let other = sf_writer::Error::from(job_failed("j2", "a task panicked"));
        assert_eq!(other.kind(), ErrorKind::Internal);
        assert!(other.to_string().contains("Job j2 failed: a task panicked"), "{other}");
    }

    #[test]
    fn a_failed_task_keeps_the_kind_its_executor_gave_it() {
        use sf_manifest::{Classified, ErrorKind};
        for (kind, message) in [
            (
                ErrorKind::Unavailable,
                "shard 2 attempt 0: uploading: 503 Service Unavailable",
            ),
            (ErrorKind::Data, "shard 1: duplicate key 7 (on_duplicate = \"error\")"),
            (ErrorKind::Conflict, "shard 0: claim lost"),
        ] {
            let executor = format!(
                "Task failed due to runtime execution error: {:?}",
                DataFusionError::Execution(crate::task_error::encode(kind, message))
            );
            let reason = format!("Job failed due to stage 2 failed: {executor}\n");
            let e = sf_writer::Error::from(job_failed("j3", &reason));
            assert_eq!(e.kind(), kind, "{e}");
            assert_eq!(e.to_string(), message);
        }
    }

    #[test]
    fn a_scheduler_cut_off_is_the_engine_unavailable_and_its_refusal_is_not() {
        use sf_manifest::{Classified, ErrorKind};
        let lost = sf_writer::Error::from(scheduler_status(
            "following the job",
            "http://127.0.0.1:1",
            &tonic::Status::unavailable("connection reset"),
        ));
        assert_eq!(lost.kind(), ErrorKind::Unavailable, "{lost}");
        assert!(lost.to_string().contains("connection reset"), "{lost}");
        let refused = sf_writer::Error::from(scheduler_status(
            "submitting the job",
            "http://127.0.0.1:1",
            &tonic::Status::invalid_argument("bad plan"),
        ));
        assert_eq!(refused.kind(), ErrorKind::Internal, "{refused}");
    }

    fn location(partition: u32, executor: &str) -> PartitionLocation {
        PartitionLocation {
            map_partition_id: partition,
            partition_id: Some(ballista_core::serde::protobuf::PartitionId {
                job_id: "j".into(),
                stage_id: 2,
                partition_id: partition,
            }),
            executor_meta: Some(ExecutorMetadata {
                id: executor.into(),
                host: "127.0.0.1".into(),
                port: 1,
                grpc_port: 2,
                specification: None,
            }),
            partition_stats: None,
            path: format!("/{executor}/{partition}"),
        }
    }

    #[test]
    fn a_rerun_partition_is_one_group_newest_first() {
        let job = SuccessfulJob {
            partition_location: vec![
                location(0, "a"),
                location(1, "dead"),
                location(1, "b"),
                location(2, "a"),
            ],
            ..Default::default()
        };
        let groups = result_partitions(job);
        let ids: Vec<Vec<String>> = groups
            .iter()
            .map(|g| g.iter().map(|l| l.path.clone()).collect())
            .collect();
        assert_eq!(ids, vec![vec!["/a/0"], vec!["/b/1", "/dead/1"], vec!["/a/2"]]);
    }
}
