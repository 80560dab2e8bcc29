//! The per-shard sort and merge: one shard's collected rows handed to its
//! builder in key order, each key once, or in arrival order.
//!
//! [`ShardRows::drain`] hands a shard's rows (its chunks in memory and its
//! segments on disk, as
//! [`RowCollector::take_shard`](crate::route::collect::RowCollector::take_shard)
//! gives them) to a shard builder in key order, each key once, in slices
//! of up to [`CHUNK_ROWS`] rows, through a merge of the chunks and
//! segments, at most [`MAX_FAN_IN`] at a time (more are first merged into
//! fewer, in passes over consecutive groups). Rows still in memory reach
//! the builder by reference, without a copy.
//!
//! Without sorting ([`Order::Arrival`]) chunks and segments keep arrival
//! order and the drain concatenates them in that order.
//!
//! Equal keys: the row that arrived last wins (within a chunk, arrival
//! order decides; a later chunk or segment beats an earlier one), or the
//! shard fails with [`Error::DuplicateKey`] under
//! [`DuplicatePolicy::Error`].

use std::cmp::Ordering;
use std::path::Path;
use std::sync::Arc;

use sf_manifest::{DbId, KeyEncoding};

use crate::build::backend::{DuplicatePolicy, Row};
use crate::error::{Error, Result};
use crate::route::chunk::{Chunk, duplicate_error, key_prefix};
use crate::route::spill::{Segment, SegmentReader, SegmentWriter, SpillFile};

/// What [`ShardRows::measure`] calls with each row's key and value.
pub type RowVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;
/// Sources merged at once; more are merged in several passes.
pub const MAX_FAN_IN: usize = 16;
/// Rows handed to the builder per call.
pub const CHUNK_ROWS: usize = 4096;

/// What a drained shard's sort did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SortStats {
    /// Rows handed on.
    pub rows: u64,
    /// Rows dropped because a later row had the same key (sorted only).
    pub duplicates: u64,
    /// Segments of this shard written to disk, by spills and merge
    /// passes (0: its rows stayed in memory).
    pub spilled_runs: u32,
}

/// Whether shards are handed on sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By key, each key once.
    Key,
    /// In arrival order, duplicates included (the builder applies the
    /// duplicate policy itself).
    Arrival,
}

/// One shard's rows, taken out of a
/// [`RowCollector`](crate::route::collect::RowCollector).
#[derive(Debug)]
pub struct ShardRows {
    db_id: DbId,
    order: Order,
    on_duplicate: DuplicatePolicy,
    key_encoding: KeyEncoding,
    /// In memory, oldest first.
    chunks: Vec<Chunk>,
    /// On disk, oldest first.
    segments: Vec<Segment>,
    /// Rows dropped as duplicates so far.
    duplicates: u64,
    /// Merge-pass outputs written so far (names their files).
    merged: u32,
    /// Segments written by spills and merge passes, once [`measure`]
    /// made the passes.
    ///
    /// [`measure`]: Self::measure
    runs_counted: Option<u32>,
}

/// A merge source: a chunk in memory or a segment on disk.
enum Source {
    Chunk(Chunk),
    Segment(Segment),
}

impl Source {
    fn seq(&self) -> u64 {
        match self {
            Source::Chunk(c) => c.seq,
            Source::Segment(s) => s.seq,
        }
    }
}

impl ShardRows {
    /// The rows a collector held for shard `db_id`: its chunks and
    /// segments (each oldest first) and the duplicates already dropped.
    pub(crate) fn new(
        db_id: DbId,
        order: Order,
        on_duplicate: DuplicatePolicy,
        key_encoding: KeyEncoding,
        chunks: Vec<Chunk>,
        segments: Vec<Segment>,
        duplicates: u64,
    ) -> Self {
        ShardRows {
            db_id,
            order,
            on_duplicate,
            key_encoding,
            chunks,
            segments,
            duplicates,
            merged: 0,
            runs_counted: None,
        }
    }

    /// The shard.
    pub fn db_id(&self) -> DbId {
        self.db_id
    }

    /// Hands every row on (in key order, each key once; or in arrival
    /// order), in slices of up to [`CHUNK_ROWS`] rows. Merge passes, when
    /// more than [`MAX_FAN_IN`] sources must be merged, write to
    /// `merge_dir`. Blocking.
    pub fn drain(mut self, merge_dir: &Path, sink: &mut dyn FnMut(&[Row<'_>]) -> Result<()>) -> Result<SortStats> {
        let (db_id, policy, encoding) = (self.db_id, self.on_duplicate, self.key_encoding);
        let mut spilled_runs = self.runs_counted.unwrap_or(self.segments.len() as u32);
        if self.order == Order::Key {
            for c in &mut self.chunks {
                c.sort(db_id, policy, encoding)?;
                self.duplicates += std::mem::take(&mut c.duplicates);
            }
            while self.chunks.len() + self.segments.len() > MAX_FAN_IN {
                spilled_runs += self.merge_pass(merge_dir)?;
            }
        }
        let mut cursors = self.cursors()?;
        let chunks = &self.chunks;
        let mut batch = SinkBatch::default();
        let mut rows = 0u64;
        let mut hand_on = |cursor: &Cursor, key: &[u8], value: &[u8]| {
            rows += 1;
            batch.push(cursor, key, value, chunks, sink)
        };
        match self.order {
            Order::Key => {
                self.duplicates += merge(&mut cursors, chunks, db_id, policy, encoding, &mut hand_on)?;
            }
            Order::Arrival => {
                for c in &mut cursors {
                    c.advance(chunks)?;
                    while c.live {
                        let (k, v) = c.row(chunks);
                        hand_on(c, k, v)?;
                        c.advance(chunks)?;
                    }
                }
            }
        }
        batch.flush(chunks, sink)?;
        Ok(SortStats {
            rows,
            duplicates: self.duplicates,
            spilled_runs,
        })
    }

    /// Counts the sizes of the rows [`drain`](Self::drain) will hand on
    /// (sorted only: in key order, each key once), as `measure` sees
    /// them, for a builder that must know them before its first row
    /// (`output.sqlite.page_size = "auto"`): the same merge with nothing
    /// handed on, so rows on disk are read twice. Leaves the rows as they
    /// were, sorted. Blocking.
    pub fn measure(&mut self, merge_dir: &Path, measure: &mut RowVisitor<'_>) -> Result<()> {
        let (db_id, policy, encoding) = (self.db_id, self.on_duplicate, self.key_encoding);
        if self.order != Order::Key {
            return Err(Error::Internal(format!(
                "shard {db_id}: only sorted rows are measured before their build"
            )));
        }
        for c in &mut self.chunks {
            c.sort(db_id, policy, encoding)?;
            self.duplicates += std::mem::take(&mut c.duplicates);
        }
        // The passes drain would make; it finds them made.
        let mut runs = self.segments.len() as u32;
        while self.chunks.len() + self.segments.len() > MAX_FAN_IN {
            runs += self.merge_pass(merge_dir)?;
        }
        self.runs_counted = Some(runs);
        let mut cursors = self.cursors()?;
        merge(&mut cursors, &self.chunks, db_id, policy, encoding, &mut |_, k, v| {
            measure(k, v)
        })?;
        Ok(())
    }

    /// Cursors over every chunk and segment, oldest first (not advanced).
    fn cursors(&self) -> Result<Vec<Cursor>> {
        let mut cursors: Vec<Cursor> = (0..self.chunks.len())
            .map(|n| Cursor::memory(n, self.chunks[n].seq))
            .collect();
        for s in &self.segments {
            cursors.push(Cursor::disk(s)?);
        }
        cursors.sort_by_key(|c| c.seq);
        Ok(cursors)
    }

    /// Merges consecutive groups of up to [`MAX_FAN_IN`] sources into one
    /// segment each; returns the segments written.
    fn merge_pass(&mut self, dir: &Path) -> Result<u32> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut all: Vec<Source> = self
            .chunks
            .drain(..)
            .map(Source::Chunk)
            .chain(self.segments.drain(..).map(Source::Segment))
            .collect();
        all.sort_by_key(Source::seq);
        let mut written = 0u32;
        let mut rest = all.into_iter().peekable();
        while rest.peek().is_some() {
            let group: Vec<Source> = rest.by_ref().take(MAX_FAN_IN).collect();
            if group.len() == 1 {
                for s in group {
                    match s {
                        Source::Chunk(c) => self.chunks.push(c),
                        Source::Segment(s) => self.segments.push(s),
                    }
                }
                continue;
            }
            let seq = group.iter().map(Source::seq).max().unwrap_or(0);
            let mut chunks = Vec::new();
            let mut cursors = Vec::new();
            for s in group {
                match s {
                    Source::Chunk(c) => {
                        cursors.push(Cursor::memory(chunks.len(), c.seq));
                        chunks.push(c);
                    }
                    Source::Segment(s) => cursors.push(Cursor::disk(&s)?),
                }
            }
            cursors.sort_by_key(|c| c.seq);
            let path = dir.join(format!("merge-{:05}.sfspill", self.merged));
            self.merged += 1;
            let file = Arc::new(SpillFile { path: path.clone() });
            let mut out = SegmentWriter::create(&path)?;
            self.duplicates += merge(
                &mut cursors,
                &chunks,
                self.db_id,
                self.on_duplicate,
                self.key_encoding,
                &mut |_, k, v| out.write(k, v),
            )?;
            let len = out.position();
            out.finish()?;
            self.segments.push(Segment {
                file,
                offset: 0,
                len,
                seq,
            });
            written += 1;
        }
        Ok(written)
    }
}

/// Reads one source of a merge.
struct Cursor {
    seq: u64,
    live: bool,
    /// The current key's first 8 bytes (see [`key_prefix`]).
    prefix: u64,
    position: Position,
}

/// Where a cursor reads.
enum Position {
    /// In chunk `chunk` of the merge's chunks, before row `next_row` (so
    /// row `next_row - 1` is current).
    InChunk { chunk: usize, next_row: usize },
    /// In a segment on disk, through its reader (which holds the current
    /// row).
    InSegment(SegmentReader),
}

impl Cursor {
    fn memory(chunk: usize, seq: u64) -> Self {
        Cursor {
            seq,
            live: false,
            prefix: 0,
            position: Position::InChunk { chunk, next_row: 0 },
        }
    }

    fn disk(segment: &Segment) -> Result<Self> {
        Ok(Cursor {
            seq: segment.seq,
            live: false,
            prefix: 0,
            position: Position::InSegment(SegmentReader::open(segment)?),
        })
    }

    /// Moves to the next row; at the end `live` turns false.
    fn advance(&mut self, chunks: &[Chunk]) -> Result<()> {
        match &mut self.position {
            Position::InChunk { chunk, next_row } => {
                let c = &chunks[*chunk];
                self.live = *next_row < c.rows.len();
                if self.live {
                    self.prefix = c.rows[*next_row].prefix;
                    *next_row += 1;
                }
            }
            Position::InSegment(r) => {
                self.live = r.advance()?;
                if self.live {
                    self.prefix = key_prefix(&r.key);
                }
            }
        }
        Ok(())
    }

    /// The current row (only while `live`).
    fn row<'a>(&'a self, chunks: &'a [Chunk]) -> (&'a [u8], &'a [u8]) {
        match &self.position {
            Position::InChunk { chunk, next_row } => {
                let c = &chunks[*chunk];
                let r = &c.rows[*next_row - 1];
                (c.key(r), c.value(r))
            }
            Position::InSegment(r) => (&r.key, &r.value),
        }
    }

    fn key<'a>(&'a self, chunks: &'a [Chunk]) -> &'a [u8] {
        self.row(chunks).0
    }
}

/// Where a merge puts each row it picks: the cursor the row comes from,
/// its key and its value.
type MergeOutput<'a> = dyn FnMut(&Cursor, &[u8], &[u8]) -> Result<()> + 'a;

/// Merges sources (oldest first, each sorted with each key once) into one
/// key-ordered stream, each key once, the newest source's row winning;
/// returns the rows dropped.
fn merge(
    cursors: &mut [Cursor],
    chunks: &[Chunk],
    db_id: DbId,
    policy: DuplicatePolicy,
    encoding: KeyEncoding,
    output: &mut MergeOutput<'_>,
) -> Result<u64> {
    for c in cursors.iter_mut() {
        c.advance(chunks)?;
    }
    let mut duplicates = 0u64;
    loop {
        // Few sources at a time (MAX_FAN_IN): a scan beats a heap's upkeep.
        let mut best: Option<usize> = None;
        let mut tied = 0usize;
        for i in 0..cursors.len() {
            if !cursors[i].live {
                continue;
            }
            let Some(b) = best else {
                best = Some(i);
                continue;
            };
            let order = cursors[i]
                .prefix
                .cmp(&cursors[b].prefix)
                .then_with(|| cursors[i].key(chunks).cmp(cursors[b].key(chunks)));
            match order {
                Ordering::Less => (best, tied) = (Some(i), 0),
                // A later source wins a tie.
                Ordering::Equal => (best, tied) = (Some(i), tied + 1),
                Ordering::Greater => {}
            }
        }
        let Some(best) = best else { break };
        if tied > 0 {
            if policy == DuplicatePolicy::Error {
                return Err(duplicate_error(db_id, cursors[best].key(chunks), encoding));
            }
            duplicates += tied as u64;
            let key = cursors[best].key(chunks).to_vec();
            for (i, c) in cursors.iter_mut().enumerate() {
                if i != best && c.live && c.key(chunks) == key.as_slice() {
                    c.advance(chunks)?;
                }
            }
        }
        let (k, v) = cursors[best].row(chunks);
        output(&cursors[best], k, v)?;
        cursors[best].advance(chunks)?;
    }
    Ok(duplicates)
}

/// The next slice of rows for the builder's sink, handed on at
/// [`CHUNK_ROWS`] rows: rows of chunks in memory by reference, rows read
/// from disk copied into one buffer.
#[derive(Default)]
struct SinkBatch {
    data: Vec<u8>,
    rows: Vec<PendingRow>,
}

/// A row of a [`SinkBatch`], until the slice is handed on.
enum PendingRow {
    /// Row `row` of chunk `chunk`, still in memory.
    InChunk { chunk: usize, row: usize },
    /// Key and value in `data`: key at `start..mid`, value at `mid..end`.
    Copied { start: usize, mid: usize, end: usize },
}

impl SinkBatch {
    fn push(
        &mut self,
        cursor: &Cursor,
        key: &[u8],
        value: &[u8],
        chunks: &[Chunk],
        sink: &mut dyn FnMut(&[Row<'_>]) -> Result<()>,
    ) -> Result<()> {
        match &cursor.position {
            Position::InChunk { chunk, next_row } => self.rows.push(PendingRow::InChunk {
                chunk: *chunk,
                row: *next_row - 1,
            }),
            Position::InSegment(_) => {
                let start = self.data.len();
                self.data.extend_from_slice(key);
                let mid = self.data.len();
                self.data.extend_from_slice(value);
                self.rows.push(PendingRow::Copied {
                    start,
                    mid,
                    end: self.data.len(),
                });
            }
        }
        if self.rows.len() >= CHUNK_ROWS {
            self.flush(chunks, sink)?;
        }
        Ok(())
    }

    fn flush(&mut self, chunks: &[Chunk], sink: &mut dyn FnMut(&[Row<'_>]) -> Result<()>) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<Row<'_>> = self
            .rows
            .iter()
            .map(|e| match e {
                PendingRow::InChunk { chunk, row } => {
                    let c = &chunks[*chunk];
                    let r = &c.rows[*row];
                    (c.key(r), c.value(r))
                }
                PendingRow::Copied { start, mid, end } => (&self.data[*start..*mid], &self.data[*mid..*end]),
            })
            .collect();
        sink(&rows)?;
        self.rows.clear();
        self.data.clear();
        Ok(())
    }
}
