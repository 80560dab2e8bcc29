//! Logical and physical extension codecs for ShardForge's plan nodes and
//! functions, layered over Ballista's own codecs.
//!
//! What they carry is plain data serialised as JSON behind a short magic
//! prefix, so no protobuf schema (and no `protoc`) is involved:
//!
//! | item | bytes |
//! |---|---|
//! | `ShardWriteNode` (logical) | `SFX1` `1` JSON of [`ShardWriteSpec`] |
//! | `ShardWriteExec` (physical) | `SFX1` `2` JSON of [`ShardWriteSpec`] |
//! | `sf_shard_id` | `SFX1` `3` JSON of [`RoutingSpec`] |
//! | `sf_partition_key` | `SFX1` `4` JSON of `num_dbs` |
//! | a warehouse table (`ShardTable`) | `SFX1` `5` JSON of `TableSource` |
//! | a table scan (`ShardScanExec`) | `SFX1` `6` JSON of `ScanParts` |
//! | a table lookup (`ShardLookupExec`) | `SFX1` `7` JSON of `LookupParts` |
//!
//! Anything else goes to Ballista's codecs unchanged (its shuffle nodes,
//! file formats, cache node). Ballista's bytes are protobuf messages, whose
//! first byte is a field tag; `S` (0x53) would be field 10 with the
//! deprecated group wire type, which prost never writes, so the prefix
//! cannot be mistaken for theirs.
//!
//! Specs are made *shippable* when encoded: storage options naming
//! credentials are dropped (see [`is_secret_option`](crate::options::is_secret_option)),
//! and the driver's local `work_dir` is dropped too; an executor's codec
//! puts its own staging folder in when it decodes. Tables travel as the
//! manifest they read (each process opens its own reader, pinned to it),
//! with the same credential filter on their storage options.

use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::TableReference;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use sf_warehouse::ShardTable;
use sf_warehouse::table::{LookupParts, ScanParts, ShardLookupExec, ShardScanExec, TableSource};
use sf_writer::build::shard_task::ShardWriteExec;
use sf_writer::build::spec::ShardWriteSpec;
use sf_writer::plan::node::ShardWriteNode;
use sf_writer::plan::udf::{PARTITION_KEY_UDF, PartitionKeyUdf, RoutingSpec, SHARD_ID_UDF, ShardIdUdf};

use crate::options::without_secrets;

const MAGIC: &[u8; 4] = b"SFX1";
const TAG_WRITE_NODE: u8 = 1;
const TAG_WRITE_EXEC: u8 = 2;
const TAG_SHARD_ID: u8 = 3;
const TAG_PARTITION_KEY: u8 = 4;
const TAG_TABLE: u8 = 5;
const TAG_TABLE_SCAN: u8 = 6;
const TAG_TABLE_LOOKUP: u8 = 7;

fn encode_json<T: serde::Serialize>(tag: u8, value: &T, buf: &mut Vec<u8>) -> DfResult<()> {
    buf.extend_from_slice(MAGIC);
    buf.push(tag);
    serde_json::to_writer(&mut *buf, value)
        .map_err(|e| DataFusionError::Internal(format!("encoding a ShardForge plan item: {e}")))
}

/// The tag and JSON body of ShardForge bytes; `None` for anyone else's.
fn ours(buf: &[u8]) -> Option<(u8, &[u8])> {
    let rest = buf.strip_prefix(MAGIC.as_slice())?;
    let (tag, body) = rest.split_first()?;
    Some((*tag, body))
}

fn decode_json<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> DfResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        DataFusionError::Internal(format!(
            "decoding a ShardForge {what}: {e}; are the client, scheduler and executors the same ShardForge version?"
        ))
    })
}

/// The spec as shipped to other processes: no credentials, no driver-local
/// staging folder.
pub fn shippable(spec: &ShardWriteSpec) -> ShardWriteSpec {
    let mut out = spec.clone();
    out.storage_options = without_secrets(&spec.storage_options);
    out.work_dir = None;
    out
}

/// A table source as shipped: no credentials.
fn shippable_source(source: &TableSource) -> TableSource {
    let mut out = source.clone();
    out.storage = without_secrets(&source.storage);
    out
}

fn table_err(e: sf_warehouse::Error) -> DataFusionError {
    DataFusionError::from(e)
}

fn one_input<T: Clone>(inputs: &[T], what: &str) -> DfResult<T> {
    match inputs {
        [one] => Ok(one.clone()),
        other => Err(DataFusionError::Internal(format!(
            "{what} has one input, the plan gives {}",
            other.len()
        ))),
    }
}

fn encode_udf(node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<bool> {
    let inner = node.inner().as_any();
    if let Some(f) = inner.downcast_ref::<ShardIdUdf>() {
        encode_json(TAG_SHARD_ID, f.spec(), buf)?;
        return Ok(true);
    }
    if let Some(f) = inner.downcast_ref::<PartitionKeyUdf>() {
        encode_json(TAG_PARTITION_KEY, &f.num_dbs(), buf)?;
        return Ok(true);
    }
    Ok(false)
}

fn decode_udf(name: &str, buf: &[u8]) -> Option<DfResult<Arc<ScalarUDF>>> {
    let (tag, body) = ours(buf)?;
    Some(match (tag, name) {
        (TAG_SHARD_ID, SHARD_ID_UDF) => {
            decode_json::<RoutingSpec>("routing function", body).map(|spec| Arc::new(ShardIdUdf::udf(spec)))
        }
        (TAG_PARTITION_KEY, PARTITION_KEY_UDF) => {
            decode_json::<u32>("partition key function", body).map(|n| Arc::new(PartitionKeyUdf::udf(n)))
        }
        _ => Err(DataFusionError::Internal(format!(
            "ShardForge bytes with tag {tag} do not describe function {name}"
        ))),
    })
}

/// Logical codec: [`ShardWriteNode`] and the routing functions, then Ballista's.
#[derive(Debug, Default)]
pub struct ShardForgeLogicalCodec {
    ballista: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for ShardForgeLogicalCodec {
    fn try_decode(&self, buf: &[u8], inputs: &[LogicalPlan], ctx: &TaskContext) -> DfResult<Extension> {
        match ours(buf) {
            Some((TAG_WRITE_NODE, body)) => {
                let spec: ShardWriteSpec = decode_json("shard write node", body)?;
                let input = one_input(inputs, "ShardWrite")?;
                let node = ShardWriteNode::new(Arc::new(spec), input)?;
                Ok(Extension { node: Arc::new(node) })
            }
            Some((tag, _)) => Err(DataFusionError::Internal(format!(
                "ShardForge bytes with tag {tag} are not a logical plan node"
            ))),
            None => self.ballista.try_decode(buf, inputs, ctx),
        }
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DfResult<()> {
        match node.node.as_any().downcast_ref::<ShardWriteNode>() {
            Some(w) => encode_json(TAG_WRITE_NODE, &shippable(w.spec()), buf),
            None => self.ballista.try_encode(node, buf),
        }
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: arrow::datatypes::SchemaRef,
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn TableProvider>> {
        match ours(buf) {
            Some((TAG_TABLE, body)) => {
                let source: TableSource = decode_json("warehouse table", body)?;
                Ok(Arc::new(ShardTable::from_source(source).map_err(table_err)?))
            }
            Some((tag, _)) => Err(DataFusionError::Internal(format!(
                "ShardForge bytes with tag {tag} are not a table"
            ))),
            None => self.ballista.try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        match node.as_any().downcast_ref::<ShardTable>() {
            Some(t) => encode_json(TAG_TABLE, &shippable_source(t.source()), buf),
            None => self.ballista.try_encode_table_provider(table_ref, node, buf),
        }
    }

    fn try_decode_file_format(&self, buf: &[u8], ctx: &TaskContext) -> DfResult<Arc<dyn FileFormatFactory>> {
        self.ballista.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(&self, buf: &mut Vec<u8>, node: Arc<dyn FileFormatFactory>) -> DfResult<()> {
        self.ballista.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        match decode_udf(name, buf) {
            Some(r) => r,
            None => self.ballista.try_decode_udf(name, buf),
        }
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        if encode_udf(node, buf)? {
            return Ok(());
        }
        self.ballista.try_encode_udf(node, buf)
    }
}

/// Physical codec: [`ShardWriteExec`] and the routing functions, then Ballista's.
#[derive(Debug, Default)]
pub struct ShardForgePhysicalCodec {
    ballista: BallistaPhysicalExtensionCodec,
    /// Where decoded shard writers stage their files (an executor's work
    /// folder); `None` keeps the spec's (the system temp folder).
    staging_dir: Option<PathBuf>,
}

impl ShardForgePhysicalCodec {
    /// A codec whose decoded shard writers stage under `dir`.
    pub fn with_staging_dir(dir: Option<PathBuf>) -> Self {
        ShardForgePhysicalCodec {
            ballista: BallistaPhysicalExtensionCodec::default(),
            staging_dir: dir,
        }
    }
}

impl PhysicalExtensionCodec for ShardForgePhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match ours(buf) {
            Some((TAG_WRITE_EXEC, body)) => {
                let mut spec: ShardWriteSpec = decode_json("shard writer", body)?;
                if let Some(dir) = &self.staging_dir {
                    spec.work_dir = Some(dir.join("shardforge-staging"));
                }
                let input = one_input(inputs, "ShardWriteExec")?;
                Ok(Arc::new(ShardWriteExec::new(Arc::new(spec), input)))
            }
            Some((TAG_TABLE_SCAN, body)) => {
                let parts: ScanParts = decode_json("table scan", body)?;
                Ok(Arc::new(ShardScanExec::from_parts(parts).map_err(table_err)?))
            }
            Some((TAG_TABLE_LOOKUP, body)) => {
                let parts: LookupParts = decode_json("table lookup", body)?;
                Ok(Arc::new(ShardLookupExec::from_parts(parts).map_err(table_err)?))
            }
            Some((tag, _)) => Err(DataFusionError::Internal(format!(
                "ShardForge bytes with tag {tag} are not a physical plan node"
            ))),
            None => self.ballista.try_decode(buf, inputs, ctx),
        }
    }

    fn try_encode(&self, node: Arc<dyn ExecutionPlan>, buf: &mut Vec<u8>) -> DfResult<()> {
        let any = node.as_any();
        if let Some(w) = any.downcast_ref::<ShardWriteExec>() {
            return encode_json(TAG_WRITE_EXEC, &shippable(w.spec()), buf);
        }
        if let Some(scan) = any.downcast_ref::<ShardScanExec>() {
            let mut parts = scan.parts();
            parts.source = shippable_source(&parts.source);
            return encode_json(TAG_TABLE_SCAN, &parts, buf);
        }
        if let Some(lookup) = any.downcast_ref::<ShardLookupExec>() {
            let mut parts = lookup.parts().map_err(table_err)?;
            parts.source = shippable_source(&parts.source);
            return encode_json(TAG_TABLE_LOOKUP, &parts, buf);
        }
        self.ballista.try_encode(node, buf)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        match decode_udf(name, buf) {
            Some(r) => r,
            None => self.ballista.try_decode_udf(name, buf),
        }
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        if encode_udf(node, buf)? {
            return Ok(());
        }
        self.ballista.try_encode_udf(node, buf)
    }
}
