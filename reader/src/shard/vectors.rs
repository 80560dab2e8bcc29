//! Memory mode's vector search: a shard's vectors held in one contiguous
//! `f32` arena and scanned exactly, without SQLite.
//!
//! The arena is loaded on a shard's first search (a snapshot searched by
//! nobody costs nothing), from the `vec0` shadow tables, the id map and
//! the payloads, once; its bytes are counted first and taken from the
//! reader's memory budget before anything is allocated. A shard whose
//! vectors do not fit is searched through SQLite as in download mode.
//!
//! Layout: vectors go in blocks of [`LANES`], a block dimension-major:
//!
//! ```text
//! block b  [v0[0] v1[0] .. v7[0]] [v0[1] v1[1] .. v7[1]] ... [v0[dim-1] .. v7[dim-1]]
//! ```
//!
//! so the scan keeps one `f32` accumulator per lane and, for each
//! dimension, loads eight adjacent values, which the compiler turns into
//! vector instructions. Each lane still sums its own vector's terms in
//! dimension order, exactly as the scalar distance does, so the scores
//! are bit for bit those of the download-mode scan (and of sqlite-vec):
//! the same hits, in the same order, whatever the mode. The last block is
//! padded with zeros, which the scan never reports.

use std::sync::Arc;

use rusqlite::Connection;
use sf_manifest::format::untrusted::Budget;
use sf_manifest::format::vector::{Chunk, Metric, VectorId, f32s};
use sf_router::vector::{Hit, TopK};

use super::memory::{MemoryBudget, Reservation};
use super::sqlite::{VectorHit, not_a_shard};

/// Vectors per block: one accumulator each.
pub(crate) const LANES: usize = 8;

/// Where an id's or a payload's text is in [`VectorArena::text`]; `len`
/// [`ABSENT`] when the row has none.
#[derive(Debug, Clone, Copy)]
struct Span {
    at: u32,
    len: u32,
}

const ABSENT: u32 = u32::MAX;
const NONE: Span = Span { at: 0, len: ABSENT };

/// A shard's vectors, ids and payloads in memory; see the module docs.
#[derive(Debug)]
pub(crate) struct VectorArena {
    dim: usize,
    metric: Metric,
    /// Live vectors.
    len: usize,
    /// `ceil(len / LANES)` blocks of `dim * LANES` values.
    lanes: Vec<f32>,
    /// Cosine: each vector's sum of squares (summed in dimension order).
    norms: Vec<f32>,
    rowids: Vec<i64>,
    /// Positions in rowid order.
    by_rowid: Vec<u32>,
    /// Id-map and payload texts, back to back.
    text: Vec<u8>,
    ids: Vec<Span>,
    payloads: Vec<Span>,
    _reservation: Reservation,
}

/// What a shard's vectors take, counted before loading them.
struct Census {
    vectors: u64,
    text_bytes: u64,
}

const COUNT_VECTORS: &str = "SELECT count(*) FROM vec_index_rowids";
const TEXT_BYTES: &str = "SELECT (SELECT coalesce(sum(length(CAST(original_id AS BLOB))), 0) FROM vec_id_map) \
     + (SELECT coalesce(sum(length(CAST(payload AS BLOB))), 0) FROM vec_payloads)";
const CHUNKS: &str = "SELECT c.validity, c.rowids, v.vectors FROM vec_index_chunks c \
     JOIN vec_index_vector_chunks00 v ON v.rowid = c.chunk_id";
const IDS: &str = "SELECT internal_id, CAST(original_id AS BLOB) FROM vec_id_map";
const PAYLOADS: &str = "SELECT rowid, CAST(payload AS BLOB) FROM vec_payloads";

/// Bytes an arena of `c` needs (its `Vec`s exactly sized).
fn arena_bytes(c: &Census, dim: usize, metric: Metric) -> Option<u64> {
    let blocks = c.vectors.div_ceil(LANES as u64);
    let floats = blocks.checked_mul(LANES as u64)?.checked_mul(dim as u64)?;
    let norms = if metric == Metric::Cosine { c.vectors * 4 } else { 0 };
    let per_row = 8 + 4 + 2 * std::mem::size_of::<Span>() as u64;
    floats
        .checked_mul(4)?
        .checked_add(norms)?
        .checked_add(c.vectors.checked_mul(per_row)?)?
        .checked_add(c.text_bytes)
}

impl VectorArena {
    /// Loads the vectors of the shard open on `conn` (a file of
    /// `file_bytes` bytes) into memory, within `budget`; `None` when they
    /// do not fit (the caller searches through SQLite).
    pub(crate) fn load(
        conn: &Connection,
        budget: &Arc<MemoryBudget>,
        file_bytes: u64,
        dim: usize,
        metric: Metric,
    ) -> rusqlite::Result<Option<VectorArena>> {
        // Every read here is a full scan of a table the file holds: a
        // budget by the file's size stops only a file that makes more
        // work than it holds.
        let _budget = Budget::start(file_bytes.saturating_mul(64).saturating_add(1 << 20));
        let missing = |e: rusqlite::Error| match e.to_string() {
            m if m.contains("no such table") => not_a_shard(format!("it holds no vector index ({m})")),
            _ => e,
        };
        let census = Census {
            vectors: conn
                .query_row(COUNT_VECTORS, [], |r| r.get::<_, i64>(0))
                .map_err(missing)?
                .max(0) as u64,
            text_bytes: conn
                .query_row(TEXT_BYTES, [], |r| r.get::<_, i64>(0))
                .map_err(missing)?
                .max(0) as u64,
        };
        // The vectors and texts are in the file: a count beyond it is not
        // a vec0 table's.
        let stored = census
            .vectors
            .checked_mul(dim as u64 * 4)
            .and_then(|v| v.checked_add(census.text_bytes));
        if stored.is_none_or(|s| s > file_bytes) {
            return Err(not_a_shard(format!(
                "vec_index_rowids counts {} vectors of dimension {dim}, more than the {file_bytes}-byte file holds",
                census.vectors
            )));
        }
        if census.text_bytes >= u64::from(u32::MAX) {
            return Ok(None);
        }
        let Some(reservation) = arena_bytes(&census, dim, metric).and_then(|b| budget.reserve(b)) else {
            return Ok(None);
        };
        let n = census.vectors as usize;
        let mut arena = VectorArena {
            dim,
            metric,
            len: 0,
            lanes: Vec::new(),
            norms: Vec::new(),
            rowids: Vec::new(),
            by_rowid: Vec::new(),
            text: Vec::new(),
            ids: Vec::new(),
            payloads: Vec::new(),
            _reservation: reservation,
        };
        let over = |_| rusqlite::Error::ToSqlConversionFailure("the vector arena cannot be allocated".into());
        let floats = n.div_ceil(LANES) * LANES * dim;
        arena.lanes.try_reserve_exact(floats).map_err(over)?;
        arena.lanes.resize(floats, 0.0);
        arena.rowids.try_reserve_exact(n).map_err(over)?;
        arena.by_rowid.try_reserve_exact(n).map_err(over)?;
        if metric == Metric::Cosine {
            arena.norms.try_reserve_exact(n).map_err(over)?;
        }
        arena.text.try_reserve_exact(census.text_bytes as usize).map_err(over)?;
        arena.ids.try_reserve_exact(n).map_err(over)?;
        arena.payloads.try_reserve_exact(n).map_err(over)?;

        let mut stmt = conn.prepare(CHUNKS).map_err(missing)?;
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next()? {
            let chunk = Chunk::new(
                row.get_ref(0)?.as_blob()?,
                row.get_ref(1)?.as_blob()?,
                row.get_ref(2)?.as_blob()?,
                dim,
            )
            .map_err(|e| not_a_shard(format!("vec_index: {e}")))?;
            for (rowid, bytes) in chunk.live() {
                let i = arena.len;
                if i == n {
                    return Err(not_a_shard(format!(
                        "vec_index holds more live vectors than the {n} vec_index_rowids counts"
                    )));
                }
                let block = (i / LANES) * LANES * dim;
                let lane = i % LANES;
                let mut norm = 0f32;
                for (d, x) in f32s(bytes).enumerate() {
                    arena.lanes[block + d * LANES + lane] = x;
                    norm += x * x;
                }
                if metric == Metric::Cosine {
                    arena.norms.push(norm);
                }
                arena.rowids.push(rowid);
                arena.len += 1;
            }
        }
        drop(rows);
        // vec_index_rowids may count vectors no chunk holds live: the
        // blocks end at the last live one.
        arena.lanes.truncate(arena.len.div_ceil(LANES) * LANES * dim);
        // Ids and payloads by position: rowids are looked up in rowid
        // order (they are usually 0..n-1, but need not be).
        arena.by_rowid.extend(0..arena.len as u32);
        let rowids = &arena.rowids;
        arena.by_rowid.sort_unstable_by_key(|i| rowids[*i as usize]);
        if let Some(w) = arena
            .by_rowid
            .windows(2)
            .find(|w| rowids[w[0] as usize] == rowids[w[1] as usize])
        {
            return Err(not_a_shard(format!(
                "vec_index holds rowid {} twice",
                rowids[w[0] as usize]
            )));
        }
        arena.ids.resize(arena.len, NONE);
        arena.payloads.resize(arena.len, NONE);
        for (sql, is_id) in [(IDS, true), (PAYLOADS, false)] {
            let mut stmt = conn.prepare(sql).map_err(missing)?;
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next()? {
                let rowid: i64 = row.get(0)?;
                let Some(pos) = arena.position(rowid) else {
                    // An id or payload of no live vector is never returned.
                    continue;
                };
                let bytes = row.get_ref(1)?.as_blob()?;
                if arena.text.len() + bytes.len() > census.text_bytes as usize {
                    return Err(not_a_shard(
                        "vec_id_map and vec_payloads hold more text than they counted".into(),
                    ));
                }
                let span = Span {
                    at: arena.text.len() as u32,
                    len: bytes.len() as u32,
                };
                arena.text.extend_from_slice(bytes);
                if is_id {
                    arena.ids[pos] = span;
                } else {
                    arena.payloads[pos] = span;
                }
            }
        }
        Ok(Some(arena))
    }

    /// Where the vector of `rowid` is.
    fn position(&self, rowid: i64) -> Option<usize> {
        self.by_rowid
            .binary_search_by_key(&rowid, |i| self.rowids[*i as usize])
            .ok()
            .map(|at| self.by_rowid[at] as usize)
    }

    /// Whether a scan is short enough to run on a runtime worker (tens of
    /// microseconds).
    pub(crate) fn is_small(&self) -> bool {
        self.lanes.len() <= 64 * 1024
    }

    /// Vectors held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn text(&self, span: Span) -> Option<&[u8]> {
        (span.len != ABSENT).then(|| &self.text[span.at as usize..span.at as usize + span.len as usize])
    }

    /// The payload text of the vector at `i`, if it has one.
    fn payload(&self, i: usize) -> Option<&str> {
        // Loaded from a TEXT column: UTF-8 unless the file is broken, and
        // a broken payload reads as none.
        self.text(self.payloads[i]).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The `k` vectors nearest `query` for which `accept` holds (given
    /// each candidate's payload text, and asked only of those that would
    /// enter the top `k`), exactly, as shard `shard`'s hits.
    pub(crate) fn top_k(
        &self,
        shard: u32,
        query: &[f32],
        k: usize,
        accept: &mut dyn FnMut(Option<&str>) -> bool,
    ) -> rusqlite::Result<Vec<VectorHit>> {
        debug_assert_eq!(query.len(), self.dim);
        let mut top = TopK::new(k);
        let mut qq = 0f32;
        for x in query {
            qq += x * x;
        }
        let qn = f64::from(qq.sqrt());
        let mut acc = [0f32; LANES];
        for (b, block) in self.lanes.chunks_exact(self.dim * LANES).enumerate() {
            match self.metric {
                Metric::L2 => l2_block(query, block, &mut acc),
                Metric::Cosine => dot_block(query, block, &mut acc),
            }
            let base = b * LANES;
            for (lane, sum) in acc.iter().enumerate().take(self.len - base) {
                let i = base + lane;
                let score = match self.metric {
                    Metric::L2 => f64::from(sum.sqrt()),
                    Metric::Cosine => 1.0 - f64::from(*sum) / (qn * f64::from(self.norms[i].sqrt())),
                };
                let hit = Hit {
                    shard,
                    rowid: self.rowids[i],
                    score,
                };
                if top.admits(&hit) && accept(self.payload(i)) {
                    top.push(hit);
                }
            }
        }
        let hits = top.into_sorted();
        let mut out = Vec::with_capacity(hits.len());
        for hit in hits {
            let Some(i) = self.position(hit.rowid) else {
                continue;
            };
            let id = match self.text(self.ids[i]) {
                None => VectorId::Int(hit.rowid),
                Some(bytes) => std::str::from_utf8(bytes)
                    .map_err(|e| e.to_string())
                    .and_then(VectorId::decode)
                    .map_err(|e| not_a_shard(format!("vec_id_map row {}: {e}", hit.rowid)))?,
            };
            out.push(VectorHit {
                hit,
                id,
                payload: self.payload(i).map(str::to_string),
            });
        }
        Ok(out)
    }
}

/// `acc[j]` = the squared Euclidean distance from `query` to lane `j`'s
/// vector of `block`, summed in dimension order.
#[inline]
fn l2_block(query: &[f32], block: &[f32], acc: &mut [f32; LANES]) {
    *acc = [0f32; LANES];
    let (columns, _) = block.as_chunks::<LANES>();
    for (q, column) in query.iter().zip(columns) {
        for j in 0..LANES {
            let d = q - column[j];
            acc[j] += d * d;
        }
    }
}

/// `acc[j]` = the dot product of `query` and lane `j`'s vector of `block`,
/// summed in dimension order.
#[inline]
fn dot_block(query: &[f32], block: &[f32], acc: &mut [f32; LANES]) {
    *acc = [0f32; LANES];
    let (columns, _) = block.as_chunks::<LANES>();
    for (q, column) in query.iter().zip(columns) {
        for j in 0..LANES {
            acc[j] += q * column[j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sf_router::vector::distance;

    /// A deterministic spread of values (no random crate needed).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// A shard file of `vectors` in a vec0 table's shadow-table layout
    /// (chunks of 16 slots, one slot deleted), with ids and payloads.
    fn shard(dir: &std::path::Path, dim: usize, vectors: &[Vec<f32>]) -> (std::path::PathBuf, u64) {
        let path = dir.join("shard.db");
        let conn = Connection::open(&path).expect("create");
        conn.execute_batch(
            "CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE vec_index_chunks(chunk_id INTEGER PRIMARY KEY AUTOINCREMENT, size INTEGER NOT NULL, validity BLOB NOT NULL, rowids BLOB NOT NULL);
             CREATE TABLE vec_index_rowids(rowid INTEGER PRIMARY KEY AUTOINCREMENT, id, chunk_id INTEGER, chunk_offset INTEGER);
             CREATE TABLE vec_index_vector_chunks00(rowid PRIMARY KEY, vectors BLOB NOT NULL);
             CREATE TABLE vec_payloads (rowid INTEGER PRIMARY KEY, payload TEXT NOT NULL);
             CREATE TABLE vec_id_map (internal_id INTEGER PRIMARY KEY, original_id TEXT NOT NULL);",
        )
        .expect("ddl");
        let slots = 16;
        for (c, part) in vectors.chunks(slots).enumerate() {
            let mut validity = vec![0u8; slots / 8];
            let mut rowids = vec![0u8; slots * 8];
            let mut blob = vec![0u8; slots * dim * 4];
            for (s, v) in part.iter().enumerate() {
                let rowid = (c * slots + s) as i64;
                // Slot 3 of each chunk is deleted: cleared bit, zero rowid.
                if s != 3 {
                    validity[s / 8] |= 1 << (s % 8);
                    rowids[s * 8..s * 8 + 8].copy_from_slice(&rowid.to_le_bytes());
                    conn.execute(
                        "INSERT INTO vec_index_rowids (rowid, chunk_id, chunk_offset) VALUES (?1, ?2, ?3)",
                        (rowid, c as i64 + 1, s as i64),
                    )
                    .expect("rowid");
                    if rowid % 5 != 0 {
                        conn.execute(
                            "INSERT INTO vec_id_map VALUES (?1, ?2)",
                            (rowid, VectorId::Str(format!("doc-{rowid}")).encode()),
                        )
                        .expect("id");
                    }
                    if rowid % 2 == 0 {
                        conn.execute(
                            "INSERT INTO vec_payloads VALUES (?1, ?2)",
                            (rowid, format!("{{\"n\": {rowid}}}")),
                        )
                        .expect("payload");
                    }
                }
                for (d, x) in v.iter().enumerate() {
                    blob[(s * dim + d) * 4..(s * dim + d) * 4 + 4].copy_from_slice(&x.to_le_bytes());
                }
            }
            conn.execute(
                "INSERT INTO vec_index_chunks VALUES (?1, ?2, ?3, ?4)",
                (c as i64 + 1, slots as i64, validity, rowids),
            )
            .expect("chunk");
            conn.execute(
                "INSERT INTO vec_index_vector_chunks00 VALUES (?1, ?2)",
                (c as i64 + 1, blob),
            )
            .expect("vectors");
        }
        drop(conn);
        let size = std::fs::metadata(&path).expect("size").len();
        (path, size)
    }

    #[test]
    fn the_arena_scan_scores_bit_for_bit_as_the_scalar_distance() {
        for (dim, n) in [(1usize, 1usize), (3, 7), (8, 8), (13, 61), (64, 100)] {
            let vectors: Vec<Vec<f32>> = (0..n).map(|i| values(dim, i as u64 + 1)).collect();
            let dir = tempfile::tempdir().expect("tmp");
            let (path, size) = shard(dir.path(), dim, &vectors);
            let conn = Connection::open(&path).expect("open");
            for metric in [Metric::L2, Metric::Cosine] {
                let budget = MemoryBudget::new(u64::MAX);
                let arena = VectorArena::load(&conn, &budget, size, dim, metric)
                    .expect("load")
                    .expect("fits");
                let live: Vec<usize> = (0..n).filter(|i| i % 16 != 3).collect();
                assert_eq!(arena.len(), live.len());
                assert!(budget.used_bytes() > 0);
                let query = values(dim, 999);
                let got = arena.top_k(7, &query, n, &mut |_| true).expect("scan");
                let mut want: Vec<Hit> = live
                    .iter()
                    .map(|i| Hit {
                        shard: 7,
                        rowid: *i as i64,
                        score: distance(metric, &query, &vectors[*i]),
                    })
                    .collect();
                want.sort_by(Hit::order);
                let hits: Vec<Hit> = got.iter().map(|h| h.hit).collect();
                assert_eq!(hits, want, "dim {dim}, {n} vectors, {metric:?}");
                for h in &got {
                    let r = h.hit.rowid;
                    let id = if r % 5 == 0 {
                        VectorId::Int(r)
                    } else {
                        VectorId::Str(format!("doc-{r}"))
                    };
                    assert_eq!(h.id, id);
                    assert_eq!(h.payload, (r % 2 == 0).then(|| format!("{{\"n\": {r}}}")));
                }
                // The filter is asked before the cut: the 3 nearest with a
                // payload.
                let filtered = arena.top_k(7, &query, 3, &mut |p| p.is_some()).expect("scan");
                let want: Vec<i64> = want
                    .iter()
                    .filter(|h| h.rowid % 2 == 0)
                    .take(3)
                    .map(|h| h.rowid)
                    .collect();
                assert_eq!(filtered.iter().map(|h| h.hit.rowid).collect::<Vec<_>>(), want);
                drop(arena);
                assert_eq!(budget.used_bytes(), 0, "the arena gives its bytes back");
            }
        }
    }

    #[test]
    fn rowids_counted_beyond_the_live_vectors_leave_no_empty_blocks() {
        let dim = 3;
        let vectors: Vec<Vec<f32>> = (0..20).map(|i| values(dim, i + 1)).collect();
        let dir = tempfile::tempdir().expect("tmp");
        let (path, _) = shard(dir.path(), dim, &vectors);
        let conn = Connection::open(&path).expect("open");
        for rowid in 1000..1030 {
            conn.execute("INSERT INTO vec_index_rowids (rowid) VALUES (?1)", [rowid])
                .expect("a stray rowid");
        }
        let size = std::fs::metadata(&path).expect("size").len();
        let budget = MemoryBudget::new(u64::MAX);
        let arena = VectorArena::load(&conn, &budget, size, dim, Metric::L2)
            .expect("load")
            .expect("fits");
        assert_eq!(arena.len(), 18);
        let hits = arena.top_k(0, &values(dim, 7), 100, &mut |_| true).expect("scan");
        assert_eq!(hits.len(), 18);
    }

    #[test]
    fn an_arena_over_the_budget_is_not_loaded() {
        let dim = 4;
        let vectors: Vec<Vec<f32>> = (0..40).map(|i| values(dim, i + 1)).collect();
        let dir = tempfile::tempdir().expect("tmp");
        let (path, size) = shard(dir.path(), dim, &vectors);
        let conn = Connection::open(&path).expect("open");
        let budget = MemoryBudget::new(100);
        assert!(
            VectorArena::load(&conn, &budget, size, dim, Metric::L2)
                .expect("load")
                .is_none()
        );
        assert_eq!(budget.used_bytes(), 0);
    }
}
