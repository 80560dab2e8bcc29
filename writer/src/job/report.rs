//! What a build reports: the plan of a dry run, the summary of a
//! published build, and the outcome type every build and table save returns.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use sf_manifest::{KeyEncoding, RunId, ShardingSpec, Timestamp};

use crate::publish::verdict::{GateResult, Verdict};

use crate::route::encode::ValueSpec;

/// What a dry run reports: the resolved plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanReport {
    /// The run id the build would use.
    pub run_id: RunId,
    /// Engine.
    pub engine: String,
    /// Input columns and types.
    pub input_schema: Vec<(String, String)>,
    /// Key column and encoding.
    pub key_col: String,
    /// Key encoding.
    pub key_encoding: KeyEncoding,
    /// Value encoding.
    pub value: ValueSpec,
    /// Routing.
    pub sharding: ShardingSpec,
    /// Number of shards.
    pub num_dbs: u32,
    /// Snapshot prefix.
    pub prefix_url: String,
    /// Backend name.
    pub backend: &'static str,
    /// What `_CURRENT` holds now.
    pub current_run: Option<RunId>,
}

impl fmt::Display for PlanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "run_id:        {}", self.run_id)?;
        writeln!(f, "engine:        {}", self.engine)?;
        writeln!(
            f,
            "input columns: {}",
            self.input_schema
                .iter()
                .map(|(n, t)| format!("{n}: {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(f, "key:           {} ({})", self.key_col, self.key_encoding)?;
        match &self.value {
            ValueSpec::BinaryCol(c) => writeln!(f, "value:         bytes of column {c}")?,
            ValueSpec::JsonCols(cols) => writeln!(f, "value:         JSON of {}", cols.join(", "))?,
            ValueSpec::ArrowJson(cols) => writeln!(f, "value:         table row (Arrow JSON) of {}", cols.join(", "))?,
        }
        match (&self.sharding.cel_expr, &self.sharding.routing_values) {
            (None, _) => writeln!(f, "routing:       hash (xxh3_64) over {} shards", self.num_dbs)?,
            (Some(e), None) => writeln!(f, "routing:       CEL direct `{e}` over {} shards", self.num_dbs)?,
            (Some(e), Some(v)) => writeln!(
                f,
                "routing:       CEL categorical `{e}` over {} shards: {}",
                self.num_dbs,
                v.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
            )?,
        }
        writeln!(f, "backend:       {}", self.backend)?;
        writeln!(f, "prefix:        {}", self.prefix_url)?;
        write!(
            f,
            "_CURRENT:      {}",
            self.current_run
                .as_ref()
                .map_or("none (first publish)".to_string(), |r| format!("run {r}"))
        )
    }
}

/// What a finished build reports.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSummary {
    /// The run.
    pub run_id: RunId,
    /// The published manifest.
    pub manifest_ref: String,
    /// Number of shards.
    pub num_dbs: u32,
    /// Shards holding rows.
    pub shards_written: u32,
    /// Rows stored (distinct keys).
    pub rows: u64,
    /// Rows replaced by a later row with the same key.
    pub duplicates: u64,
    /// Shard file bytes (SQLite).
    pub bytes: u64,
    /// Rows per shard: smallest, median, largest (empty shards count).
    pub rows_per_shard: (u64, u64, u64),
    /// Upload tries that failed and were retried.
    pub retries: u32,
    /// Losing attempt folders deleted after publishing.
    pub losers_deleted: usize,
    /// Sorted runs the shards' sorts wrote to disk (0: every shard's rows
    /// fit in its sort buffer).
    pub spilled_runs: u32,
    /// Time to plan (read schema, infer routing, verify sample).
    pub plan_time: Duration,
    /// Time to write all shards.
    pub write_time: Duration,
    /// Time to verify, publish and clean up.
    pub publish_time: Duration,
    /// Wall time of the whole build.
    pub total_time: Duration,
    /// Every validation gate evaluated, with its verdict.
    pub gates: Vec<GateResult>,
    /// What the retention after publishing removed (`None`: no
    /// `[retention]`), or why it could not (the snapshot is published
    /// either way).
    pub retention: Option<std::result::Result<RetentionReport, String>>,
    /// What went wrong after the publish, which stands (losing attempts
    /// left for cleanup).
    pub warnings: Vec<String>,
    /// Where the write and publish times went.
    pub phases: PhaseTimes,
    /// Peak resident memory of the building process so far, where the
    /// system reports it (for `sf-write`: the build's).
    pub peak_rss_bytes: Option<u64>,
    /// Rows stored without their vector (`[vector] on_invalid = "skip"`),
    /// as counted by the processes that encoded the rows.
    pub vectors_skipped: u64,
    /// SQLite shards by page size (`output.sqlite.page_size = "auto"`
    /// chooses per shard); empty for SlateDB.
    pub page_sizes: BTreeMap<u32, u32>,
}

/// What a build's retention removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionReport {
    /// Old manifests removed.
    pub manifests: usize,
    /// Folders removed in all (manifests, shard attempts, run records).
    pub folders: usize,
    /// Objects deleted.
    pub objects: usize,
}

/// Where a build's time went, step by step. Steps of shard tasks overlap
/// (several run at once), so they are sums over shards; the others are
/// wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTimes {
    /// Reading, routing and collecting the whole input (builds whose rows
    /// are collected in this process; on a cluster the shuffle does it).
    pub input: Option<Duration>,
    /// Shard builds (sorting or merging the rows, writing the file, its
    /// checksum), summed over the shards built in this process.
    pub build_sum: Duration,
    /// Shards built in this process.
    pub shards_built: u32,
    /// Attempt claims, summed over shards.
    pub claim_sum: Duration,
    /// Uploads (or placements on a local prefix), summed over shards.
    pub upload_sum: Duration,
    /// Re-reading every winning shard's checksum.
    pub verify: Duration,
    /// Building and writing the manifest and swapping `_CURRENT`.
    pub publish: Duration,
    /// Finding and deleting losing attempts.
    pub cleanup: Duration,
}

impl fmt::Display for BuildSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.total_time.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "published run {} ({} shards, {} with rows)",
            self.run_id, self.num_dbs, self.shards_written
        )?;
        writeln!(f, "  manifest:       {}", self.manifest_ref)?;
        writeln!(
            f,
            "  rows:           {} ({} duplicates replaced), {:.0} rows/s",
            self.rows,
            self.duplicates,
            self.rows as f64 / secs
        )?;
        writeln!(f, "  bytes:          {}", human_bytes(self.bytes))?;
        let (lo, med, hi) = self.rows_per_shard;
        writeln!(f, "  rows per shard: min {lo}, median {med}, max {hi}")?;
        writeln!(
            f,
            "  retries:        {}; losing attempts deleted: {}",
            self.retries, self.losers_deleted
        )?;
        writeln!(f, "  sort spills:    {} runs written to disk", self.spilled_runs)?;
        if !self.page_sizes.is_empty() {
            let sizes: Vec<String> = self
                .page_sizes
                .iter()
                .map(|(size, n)| format!("{size} bytes: {n} shard{}", if *n == 1 { "" } else { "s" }))
                .collect();
            writeln!(f, "  page sizes:     {}", sizes.join(", "))?;
        }
        if self.vectors_skipped > 0 {
            writeln!(
                f,
                "  vectors:        {} invalid vectors skipped (vector.on_invalid = \"skip\")",
                self.vectors_skipped
            )?;
        }
        for g in self.gates.iter().filter(|g| g.verdict != Verdict::Pass) {
            writeln!(f, "  gate:           {g}")?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning:        {w}")?;
        }
        match &self.retention {
            Some(Ok(r)) => writeln!(
                f,
                "  retention:      {} old manifests, {} folders, {} objects removed",
                r.manifests, r.folders, r.objects
            )?,
            Some(Err(e)) => writeln!(f, "  retention:      FAILED ({e}); the snapshot is published")?,
            None => {}
        }
        writeln!(
            f,
            "  time:           {:.2}s (plan {:.2}s, write {:.2}s, publish {:.2}s)",
            secs,
            self.plan_time.as_secs_f64(),
            self.write_time.as_secs_f64(),
            self.publish_time.as_secs_f64()
        )?;
        let p = &self.phases;
        if let Some(input) = p.input {
            write!(f, "  write:          input {:.2}s; ", input.as_secs_f64())?;
        } else {
            write!(f, "  write:          ")?;
        }
        writeln!(
            f,
            "over {} shard builds: build {:.2}s, claim {:.2}s, upload {:.2}s (summed)",
            p.shards_built,
            p.build_sum.as_secs_f64(),
            p.claim_sum.as_secs_f64(),
            p.upload_sum.as_secs_f64()
        )?;
        write!(
            f,
            "  publish:        verify {:.2}s, manifest and _CURRENT {:.2}s, cleanup {:.2}s",
            p.verify.as_secs_f64(),
            p.publish.as_secs_f64(),
            p.cleanup.as_secs_f64()
        )?;
        if let Some(peak) = self.peak_rss_bytes {
            write!(f, "\n  peak memory:    {}", human_bytes(peak))?;
        }
        Ok(())
    }
}

fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// The result of [`build`](super::build).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A dry run's plan; nothing was written.
    DryRun(PlanReport),
    /// A published snapshot.
    Built(BuildSummary),
    /// Nothing to do, and why (a table that exists, with mode `ignore`).
    Unchanged(String),
    /// The run id was published before; nothing was built (a scheduler's
    /// retry of a finished run). `--rebuild` builds it again.
    AlreadyPublished(AlreadyPublished),
}

/// A run found published: what its manifest says.
#[derive(Debug, Clone, PartialEq)]
pub struct AlreadyPublished {
    /// The run.
    pub run_id: RunId,
    /// Its newest manifest.
    pub manifest_ref: String,
    /// When that manifest was written.
    pub published_at: Timestamp,
    /// Shards of the snapshot.
    pub num_dbs: u32,
    /// Shards holding rows.
    pub shards_written: u32,
    /// Rows.
    pub rows: u64,
    /// The run `_CURRENT` names now (another run when a later snapshot
    /// was published since).
    pub current_run: Option<RunId>,
    /// True when the earlier build had written its manifest but stopped
    /// before swapping `_CURRENT` (killed, storage down): this call swapped
    /// it, finishing that publish.
    pub completed_publish: bool,
}

impl fmt::Display for AlreadyPublished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.completed_publish {
            writeln!(
                f,
                "run {} had written its manifest but not swapped _CURRENT: published it now",
                self.run_id
            )?;
        } else {
            writeln!(f, "run {} was already published: nothing to do", self.run_id)?;
        }
        writeln!(f, "  manifest:       {}", self.manifest_ref)?;
        writeln!(f, "  published at:   {}", self.published_at.to_iso())?;
        writeln!(
            f,
            "  rows:           {} in {} shards ({} with rows)",
            self.rows, self.num_dbs, self.shards_written
        )?;
        match &self.current_run {
            Some(r) if *r != self.run_id => write!(f, "  _CURRENT:       run {r} (a later snapshot)"),
            Some(_) => write!(f, "  _CURRENT:       this run"),
            None => write!(f, "  _CURRENT:       none"),
        }
    }
}
