//! The extension without a cluster: codecs round-trip ShardForge's nodes
//! and functions without credentials, and the scheduler's distributed plan
//! has the shard layout at its stage boundary.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use async_trait::async_trait;
use ballista_core::execution_plans::{ShuffleWriter, UnresolvedShuffleExec};
use ballista_core::extension::SessionConfigHelperExt;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::planner::{DefaultDistributedPlanner, DistributedPlanner};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::TaskContext;
use datafusion::execution::context::SessionState;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning, displayable};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::logical_plan::AsLogicalPlan;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use sf_writer::build::shard_task::ShardWriteExec;
use sf_writer::config::JobConfig;
use sf_writer::job::{Engine, prepare};
use sf_writer::plan::node::ShardWriteNode;
use sf_writer::plan::udf::PARTITION_KEY_COL;

use super::*;
use crate::codec::{ShardForgeLogicalCodec, ShardForgePhysicalCodec};
use crate::engine::{ClusterEngine, SchedulerUrl};

const SECRET: &str = "hush-4b1d9e";
const NUM_DBS: u32 = 8;

fn write_input(dir: &std::path::Path) -> String {
    let ids: Vec<i64> = (0..500).collect();
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
        (
            "name",
            Arc::new(StringArray::from_iter_values(ids.iter().map(|i| format!("user-{i}")))) as ArrayRef,
        ),
    ])
    .expect("batch");
    let path = dir.join("users.parquet");
    let file = std::fs::File::create(&path).expect("create");
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    path.to_string_lossy().into_owned()
}

fn job(input: &str) -> JobConfig {
    let text = format!(
        "key_col = \"id\"\n[input]\nformat = \"parquet\"\npath = \"{input}\"\n[routing]\nnum_dbs = {NUM_DBS}\n\
         [output]\nprefix = \"memory://cluster-unit/snap\"\n[write]\nwork_dir = \"/driver/only\"\n"
    );
    sf_writer::config::parse(
        &text,
        "job.toml",
        std::path::Path::new("/"),
        Vec::<(String, String)>::new(),
    )
    .expect("job")
}

/// Sessions as the scheduler builds them from what a client sends.
#[derive(Debug)]
struct SchedulerSide {
    config: SessionConfig,
}

impl SchedulerSide {
    fn for_job(job: &JobConfig) -> Self {
        let client = ClusterEngine::new(SchedulerUrl::parse("df://127.0.0.1:1").expect("url"))
            .session_config(job)
            .expect("client config");
        let scheduler = register(SchedulerConfig::default());
        let producer = scheduler.override_config_producer.expect("config producer");
        SchedulerSide {
            config: producer().update_from_key_value_pair(&client.to_key_value_pairs()),
        }
    }

    fn context(&self) -> SessionContext {
        let builder = register(SchedulerConfig::default())
            .override_session_builder
            .expect("session builder");
        SessionContext::new_with_state(builder(self.config.clone()).expect("state"))
    }
}

#[async_trait]
impl Engine for SchedulerSide {
    fn describe(&self) -> String {
        "scheduler side".into()
    }

    fn runs_locally(&self) -> bool {
        true
    }

    async fn session(&self, _job: &JobConfig) -> sf_writer::Result<SessionContext> {
        Ok(self.context())
    }

    fn base_config(&self) -> SessionConfig {
        self.config.clone()
    }

    async fn connect(&self, _config: SessionConfig) -> sf_writer::Result<SessionContext> {
        Ok(self.context())
    }

    fn job_state(&self, _session: &SessionContext, _job: &JobConfig) -> sf_writer::Result<SessionState> {
        Ok(self.context().state())
    }
}

fn find<T: 'static>(plan: &Arc<dyn ExecutionPlan>) -> Vec<Arc<dyn ExecutionPlan>> {
    let mut found = vec![];
    plan.apply(|node| {
        if node.as_any().is::<T>() {
            found.push(Arc::clone(node));
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("walk");
    found
}

#[tokio::test]
async fn the_distributed_plan_puts_one_shard_per_task_and_ships_no_secret() {
    let dir = tempfile::tempdir().expect("tmp");
    let job = job(&write_input(dir.path()));
    let scheduler = SchedulerSide::for_job(&job);
    let mut prepared = prepare(&job, &scheduler).await.expect("prepare");
    // What an S3 job with a credential in [storage] would carry on the
    // driver (memory:// takes no options, and only the codecs look here).
    let options = &mut prepared.spec.storage_options;
    options.insert("aws_secret_access_key".into(), SECRET.into());
    options.insert("region".into(), "us-east-1".into());
    assert_eq!(
        prepared.spec.work_dir.as_deref(),
        Some(std::path::Path::new("/driver/only"))
    );
    let node = ShardWriteNode::new(Arc::new(prepared.spec.clone()), prepared.routed.into_unoptimized_plan())
        .expect("node")
        .into_plan();

    // Client -> scheduler: the logical plan, through the logical codec.
    let logical = ShardForgeLogicalCodec::default();
    let bytes = {
        let mut buf = vec![];
        datafusion_proto::protobuf::LogicalPlanNode::try_from_logical_plan(&node, &logical)
            .expect("encode logical")
            .try_encode(&mut buf)
            .expect("bytes");
        buf
    };
    assert!(
        !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the logical plan carries no credential"
    );
    let ctx = scheduler.context();
    let decoded = LogicalPlanNode::try_decode(&bytes)
        .expect("decode bytes")
        .try_into_logical_plan(&ctx.task_ctx(), &logical)
        .expect("decode logical");
    let physical = ctx.state().create_physical_plan(&decoded).await.expect("physical plan");

    // The scheduler's stages.
    let stages: Vec<Arc<dyn ShuffleWriter>> = DefaultDistributedPlanner::new()
        .plan_query_stages("job", physical, ctx.state().config().options())
        .expect("stages");
    assert_eq!(stages.len(), 2, "a map stage and the write stage");
    match stages[0].shuffle_output_partitioning() {
        Some(Partitioning::Hash(exprs, n)) => {
            assert_eq!(*n, NUM_DBS as usize, "num_dbs shuffle partitions");
            let cols: Vec<&str> = exprs
                .iter()
                .filter_map(|e| e.as_any().downcast_ref::<Column>().map(Column::name))
                .collect();
            assert_eq!(cols, vec![PARTITION_KEY_COL], "hashed on the partition key alone");
        }
        other => panic!("the map stage should hash-partition, got {other:?}"),
    }
    let write_stage: Arc<dyn ExecutionPlan> = stages[1].clone();
    assert!(stages[1].shuffle_output_partitioning().is_none());
    let writers = find::<ShardWriteExec>(&write_stage);
    assert_eq!(writers.len(), 1, "{}", displayable(write_stage.as_ref()).indent(false));
    let shuffle = Arc::clone(writers[0].children()[0]);
    assert!(
        shuffle.as_any().is::<UnresolvedShuffleExec>(),
        "reads the shuffle directly, got {}",
        shuffle.name()
    );
    assert_eq!(shuffle.output_partitioning().partition_count(), NUM_DBS as usize);
    assert_eq!(
        write_stage.output_partitioning().partition_count(),
        NUM_DBS as usize,
        "one task per shard"
    );

    // Scheduler -> executor: every stage through the physical codec.
    let executor_codec = ShardForgePhysicalCodec::with_staging_dir(Some(dir.path().to_path_buf()));
    for stage in &stages {
        let plan: Arc<dyn ExecutionPlan> = stage.clone();
        let mut buf = vec![];
        PhysicalPlanNode::try_from_physical_plan(Arc::clone(&plan), &ShardForgePhysicalCodec::default())
            .expect("encode physical")
            .try_encode(&mut buf)
            .expect("bytes");
        assert!(
            !buf.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "stage plans carry no credential"
        );
        let task_ctx = TaskContext::default();
        let back = PhysicalPlanNode::try_decode(&buf)
            .expect("decode bytes")
            .try_into_physical_plan(&task_ctx, &executor_codec)
            .expect("decode physical");
        assert_eq!(
            displayable(back.as_ref()).indent(true).to_string(),
            displayable(plan.as_ref()).indent(true).to_string(),
            "stage {} round-trips",
            stage.stage_id()
        );
        for w in find::<ShardWriteExec>(&back) {
            let spec = w.as_any().downcast_ref::<ShardWriteExec>().expect("writer").spec();
            assert!(!spec.storage_options.contains_key("aws_secret_access_key"));
            assert_eq!(
                spec.storage_options.get("region").map(String::as_str),
                Some("us-east-1")
            );
            assert_eq!(spec.work_dir, Some(dir.path().join("shardforge-staging")));
            assert_eq!(spec.num_dbs, NUM_DBS);
        }
    }
}

#[test]
fn foreign_bytes_go_to_ballista_and_mismatched_functions_are_refused() {
    use datafusion_proto::logical_plan::LogicalExtensionCodec;
    use datafusion_proto::physical_plan::PhysicalExtensionCodec;
    let physical = ShardForgePhysicalCodec::default();
    let spec = sf_writer::plan::udf::RoutingSpec {
        sharding: sf_manifest::ShardingSpec::hash(),
        num_dbs: 3,
        key_encoding: sf_manifest::KeyEncoding::U64Be,
        key_col: "id".into(),
        extra_cols: vec![],
        vector: None,
    };
    let udf = sf_writer::plan::udf::ShardIdUdf::udf(spec.clone());
    let mut buf = vec![];
    physical.try_encode_udf(&udf, &mut buf).expect("encode");
    let back = physical.try_decode_udf("sf_shard_id", &buf).expect("decode");
    let inner = back
        .inner()
        .as_any()
        .downcast_ref::<sf_writer::plan::udf::ShardIdUdf>()
        .expect("our function");
    assert_eq!(inner.spec(), &spec);
    assert!(
        physical.try_decode_udf("sf_partition_key", &buf).is_err(),
        "tags match names"
    );
    let logical = ShardForgeLogicalCodec::default();
    let mut buf = vec![];
    logical
        .try_encode_udf(&sf_writer::plan::udf::PartitionKeyUdf::udf(5), &mut buf)
        .expect("encode");
    let back = logical.try_decode_udf("sf_partition_key", &buf).expect("decode");
    let inner = back
        .inner()
        .as_any()
        .downcast_ref::<sf_writer::plan::udf::PartitionKeyUdf>()
        .expect("our function");
    assert_eq!(inner.num_dbs(), 5);
    // Other functions are not ours: nothing written, Ballista decides.
    let mut buf = vec![];
    physical
        .try_encode_udf(&datafusion::functions::math::abs(), &mut buf)
        .expect("encode abs");
    assert!(buf.is_empty());
    assert!(physical.try_decode_udf("abs", b"\x0a\x00").is_err());
}

#[test]
fn task_identities_give_stage_and_task_ids() {
    assert_eq!(
        parse_task_identity("TID 17 aBcDeFg/2.0/5.1"),
        TaskIds {
            stage_id: Some(2),
            task_attempt_id: Some(17)
        }
    );
    assert_eq!(parse_task_identity("something else"), TaskIds::default());
}
