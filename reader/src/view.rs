//! Reads bound to one snapshot: [`SnapshotView`], and the lookups every
//! read of the [`Reader`](crate::Reader) goes through.
//!
//! A service that must name the version it answered from (or answer a
//! whole batch from one version) takes a view first
//! ([`Reader::current`](crate::Reader::current), or
//! [`Reader::version`](crate::Reader::version) for a kept older one) and
//! reads through it: a refresh swapping in the meantime changes nothing
//! for the view, which holds its snapshot (and its open shards) until it
//! is dropped.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use sf_manifest::format::vector::VectorMeta;
use sf_manifest::{CelType, DbId, Key, KeyEncoding, RunId};
use sf_router::ContextValue;

use crate::error::{Error, Result};
use crate::info::SnapshotInfo;
use crate::shard::VectorHit;
use crate::shard::{Inline, MEMORY_TASK_KEYS, ShardEnv, ShardHandle, SlotKey};
use crate::snapshot::{RoutingContext, Snapshot};
use crate::state::ReaderState;
use crate::vector::{MAX_TOP_K, SearchHit, SearchOptions, SearchResults, SearchWithValues, VectorId};
use sf_router::filter::PayloadFilter;
use sf_router::vector::{Hit, check_vector};

/// Which of the snapshots a reader holds a read goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// The served snapshot.
    Current,
    /// The newest held snapshot built by this run.
    RunId(RunId),
    /// By position among the held snapshots: 0 is the served one, 1 the
    /// one it replaced, and so on up to `keep_versions`.
    Offset(usize),
}

/// One snapshot of a [`Reader`](crate::Reader), held for as long as the
/// view lives; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct SnapshotView {
    pub(crate) state: Arc<ReaderState>,
    pub(crate) snap: Arc<Snapshot>,
    pub(crate) pinned: bool,
}

impl std::fmt::Debug for SnapshotView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotView")
            .field("manifest_ref", &self.snap.manifest_ref)
            .field("run_id", &self.snap.manifest.build.run_id)
            .finish_non_exhaustive()
    }
}

impl SnapshotView {
    /// The run that built this snapshot.
    pub fn run_id(&self) -> &RunId {
        &self.snap.manifest.build.run_id
    }

    /// The manifest, as `_CURRENT` (or the pin) named it.
    pub fn manifest_ref(&self) -> &str {
        &self.snap.manifest_ref
    }

    /// Its key encoding.
    pub fn key_encoding(&self) -> KeyEncoding {
        self.snap.manifest.build.key_encoding
    }

    /// Whether lookups need a routing context (CEL over non-key columns).
    pub fn needs_context(&self) -> bool {
        self.snap.router.needs_context()
    }

    /// What it is.
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo::of(&self.snap, self.pinned)
    }

    /// The value of `key` in this snapshot.
    pub async fn get(&self, key: &Key) -> Result<Option<Bytes>> {
        self.state.check_open()?;
        let read = lookup(&self.state.env, &self.snap, key, None);
        self.state.limited(1, read, one_cost).await
    }

    /// [`get`](Self::get) with a routing context.
    pub async fn get_with_context(&self, key: &Key, context: &RoutingContext) -> Result<Option<Bytes>> {
        self.state.check_open()?;
        let read = lookup(&self.state.env, &self.snap, key, Some(context));
        self.state.limited(1, read, one_cost).await
    }

    /// Values of many keys from this snapshot, in input order.
    pub async fn multi_get(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        self.state.check_open()?;
        let read = served_multi_lookup(&self.state, &self.snap, keys.iter().map(|k| (k, None)));
        self.state.limited(keys.len(), read, many_cost).await
    }

    /// The vectors of this snapshot nearest `query`; see
    /// [`Reader::search`](crate::Reader::search).
    pub async fn search(&self, query: &[f32], options: &SearchOptions) -> Result<SearchResults> {
        self.state.check_open()?;
        let read = search_vectors(&self.state, &self.snap, query, options);
        self.state.limited(1, read, |_| (0, 0)).await
    }

    /// [`search`](Self::search), then the value of each hit's id taken as
    /// a key, from this same snapshot; see
    /// [`Reader::search_then_get`](crate::Reader::search_then_get).
    pub async fn search_then_get(&self, query: &[f32], options: &SearchOptions) -> Result<SearchWithValues> {
        self.state.check_open()?;
        let read = search_then_get(&self.state, &self.snap, query, options);
        self.state.limited(1, read, search_cost).await
    }

    /// [`multi_get`](Self::multi_get) with a routing context per key
    /// (`None`: the key alone routes).
    pub async fn multi_get_with_contexts(&self, items: &[(Key, Option<RoutingContext>)]) -> Result<Vec<Option<Bytes>>> {
        self.state.check_open()?;
        let read = served_multi_lookup(&self.state, &self.snap, items.iter().map(|(k, c)| (k, c.as_ref())));
        self.state.limited(items.len(), read, many_cost).await
    }

    /// Parses a key as `sf-read` does, by this snapshot's key encoding.
    pub fn parse_key(&self, text: &str) -> Result<Key> {
        parse_key(self.key_encoding(), text)
    }

    /// Parses `column=value` pairs by this snapshot's CEL columns.
    pub fn parse_context<'a>(&self, pairs: impl IntoIterator<Item = &'a str>) -> Result<RoutingContext> {
        parse_context(&self.snap, pairs)
    }
}

/// What a `get` costs past its key: its value's bytes.
pub(crate) fn one_cost(v: &Option<Bytes>) -> (u64, u64) {
    (0, crate::ratelimit::value_bytes([v]))
}

/// What a `multi_get` costs past its keys: its values' bytes.
pub(crate) fn many_cost(v: &Vec<Option<Bytes>>) -> (u64, u64) {
    (0, crate::ratelimit::value_bytes(v))
}

/// What a search with values costs past its one key: a key per value
/// fetched, and their bytes.
pub(crate) fn search_cost(found: &SearchWithValues) -> (u64, u64) {
    (found.values.len() as u64, crate::ratelimit::value_bytes(&found.values))
}

pub(crate) fn parse_key(encoding: KeyEncoding, text: &str) -> Result<Key> {
    sf_router::parse_key(text, encoding).map_err(|source| Error::InvalidKey {
        text: text.to_string(),
        source,
    })
}

pub(crate) fn parse_context<'a>(snap: &Snapshot, pairs: impl IntoIterator<Item = &'a str>) -> Result<RoutingContext> {
    // A vector-only CEL snapshot routes by the columns of its
    // custom.vector (its key-value sharding is the reference's filler).
    let columns = match &snap.manifest.build.sharding.cel_columns {
        Some(c) => c.clone(),
        None => VectorMeta::from_custom(&snap.manifest.build.custom)
            .ok()
            .flatten()
            .and_then(|m| m.cel)
            .map(|c| c.columns)
            .unwrap_or_default(),
    };
    let mut ctx = RoutingContext::new();
    for pair in pairs {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| Error::config("routing context", format!("{pair:?} is not column=value")))?;
        let ty: CelType = *columns.get(name).ok_or_else(|| {
            Error::config(
                "routing context",
                format!(
                    "{name:?} is not a routing column of this snapshot (its columns: {})",
                    if columns.is_empty() {
                        "none, it routes by hash".to_string()
                    } else {
                        columns.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            )
        })?;
        ctx.insert(name.to_string(), ContextValue::parse(ty, value)?);
    }
    Ok(ctx)
}

pub(crate) async fn lookup(
    env: &Arc<ShardEnv>,
    snap: &Snapshot,
    key: &Key,
    context: Option<&RoutingContext>,
) -> Result<Option<Bytes>> {
    // Encoding first: a key of the wrong type fails before any I/O.
    let encoded = snap.router.encode_key(key)?;
    let Some(db) = snap.route(key, context)? else {
        return Ok(None);
    };
    match snap.shard(env, db).await? {
        None => Ok(None),
        Some(shard) => shard.get(&encoded).await,
    }
}

/// [`lookup`] on the calling thread, when the key's shard is open and
/// answers from local data as `inline` allows; `None` when it would have
/// to wait (a shard to open, a range read, SlateDB) or when the calling
/// thread is a runtime's (SQLite never runs on a runtime worker; see
/// `shard::sqlite`).
pub(crate) fn lookup_now(
    snap: &Snapshot,
    key: &Key,
    context: Option<&RoutingContext>,
    inline: Inline,
) -> Option<Result<Option<Bytes>>> {
    if inline == Inline::LocalFiles && tokio::runtime::Handle::try_current().is_ok() {
        return None;
    }
    let encoded = match snap.router.encode_key(key) {
        Ok(e) => e,
        Err(e) => return Some(Err(e.into())),
    };
    let db = match snap.route(key, context) {
        Ok(Some(db)) => db,
        Ok(None) => return Some(Ok(None)),
        Err(e) => return Some(Err(e)),
    };
    match snap.shard_if_open(db)? {
        None => Some(Ok(None)),
        Some(shard) => shard.get_now(&encoded, inline),
    }
}

/// Keys grouped by shard; shards read concurrently (up to
/// `max_concurrency`), all from `snap`; values in input order.
/// A reader's multi_get: [`multi_lookup`] of `snap` with the reader's
/// concurrency.
pub(crate) async fn served_multi_lookup<'a>(
    state: &ReaderState,
    snap: &Snapshot,
    items: impl ExactSizeIterator<Item = (&'a Key, Option<&'a RoutingContext>)>,
) -> Result<Vec<Option<Bytes>>> {
    if sf_manifest::publish::failpoint::sabotaged("multi-get-across-versions") {
        // Sabotage: each key from the snapshot served when it is read.
        let mut out = Vec::with_capacity(items.len());
        for (key, ctx) in items {
            out.push(lookup(&state.env, &state.served(), key, ctx).await?);
            tokio::task::yield_now().await;
        }
        return Ok(out);
    }
    multi_lookup(&state.env, snap, state.settings.max_concurrency, items).await
}

pub(crate) async fn multi_lookup<'a>(
    env: &Arc<ShardEnv>,
    snap: &Snapshot,
    max_concurrency: usize,
    items: impl ExactSizeIterator<Item = (&'a Key, Option<&'a RoutingContext>)>,
) -> Result<Vec<Option<Bytes>>> {
    let n = items.len();
    // Every key encoded into one buffer; each routed key is its shard, its
    // position and where its bytes end (they start where the previous
    // routed key's end).
    let mut key_bytes: Vec<u8> = Vec::with_capacity(n * 16);
    let mut routed: Vec<Routed> = Vec::with_capacity(n);
    for (slot, (key, ctx)) in items.enumerate() {
        let start = key_bytes.len();
        snap.router.encode_key_into(key, &mut key_bytes)?;
        match snap.route(key, ctx)? {
            Some(db) => routed.push(Routed {
                db,
                slot,
                start,
                end: key_bytes.len(),
            }),
            None => key_bytes.truncate(start),
        }
    }
    // By shard (and input position: no key comparisons here; a SQLite
    // shard sorts its own group by key, a memory shard needs no order).
    routed.sort_unstable_by_key(|r| (r.db, r.slot));
    let mut groups: Vec<(DbId, std::ops::Range<usize>)> = Vec::new();
    for (i, r) in routed.iter().enumerate() {
        match groups.last_mut() {
            Some((d, g)) if *d == r.db => g.end = i + 1,
            _ => groups.push((r.db, i..i + 1)),
        }
    }
    // A batch this small is looked up in its memory-mode shards right here:
    // a task per shard would cost more than the lookups.
    let inline_memory = routed.len() < MEMORY_TASK_KEYS;
    let (routed, key_bytes) = (&routed, &key_bytes);
    let owned_keys = |range: std::ops::Range<usize>| -> Vec<SlotKey> {
        routed[range]
            .iter()
            .map(|r| (r.slot, key_bytes[r.start..r.end].to_vec()))
            .collect()
    };
    let mut out: Vec<Option<Bytes>> = vec![None; n];
    // Shards open concurrently; small groups on downloaded shards wait
    // for the others' opens and then share one blocking task.
    let mut small = Vec::new();
    let mut in_memory = Vec::new();
    let mut results = futures::stream::iter(groups)
        .map(|(db, range)| async move {
            match snap.shard(env, db).await? {
                None => Ok::<_, Error>(None),
                Some(shard) if inline_memory && shard.memory().is_some() => {
                    Ok(Some(Deferred::Memory(Arc::clone(shard), range)))
                }
                Some(shard) if shard.batches_small_groups(range.len()) => {
                    Ok(Some(Deferred::Small(Arc::clone(shard), owned_keys(range))))
                }
                Some(shard) => Ok(Some(Deferred::Done(shard.get_many(owned_keys(range)).await?))),
            }
        })
        .buffer_unordered(max_concurrency);
    while let Some(part) = results.try_next().await? {
        match part {
            None => {}
            Some(Deferred::Memory(shard, range)) => in_memory.push((shard, range)),
            Some(Deferred::Small(shard, keys)) => small.push((shard, keys)),
            Some(Deferred::Done(values)) => {
                for (slot, v) in values {
                    out[slot] = v;
                }
            }
        }
    }
    drop(results);
    if !in_memory.is_empty() {
        memory_lookups_into(&mut out, &in_memory, routed, key_bytes);
    }
    if !small.is_empty() {
        for (slot, v) in ShardHandle::get_small_groups(small).await? {
            out[slot] = v;
        }
    }
    Ok(out)
}

/// A key of a multi-get, routed: its shard, its position in the batch and
/// where its encoded bytes end in the batch's key buffer.
struct Routed {
    db: DbId,
    slot: usize,
    start: usize,
    end: usize,
}

/// Looks up the groups of `routed` (ranges of it) in their memory-mode
/// shards on the caller's thread, copying every value found into one
/// buffer and handing each out as a slice of it: one allocation for the
/// values of the whole batch, not one each. (A value kept holds the
/// buffer, so the batch's values go back together.)
fn memory_lookups_into(
    out: &mut [Option<Bytes>],
    groups: &[(Arc<ShardHandle>, std::ops::Range<usize>)],
    routed: &[Routed],
    key_bytes: &[u8],
) {
    let mut values: Vec<u8> = Vec::new();
    let mut found: Vec<(usize, usize, usize)> = Vec::new();
    let mut keys: Vec<(usize, &[u8])> = Vec::new();
    for (shard, range) in groups {
        let Some(index) = shard.memory() else { continue };
        keys.clear();
        keys.extend(
            routed[range.clone()]
                .iter()
                .map(|r| (r.slot, &key_bytes[r.start..r.end])),
        );
        index.get_each(&keys, |slot, value| {
            if let Some(v) = value {
                let start = values.len();
                values.extend_from_slice(v);
                found.push((slot, start, values.len()));
            }
        });
    }
    let values = Bytes::from(values);
    for (slot, start, end) in found {
        out[slot] = Some(values.slice(start..end));
    }
}

/// A shard group's part of a multi-get: looked up, left for the batch
/// of small groups, or left for the caller's thread (a memory-mode shard).
enum Deferred {
    Memory(Arc<ShardHandle>, std::ops::Range<usize>),
    Small(Arc<ShardHandle>, Vec<SlotKey>),
    Done(Vec<(usize, Option<Bytes>)>),
}

/// Reads `settings.warmup_keys` from `snap` (opening their shards).
pub(crate) async fn warm_up(env: &Arc<ShardEnv>, snap: &Snapshot, keys: &[String]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let encoding = snap.manifest.build.key_encoding;
    let parsed = keys
        .iter()
        .map(|t| parse_key(encoding, t))
        .collect::<Result<Vec<_>>>()?;
    if snap.router.needs_context() {
        return Err(Error::config(
            "warmup_keys",
            format!(
                "snapshot {} routes by a context that warm-up keys do not carry",
                snap.manifest_ref
            ),
        ));
    }
    multi_lookup(
        env,
        snap,
        env.settings.max_concurrency,
        parsed.iter().map(|k| (k, None)),
    )
    .await?;
    Ok(())
}

/// Searches `snap` for the vectors nearest `query` (see [`crate::vector`]).
pub(crate) async fn search_vectors(
    state: &ReaderState,
    snap: &Snapshot,
    query: &[f32],
    opts: &SearchOptions,
) -> Result<SearchResults> {
    if opts.top_k == 0 || opts.top_k > MAX_TOP_K {
        return Err(Error::config(
            "top_k",
            format!("{} is not from 1 to {MAX_TOP_K}", opts.top_k),
        ));
    }
    let index = snap.vector_index(&state.store).await?;
    let meta = index.meta();
    check_vector(meta.metric, meta.dim as usize, query)
        .map_err(|e| Error::config("query", format!("the query {e}")))?;
    let filter = match &opts.filter {
        Some(expr) => Some(Arc::new(
            PayloadFilter::compile(expr).map_err(|e| Error::config("filter", format!("the filter {e}")))?,
        )),
        None => None,
    };
    let shards = index.targets(
        snap.manifest.build.num_dbs,
        &snap.router,
        || snap.non_empty_shards(),
        query,
        opts,
    )?;
    let query: Arc<[f32]> = Arc::from(query);
    let env = &state.env;
    let asks = shards.iter().map(|db| {
        let query = Arc::clone(&query);
        let filter = filter.clone();
        async move {
            let Some(shard) = snap.shard(env, *db).await? else {
                return Ok(Vec::new());
            };
            let max_vectors = snap.manifest.shard(*db).map_or(0, |r| r.row_count);
            shard
                .vector_top_k(query, meta.metric, opts.top_k, max_vectors, filter)
                .await
        }
    });
    let per_shard: Vec<Vec<VectorHit>> = futures::future::try_join_all(asks).await?;
    // Each shard's list is already its top_k: sorting their union is the
    // merge.
    let mut hits: Vec<VectorHit> = per_shard.into_iter().flatten().collect();
    hits.sort_by(|a, b| Hit::order(&a.hit, &b.hit));
    hits.truncate(opts.top_k);
    let mut out = Vec::with_capacity(hits.len());
    for VectorHit { hit, id, payload } in hits {
        // A payload is a JSON object (the reference stores a dict's
        // json.dumps): anything else is a damaged shard.
        let bad_payload = |reason: String| Error::ShardRead {
            db_id: DbId(hit.shard),
            url: snap.shard_url(DbId(hit.shard)).unwrap_or_default().to_string(),
            reason: format!("vec_payloads row {} {reason}", hit.rowid),
            kind: sf_manifest::ErrorKind::Data,
            source: None,
        };
        let payload = match payload {
            None => None,
            Some(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(object @ serde_json::Value::Object(_)) => Some(object),
                Ok(other) => {
                    return Err(bad_payload(format!(
                        "is not a JSON object: {}",
                        other.to_string().chars().take(60).collect::<String>()
                    )));
                }
                Err(e) => return Err(bad_payload(format!("is not JSON: {e}"))),
            },
        };
        out.push(SearchHit {
            id,
            score: hit.score,
            payload,
            db_id: DbId(hit.shard),
        });
    }
    Ok(SearchResults {
        hits: out,
        shards,
        run_id: snap.manifest.build.run_id.as_str().to_string(),
    })
}

/// Searches `snap`, then reads the value of each hit's id, taken as a key
/// of the snapshot's key type as `get` takes it, from `snap` too.
pub(crate) async fn search_then_get(
    state: &ReaderState,
    snap: &Snapshot,
    query: &[f32],
    opts: &SearchOptions,
) -> Result<SearchWithValues> {
    let index = snap.vector_index(&state.store).await?;
    if !index.meta().unified {
        return Err(Error::config(
            "search_then_get",
            format!(
                "snapshot {} is vector-only: it holds no values to get (search it without values)",
                snap.manifest_ref
            ),
        ));
    }
    let results = search_vectors(state, snap, query, opts).await?;
    let encoding = snap.manifest.build.key_encoding;
    // An id that is not a key of this snapshot's type has no value.
    let keys: Vec<Option<Key>> = results
        .hits
        .iter()
        .map(|h| {
            let text = match &h.id {
                VectorId::Int(i) => i.to_string(),
                VectorId::Str(s) => s.clone(),
            };
            parse_key(encoding, &text).ok()
        })
        .collect();
    let mut values = vec![None; keys.len()];
    if snap.router.needs_context() {
        // Keys of a snapshot routed by other columns cannot route alone; a
        // unified snapshot stores each vector in its key's shard, where
        // the hit was found.
        for ((slot, key), hit) in keys.iter().enumerate().zip(&results.hits) {
            let Some(key) = key else { continue };
            let Ok(encoded) = snap.router.encode_key(key) else {
                continue;
            };
            if let Some(shard) = snap.shard(&state.env, hit.db_id).await? {
                values[slot] = shard.get(&encoded).await?;
            }
        }
    } else {
        let asked: Vec<(usize, &Key)> = keys
            .iter()
            .enumerate()
            .filter_map(|(slot, k)| k.as_ref().map(|k| (slot, k)))
            .filter(|(_, k)| snap.router.encode_key(k).is_ok())
            .collect();
        let found = multi_lookup(
            &state.env,
            snap,
            state.settings.max_concurrency,
            asked.iter().map(|(_, k)| (*k, None)),
        )
        .await?;
        for ((slot, _), v) in asked.iter().zip(found) {
            values[*slot] = v;
        }
    }
    Ok(SearchWithValues { results, values })
}
