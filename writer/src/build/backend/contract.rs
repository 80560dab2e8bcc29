//! What every backend keeps to: the two phases as traits, what a builder
//! is told about its shard, and the content facts every backend records.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sf_manifest::{Attempt, DbId, KeyEncoding, Location};

use super::page_size::SizeStats;
use crate::build::ratelimit::RateLimits;
use crate::error::Result;

/// What to do when two rows of a shard have the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    /// The row that arrives later replaces the earlier one.
    #[default]
    LastWins,
    /// The build fails, naming the shard and the key.
    Error,
}

/// Everything a builder needs to know about its shard.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The shard.
    pub db_id: DbId,
    /// A fresh local folder for this build alone; the caller removes it.
    pub work_dir: PathBuf,
    /// Duplicate keys.
    pub on_duplicate: DuplicatePolicy,
    /// Whether rows arrive in strictly ascending key order (bytewise), so
    /// each key once: the shard sorter's output. Otherwise rows come in
    /// arrival order and the builder applies `on_duplicate` itself.
    pub sorted: bool,
    /// Write limits (applied where the backend writes rows).
    pub limits: RateLimits,
    /// Key encoding, to show duplicate keys readably in errors.
    pub key_encoding: KeyEncoding,
    /// A unified build: every value carries its row's vector
    /// ([`crate::route::vector`]), stored in the shard's vector tables.
    pub vector: Option<VectorShard>,
    /// The sizes of the rows this shard will store, when they were
    /// measured before the build (`output.sqlite.page_size = "auto"` on
    /// sorted input): the page writer chooses its page size from them.
    pub sizes: Option<SizeStats>,
}

/// The vector index of a unified shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VectorShard {
    /// Components per vector.
    pub dim: u32,
    /// The index's distance.
    pub metric: sf_manifest::format::vector::Metric,
    /// A vector-only shard: the rows' keys are ids and their values are
    /// not stored (the `kv` table stays empty); the shard's row count is
    /// its vector count.
    pub vector_only: bool,
}

/// Facts about a shard's content that every backend records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardContent {
    /// Distinct keys stored.
    pub row_count: u64,
    /// Rows that replaced an earlier row with the same key.
    pub duplicates: u64,
    /// Smallest encoded key.
    pub min_key: Option<Vec<u8>>,
    /// Largest encoded key.
    pub max_key: Option<Vec<u8>>,
    /// `<algorithm>:<hex>`; see each backend for what it covers.
    pub checksum: String,
    /// What an upload's objects hashed to as they were written
    /// ([`Uploaded::objects_checksum`]), when verifying a published
    /// attempt; `None` in a stage.
    pub objects_checksum: Option<String>,
    /// Page size of a SQLite shard file; `None` for other backends.
    pub page_size: Option<u32>,
}

/// One row: encoded key, value.
pub type Row<'a> = (&'a [u8], &'a [u8]);

/// Phase 1: rows in, a local stage out. Runs on a blocking thread.
pub trait ShardBuilder: Send {
    /// Adds rows (see [`BuildContext::sorted`] for their order).
    fn add(&mut self, rows: &[Row<'_>]) -> Result<()>;

    /// Ends phase 1.
    fn finish(self: Box<Self>) -> Result<Arc<dyn StagedShard>>;
}

/// Where an upload goes: a claimed, empty attempt folder.
#[derive(Debug, Clone)]
pub struct AttemptTarget {
    /// The shard.
    pub db_id: DbId,
    /// The claimed attempt.
    pub attempt: Attempt,
    /// The attempt folder.
    pub location: Location,
    /// Write limits for this attempt.
    pub limits: RateLimits,
}

/// What an upload produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// Size of the shard file (0 for SlateDB, as docs/FORMAT.md says).
    pub db_bytes: u64,
    /// Opaque identity of the content (32 hex digits).
    pub checkpoint_id: String,
    /// Checksum of the objects the upload wrote and left, computed while
    /// writing them, for backends that write more than one object
    /// (SlateDB); verification re-reads the objects against it instead of
    /// reading every row back.
    pub objects_checksum: Option<String>,
}

/// Phase 2: a staged shard that can be written to attempt folders.
#[async_trait]
pub trait StagedShard: Send + Sync + fmt::Debug {
    /// What the stage holds.
    fn content(&self) -> &ShardContent;

    /// Writes the shard into `target`. May be called again with a new
    /// target after a retryable failure.
    async fn upload(&self, target: &AttemptTarget) -> Result<Uploaded>;
}

/// A shard backend.
#[async_trait]
pub trait ShardBackend: Send + Sync + fmt::Debug {
    /// `sqlite` or `slatedb`.
    fn name(&self) -> &'static str;

    /// Starts phase 1 for one shard.
    fn builder(&self, ctx: BuildContext) -> Result<Box<dyn ShardBuilder>>;

    /// Re-reads a published attempt and checks it holds `expected`
    /// (its checksum, or the checksum of the objects its upload wrote);
    /// run by the driver before publishing.
    async fn verify(&self, attempt: &Location, db_id: DbId, expected: &ShardContent) -> Result<()>;
}

/// An encoded key, shown readably for messages.
pub fn show_key(bytes: &[u8], encoding: KeyEncoding) -> String {
    match sf_router::decode_key(bytes, encoding) {
        Ok(k) => k.to_string(),
        Err(_) => format!("0x{}", hex::encode(bytes)),
    }
}
