//! The write as a logical plan: the extension node [`ShardWriteNode`] a
//! build puts over its routed input, and the planners that turn it into a
//! [`ShardWriteExec`] laid out by [`shard_layout`].

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionState;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

use crate::build::shard_result::result_schema;
use crate::build::shard_task::ShardWriteExec;
use crate::build::spec::ShardWriteSpec;
use crate::plan::layout::shard_layout;

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
