//! The write as a DataFusion plan: a logical extension node, its planner,
//! and the physical rule that lays out the shard partitions.
//!
//! ```text
//! ShardWriteExec                      one partition per shard, one row out each
//!   RepartitionExec Hash(__sf_partition_key, num_dbs)
//!     ProjectionExec key, values, sf_shard_id(..), sf_partition_key(..)
//!       <input plan>
//! ```
//!
//! Each shard task sorts its own rows ([`crate::sort`]), in memory the
//! job bounds, so the plan has no sort.
//!
//! That is the layout on a cluster, where the hash repartition becomes the
//! shuffle and partition `i` becomes the task writing shard `i`.
//! DataFusion's distribution rules would re-plan a hash repartition with
//! `target_partitions` partitions; [`ShardWriteLayout`], registered last,
//! restores exactly `num_dbs` partitions on the partition-key column.
//!
//! In one process the rule lays the plan out differently
//! ([`ShardWriteLayout::in_process`]): no repartition at all, the writer
//! collecting the routed rows into their shards itself
//! ([`crate::exchange`]), which costs a fixed amount per row instead of
//! per row and shard (a hash repartition into thousands of partitions
//! cuts every batch into thousands of one-row batches):
//!
//! ```text
//! ShardWriteExec (exchange)           one partition, one row out per shard
//!   ProjectionExec key, values, sf_shard_id(..), sf_partition_key(..)
//!     <input plan>
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionState;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

use crate::exec::ShardWriteExec;
use crate::partition::PARTITION_KEY_COL;
use crate::shard_result::result_schema;
use crate::spec::ShardWriteSpec;

/// Logical node: write the input's rows as shards.
#[derive(Debug, Clone)]
pub struct ShardWriteNode {
    spec: Arc<ShardWriteSpec>,
    input: LogicalPlan,
    schema: DFSchemaRef,
}

impl ShardWriteNode {
    /// The node over `input` (which must carry the shard id and partition key columns).
    pub fn new(spec: Arc<ShardWriteSpec>, input: LogicalPlan) -> DfResult<Self> {
        let schema = Arc::new(DFSchema::try_from(result_schema().as_ref().clone())?);
        Ok(ShardWriteNode { spec, input, schema })
    }

    /// The spec.
    pub fn spec(&self) -> &Arc<ShardWriteSpec> {
        &self.spec
    }

    /// As a logical plan.
    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension { node: Arc::new(self) })
    }

    fn key(&self) -> String {
        serde_json::to_string(self.spec.as_ref()).unwrap_or_default()
    }
}

impl PartialEq for ShardWriteNode {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec && self.input == other.input
    }
}

impl Eq for ShardWriteNode {}

impl Hash for ShardWriteNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
        self.input.hash(state);
    }
}

impl PartialOrd for ShardWriteNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.key().partial_cmp(&other.key())
    }
}

impl UserDefinedLogicalNodeCore for ShardWriteNode {
    fn name(&self) -> &str {
        "ShardWrite"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ShardWrite: run_id={}, num_dbs={}, backend={}, prefix={}",
            self.spec.run_id,
            self.spec.num_dbs,
            self.spec.backend.name(),
            self.spec.prefix_url
        )
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> DfResult<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("ShardWrite has one input".into()))?;
        ShardWriteNode::new(Arc::clone(&self.spec), input)
    }
}

/// Plans [`ShardWriteNode`] into [`ShardWriteExec`].
#[derive(Debug, Default)]
pub struct ShardWritePlanner;

#[async_trait]
impl ExtensionPlanner for ShardWritePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session_state: &SessionState,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<ShardWriteNode>() else {
            return Ok(None);
        };
        let input = physical_inputs
            .first()
            .ok_or_else(|| DataFusionError::Internal("ShardWrite has one input".into()))?;
        let laid_out = shard_layout(node.spec(), Arc::clone(input))?;
        Ok(Some(Arc::new(ShardWriteExec::new(Arc::clone(node.spec()), laid_out))))
    }
}

/// A query planner that knows [`ShardWriteNode`].
#[derive(Debug, Default)]
pub struct ShardForgeQueryPlanner;

#[async_trait]
impl QueryPlanner for ShardForgeQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &SessionState,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(ShardWritePlanner)])
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}

/// `input` laid out for [`ShardWriteExec`]: hash-partitioned on the
/// partition key into `num_dbs` partitions. Operators above the input that
/// only move rows between partitions are removed first, so applying this
/// twice changes nothing.
pub fn shard_layout(spec: &ShardWriteSpec, input: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    let inner = routed_input(input);
    let schema = inner.schema();
    let part = Column::new_with_schema(PARTITION_KEY_COL, &schema)?;
    Ok(Arc::new(RepartitionExec::try_new(
        inner,
        Partitioning::Hash(vec![Arc::new(part)], spec.num_dbs as usize),
    )?))
}

/// `input` without the operators above it that only move rows between
/// partitions.
fn routed_input(input: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    let mut inner = input;
    loop {
        let any = inner.as_any();
        let strip = any.is::<RepartitionExec>()
            || any
                .downcast_ref::<CoalescePartitionsExec>()
                .is_some_and(|c| c.fetch().is_none());
        if !strip {
            break;
        }
        inner = Arc::clone(inner.children()[0]);
    }
    inner
}

/// Physical optimizer rule, registered last: keeps every
/// [`ShardWriteExec`]'s input laid out for where the plan runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShardWriteLayout {
    in_process: bool,
}

impl ShardWriteLayout {
    /// For a plan run by a cluster: `num_dbs` hash partitions
    /// ([`shard_layout`]), one task per shard.
    pub fn partitioned() -> Self {
        ShardWriteLayout { in_process: false }
    }

    /// For a plan run in this process: no repartition; the writer collects
    /// the routed rows into shards itself ([`ShardWriteExec::exchange`]).
    pub fn in_process() -> Self {
        ShardWriteLayout { in_process: true }
    }
}

impl PhysicalOptimizerRule for ShardWriteLayout {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(w) = node.as_any().downcast_ref::<ShardWriteExec>() else {
                return Ok(Transformed::no(node));
            };
            let spec = Arc::clone(w.spec());
            let laid_out: Arc<dyn ExecutionPlan> = if self.in_process {
                Arc::new(ShardWriteExec::exchange(spec, routed_input(Arc::clone(w.input()))))
            } else {
                Arc::new(ShardWriteExec::new(
                    Arc::clone(&spec),
                    shard_layout(&spec, Arc::clone(w.input()))?,
                ))
            };
            Ok(Transformed::yes(laid_out))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "shard_write_layout"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
