//! Vector search over a snapshot that holds vectors (docs/FORMAT.md,
//! "Vector snapshots"), written by the reference library or by ShardForge.
//!
//! A search picks its shards, asks each for its `top_k` nearest vectors
//! (an exact scan of the shard's `vec0` chunks, on the blocking pool; in
//! memory mode a scan of the shard's vectors held in one `f32` arena,
//! loaded on its first search, with the same scores bit for bit), and
//! merges them: ascending distance, equal distances by shard then rowid.
//! Which shards:
//! - `shard_ids`, when given, exactly those;
//! - a unified snapshot: every shard, or with a routing context (a CEL
//!   snapshot) the one shard the context routes to;
//! - a vector-only snapshot: the `num_probes` nearest shards by its CLUSTER
//!   centroids or LSH hyperplanes (loaded from the snapshot's `.npy`
//!   artifacts on the first search); an `explicit` one in the `shard_ids`
//!   a search names; a `cel` one in the one shard its routing context
//!   routes to (its `cel_expr` over `cel_columns`, with `routing_values`
//!   as the categorical lookup; a context whose token the snapshot does
//!   not know searches no shard), or in the `shard_ids` it names.
//!
//! A query is checked first: its length must be the snapshot's dimension,
//! its components finite, and under cosine it must not be zero.

use serde_json::Value;
use sf_manifest::format::npy;
use sf_manifest::format::vector::{VectorMeta, VectorSharding};
use sf_manifest::publish::manifest_store::get_bytes_capped;
use sf_manifest::{BuildMeta, DbId, ObjectManifestStore};
use sf_router::vector::{ClusterRouter, LshRouter};
use sf_router::{Routed, Router};

pub use sf_manifest::format::vector::{Metric, VectorId};

use crate::error::{Error, Result};

/// Values of a CEL snapshot's routing columns (the reader's
/// `RoutingContext`).
type RoutingContext = std::collections::BTreeMap<String, sf_router::ContextValue>;

/// Room for an `.npy` header (NumPy's own are under 1 KiB).
const NPY_HEADER_BYTES: u64 = 64 * 1024;

/// The most results one search returns.
pub const MAX_TOP_K: usize = 10_000;

/// What a search asks for besides its query.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOptions {
    /// Results wanted (1 to [`MAX_TOP_K`]).
    pub top_k: usize,
    /// Vector-only snapshots: shards to probe (default: the manifest's
    /// `num_probes`).
    pub num_probes: Option<u32>,
    /// Search exactly these shards.
    pub shard_ids: Option<Vec<DbId>>,
    /// A CEL snapshot: the routing columns' values, which name one shard.
    pub routing_context: Option<RoutingContext>,
    /// A CEL predicate over the payload (its top-level fields are the
    /// variables: `category == "a" && price < 10`), asked of each
    /// candidate before the top-k cut: the `top_k` nearest vectors that
    /// match, among the searched shards. Anything but `true` does not
    /// match: a payload without the field, a hit without a payload (it
    /// binds no variables), an error.
    pub filter: Option<String>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            top_k: 10,
            num_probes: None,
            shard_ids: None,
            routing_context: None,
            filter: None,
        }
    }
}

/// One result.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// The id stored with the vector.
    pub id: VectorId,
    /// Its distance to the query (lower is nearer).
    pub score: f64,
    /// The payload stored with it, if any.
    pub payload: Option<Value>,
    /// The shard it is in.
    pub db_id: DbId,
}

/// The results of one search, all from one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResults {
    /// Nearest first.
    pub hits: Vec<SearchHit>,
    /// The shards searched, in the order they were chosen (probe order).
    pub shards: Vec<DbId>,
    /// The run id of the snapshot searched.
    pub run_id: String,
}

/// A search whose hits come with the key-value value of their ids, all
/// read from one snapshot ([`Reader::search_then_get`](crate::Reader::search_then_get)).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchWithValues {
    /// The search.
    pub results: SearchResults,
    /// For each hit, in order, the value stored under its id taken as a
    /// key (`None`: no such key, or an id that is not a key of the
    /// snapshot's key type).
    pub values: Vec<Option<bytes::Bytes>>,
}

/// A snapshot's vector metadata and the router its searches use.
#[derive(Debug)]
pub(crate) struct VectorIndex {
    meta: VectorMeta,
    routing: Routing,
}

#[derive(Debug)]
enum Routing {
    /// Unified: every shard (or the routing context's).
    FanOut,
    Cluster(ClusterRouter),
    Lsh(LshRouter),
    /// Vector-only `explicit`: the caller names the shards.
    Named(VectorSharding),
    /// Vector-only `cel`: the routing context names the shard.
    Cel(Box<Router>),
}

impl VectorIndex {
    /// The index of the snapshot of manifest `manifest_ref` (its `build`):
    /// its `custom.vector`, and for CLUSTER and LSH the artifact, read from
    /// `store` (read no further than the size its shape allows).
    pub(crate) async fn load(
        store: &ObjectManifestStore,
        manifest_ref: &str,
        build: &BuildMeta,
    ) -> Result<VectorIndex> {
        let bad = |reason: String| Error::Manifest(sf_manifest::Error::corrupt("manifest", manifest_ref, reason));
        let meta = VectorMeta::from_custom(&build.custom)
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| {
                Error::config(
                    "search",
                    format!(
                        "snapshot {} holds no vectors (its manifest has no custom.vector)",
                        manifest_ref
                    ),
                )
            })?;
        let num_dbs = build.num_dbs;
        // An artifact is read only up to the size its shape can have (`rows`
        // of `dim` f8 values), so a hostile object costs no more memory.
        let artifact = async |url: &Option<String>, what: &str, rows: u64| -> Result<npy::Matrix> {
            let url = url
                .as_deref()
                .ok_or_else(|| bad(format!("a {} snapshot without its {what}_ref", meta.sharding.as_str())))?;
            let location = store
                .locate(url, Some(build.s3_prefix.as_str()))
                .map_err(|e| bad(format!("{what}_ref: {e}")))?;
            let bytes = get_bytes_capped(
                &location.store,
                &location.path,
                "routing artifact",
                &location.url,
                rows * u64::from(meta.dim) * 8 + NPY_HEADER_BYTES,
            )
            .await?;
            let m = npy::read(&bytes, &location.url)?;
            if m.cols != meta.dim as usize {
                return Err(bad(format!(
                    "{what} of dimension {}, the snapshot's is {}",
                    m.cols, meta.dim
                )));
            }
            Ok(m)
        };
        let routing = match (meta.unified, meta.sharding) {
            (true, _) => Routing::FanOut,
            (false, VectorSharding::Cluster) => {
                let m = artifact(&meta.centroids_ref, "centroids", u64::from(num_dbs)).await?;
                if m.rows != num_dbs as usize {
                    return Err(bad(format!("{} centroids for {num_dbs} shards", m.rows)));
                }
                Routing::Cluster(ClusterRouter::new(m, meta.metric))
            }
            (false, VectorSharding::Lsh) => {
                let m = artifact(&meta.hyperplanes_ref, "hyperplanes", 63).await?;
                Routing::Lsh(LshRouter::new(m, num_dbs).map_err(bad)?)
            }
            (false, VectorSharding::Cel) => {
                let cel = meta
                    .cel
                    .as_ref()
                    .ok_or_else(|| bad("a cel snapshot without its cel_expr".into()))?;
                let router = Router::new(&cel.sharding(), num_dbs, build.key_encoding)
                    .map_err(|e| bad(format!("its custom.vector CEL routing: {e}")))?;
                Routing::Cel(Box::new(router))
            }
            (false, other) => Routing::Named(other),
        };
        Ok(VectorIndex { meta, routing })
    }

    /// The snapshot's vector metadata.
    pub(crate) fn meta(&self) -> &VectorMeta {
        &self.meta
    }

    /// The shards a search of `query` asks, in order, in a snapshot of
    /// `num_dbs` shards routed by `router` whose manifest lists
    /// `non_empty`.
    pub(crate) fn targets(
        &self,
        num_dbs: u32,
        router: &Router,
        non_empty: impl FnOnce() -> Vec<DbId>,
        query: &[f32],
        opts: &SearchOptions,
    ) -> Result<Vec<DbId>> {
        if let Some(ids) = &opts.shard_ids {
            if let Some(bad) = ids.iter().find(|d| d.0 >= num_dbs) {
                return Err(Error::config(
                    "shard_ids",
                    format!("shard {bad} is not one of the snapshot's {num_dbs}"),
                ));
            }
            let mut seen = Vec::with_capacity(ids.len());
            for id in ids {
                if !seen.contains(id) {
                    seen.push(*id);
                }
            }
            return Ok(seen);
        }
        let probes = || opts.num_probes.unwrap_or(self.meta.num_probes).max(1) as usize;
        match &self.routing {
            Routing::FanOut => match &opts.routing_context {
                Some(ctx) => match router.route_context(ctx)? {
                    Routed::Db(d) => Ok(vec![DbId(d)]),
                    Routed::UnknownToken => Ok(Vec::new()),
                },
                None => Ok(non_empty()),
            },
            Routing::Cluster(r) => Ok(r.probes(query, probes()).into_iter().map(DbId).collect()),
            Routing::Lsh(r) => Ok(r.probes(query, probes()).into_iter().map(DbId).collect()),
            Routing::Cel(r) => match &opts.routing_context {
                Some(ctx) => match r.route_context(ctx)? {
                    Routed::Db(d) => Ok(vec![DbId(d)]),
                    Routed::UnknownToken => Ok(Vec::new()),
                },
                None => Err(Error::config(
                    "routing_context",
                    format!(
                        "a vector-only snapshot sharded by cel is searched in the shard its routing context names: \
                         give the values of {} (or name shards with shard_ids)",
                        r.cel()
                            .map(|c| c.columns().keys().cloned().collect::<Vec<_>>().join(", "))
                            .unwrap_or_default()
                    ),
                )),
            },
            Routing::Named(how) => Err(Error::config(
                "shard_ids",
                format!(
                    "a vector-only snapshot sharded by {} is searched in the shards you name (shard_ids)",
                    how.as_str()
                ),
            )),
        }
    }
}
