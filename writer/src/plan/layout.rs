//! The physical layout of the write: the rule that lays out the shard
//! partitions under every [`ShardWriteExec`], for a cluster or for one
//! process.
//!
//! ```text
//! ShardWriteExec                      one partition per shard, one row out each
//!   RepartitionExec Hash(__sf_partition_key, num_dbs)
//!     ProjectionExec key, values, sf_shard_id(..), sf_partition_key(..)
//!       <input plan>
//! ```
//!
//! Each shard task sorts its own rows ([`crate::build::merge`]), in memory
//! the job bounds, so the plan has no sort.
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
//! ([`crate::route::exchange`]), which costs a fixed amount per row instead of
//! per row and shard (a hash repartition into thousands of partitions
//! cuts every batch into thousands of one-row batches):
//!
//! ```text
//! ShardWriteExec (exchange)           one partition, one row out per shard
//!   ProjectionExec key, values, sf_shard_id(..), sf_partition_key(..)
//!     <input plan>
//! ```

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};

use crate::build::shard_task::ShardWriteExec;
use crate::build::spec::ShardWriteSpec;
use crate::plan::udf::PARTITION_KEY_COL;

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
