//! Collecting the rows of many shards in bounded memory, and handing each
//! shard's rows on sorted by key, each key once.
//!
//! A [`RowCollector`] takes rows (encoded keys and values, each with its
//! shard) as they arrive and appends them to the shard's *open chunk*: its
//! keys and values in one byte buffer, plus a small index entry per row.
//! Every byte comes from the run's shared [`MemoryBudget`], reserved as a
//! chunk grows, so a shard with few rows takes little and no memory is set
//! aside per shard. A chunk is sealed at [`MAX_RUN_BYTES`] and, when the
//! shard is to be sorted, sorted right away (by the caller, possibly
//! outside any lock: [`RowCollector::push`] hands sealed chunks back and
//! [`RowCollector::put_sealed`] takes them in again), so the sorting is
//! spread over the time the input is read.
//!
//! When the budget refuses a chunk more room, the collector *spills*: it
//! writes everything it holds to one file, shard after shard, each chunk
//! as one sorted *segment* (records of `u32` LE key length, key, `u32` LE
//! value length, value; each key once), and gives the memory back. One
//! spill covers every shard, so the number of files follows the data, not
//! the shard count.
//!
//! [`RowCollector::take_shard`] takes one shard's rows out (its chunks and
//! segments) and [`ShardRows::drain`] hands them to a shard builder in key
//! order, each key once, in slices of up to [`CHUNK_ROWS`] rows, through a
//! merge of the chunks and segments, at most [`MAX_FAN_IN`] at a time (more
//! are first merged into fewer, in passes over consecutive groups). Rows
//! still in memory reach the builder by reference, without a copy.
//!
//! Without sorting ([`Order::Arrival`]) chunks and segments keep arrival
//! order and the drain concatenates them in that order.
//!
//! Equal keys: the row that arrived last wins (within a chunk, arrival
//! order decides; a later chunk or segment beats an earlier one), or the
//! shard fails with [`Error::DuplicateKey`] under
//! [`DuplicatePolicy::Error`].

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, BinaryArray};
use sf_manifest::{DbId, KeyEncoding};

use crate::build::backend::{DuplicatePolicy, Row, show_key};
use crate::error::{Error, Result};
use crate::route::budget::{MemoryBudget, Reservation};

/// Sources merged at once; more are merged in several passes.
pub const MAX_FAN_IN: usize = 16;
/// Size at which a chunk is sealed (and sorted): sorting in pieces of this
/// size while the input is still arriving, then merging, measured faster
/// than sorting big buffers once the input ends (10M rows in 16 shards:
/// 14.8 s with 16 MiB pieces, 18.5 s with one sort per shard at the end).
pub const MAX_RUN_BYTES: usize = 16 << 20;
/// Rows handed to the builder per call.
pub const CHUNK_ROWS: usize = 4096;
/// Buffer of a spill being written, or of a merge pass's output.
const WRITE_BUFFER: usize = 256 << 10;
/// Buffer of each segment being read.
const READ_BUFFER: usize = 64 << 10;
/// First room a chunk takes for keys and values, and for index entries.
const FIRST_DATA_BYTES: usize = 512;
const FIRST_ROWS: usize = 8;
/// Memory one row's index entry takes.
const ROW_BYTES: usize = std::mem::size_of::<RowRef>();
/// Below this, a collector refused memory grows beyond the budget instead
/// of spilling (a spill of a few rows would only make tiny files); the
/// overshoot is at most this much per collector.
const MIN_SPILL_BYTES: usize = 1 << 20;

/// Whether shards are handed on sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By key, each key once.
    Key,
    /// In arrival order, duplicates included (the builder applies the
    /// duplicate policy itself).
    Arrival,
}

/// How a collector sorts and names things.
#[derive(Debug, Clone)]
pub struct CollectorSettings {
    /// Sorted or not.
    pub order: Order,
    /// Duplicate keys.
    pub on_duplicate: DuplicatePolicy,
    /// Key encoding, to show keys in errors.
    pub key_encoding: KeyEncoding,
    /// Size at which chunks are sealed ([`MAX_RUN_BYTES`] by default).
    pub chunk_bytes: usize,
    /// Folder for spill files (created on the first spill).
    pub spill_dir: PathBuf,
}

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

/// One row of a chunk: where its key and value are, and the key's first
/// 8 bytes (big endian, zero padded), which settle most comparisons.
#[derive(Debug, Clone, Copy)]
struct RowRef {
    prefix: u64,
    off: u32,
    klen: u32,
    vlen: u32,
}

fn key_prefix(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(bytes)
}

/// Rows of one shard in memory: keys and values in one buffer, an entry
/// per row; in arrival order until sorted.
#[derive(Debug)]
pub struct Chunk {
    data: Vec<u8>,
    rows: Vec<RowRef>,
    /// Arrival rank among the collector's chunks and spills.
    seq: u64,
    sorted: bool,
    duplicates: u64,
    reservation: Reservation,
}

impl Chunk {
    fn new(seq: u64, reservation: Reservation) -> Self {
        Chunk {
            data: Vec::new(),
            rows: Vec::new(),
            seq,
            sorted: false,
            duplicates: 0,
            reservation,
        }
    }

    fn held(&self) -> usize {
        self.data.capacity() + self.rows.capacity() * ROW_BYTES
    }

    fn key(&self, r: &RowRef) -> &[u8] {
        let off = r.off as usize;
        &self.data[off..off + r.klen as usize]
    }

    fn value(&self, r: &RowRef) -> &[u8] {
        let off = r.off as usize + r.klen as usize;
        &self.data[off..off + r.vlen as usize]
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// The room a row of `bytes` needs beyond what is held: (new data
    /// capacity, new row capacity), or `None` when it fits. Buffers double
    /// up to `cap` bytes of rows at a time.
    fn growth(&self, bytes: usize, cap: usize) -> Option<(usize, usize)> {
        let data_need = self.data.len() + bytes;
        let rows_need = self.rows.len() + 1;
        if data_need <= self.data.capacity() && rows_need <= self.rows.capacity() {
            return None;
        }
        let grow = |have: usize, need: usize, first: usize, step: usize| {
            if need <= have {
                have
            } else {
                need.max(have + have.max(first).min(step))
            }
        };
        Some((
            grow(self.data.capacity(), data_need, FIRST_DATA_BYTES, cap.max(1)),
            grow(self.rows.capacity(), rows_need, FIRST_ROWS, (cap / 256).max(FIRST_ROWS)),
        ))
    }

    fn resize(&mut self, data_cap: usize, rows_cap: usize) {
        self.data.reserve_exact(data_cap - self.data.len());
        self.rows.reserve_exact(rows_cap - self.rows.len());
    }

    fn append(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let too_big = |what: &str, n: usize| Error::Data(format!("a {what} of {n} bytes is too large to store"));
        let off = u32::try_from(self.data.len()).map_err(|_| too_big("shard chunk", self.data.len()))?;
        let klen = u32::try_from(key.len()).map_err(|_| too_big("key", key.len()))?;
        let vlen = u32::try_from(value.len()).map_err(|_| too_big("value", value.len()))?;
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
        self.rows.push(RowRef {
            prefix: key_prefix(key),
            off,
            klen,
            vlen,
        });
        Ok(())
    }

    /// Sorts the rows by key and keeps each key's last row. Blocking.
    pub fn sort(&mut self, db_id: DbId, policy: DuplicatePolicy, encoding: KeyEncoding) -> Result<()> {
        if self.sorted {
            return Ok(());
        }
        let data = &self.data;
        let key = |r: &RowRef| &data[r.off as usize..r.off as usize + r.klen as usize];
        // Offsets grow with arrival, so they break ties in arrival order
        // and every entry differs: an unstable sort is exact.
        self.rows.sort_unstable_by(|a, b| {
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| key(a).cmp(key(b)))
                .then_with(|| a.off.cmp(&b.off))
        });
        let before = self.rows.len();
        let mut failed = None;
        // Of equal neighbours `dedup_by` keeps the first; walk from the end
        // so that it is the last arrival.
        self.rows.reverse();
        self.rows.dedup_by(|later, kept| {
            let same = later.prefix == kept.prefix && key(later) == key(kept);
            if same && policy == DuplicatePolicy::Error && failed.is_none() {
                failed = Some(duplicate_error(db_id, key(kept), encoding));
            }
            same
        });
        self.rows.reverse();
        if let Some(e) = failed {
            return Err(e);
        }
        self.duplicates += (before - self.rows.len()) as u64;
        self.sorted = true;
        Ok(())
    }
}

fn duplicate_error(db_id: DbId, key: &[u8], encoding: KeyEncoding) -> Error {
    Error::DuplicateKey {
        db_id,
        key: show_key(key, encoding),
    }
}

/// A spill file, removed when the last segment reading it is gone.
#[derive(Debug)]
struct SpillFile {
    path: PathBuf,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        // The collector's folder goes with the build; this frees disk early.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One shard's rows in a spill file or a merge pass's output.
#[derive(Debug, Clone)]
struct Segment {
    file: Arc<SpillFile>,
    offset: u64,
    len: u64,
    seq: u64,
}

/// One shard's rows held by a collector.
#[derive(Debug, Default)]
struct ShardSlot {
    /// Sealed chunks (sorted when the order is by key), oldest first.
    sealed: Vec<Chunk>,
    open: Option<Chunk>,
    segments: Vec<Segment>,
    /// Rows dropped as duplicates by spills.
    duplicates: u64,
}

/// Collects rows of the shards `first..first + count`; see the
/// [module docs](self).
#[derive(Debug)]
pub struct RowCollector {
    settings: CollectorSettings,
    budget: Arc<MemoryBudget>,
    first: u32,
    slots: Vec<Option<Box<ShardSlot>>>,
    /// Bytes reserved by the chunks this collector holds (not handed out).
    held: usize,
    next_seq: u64,
    spills: u32,
    chunks_out: usize,
}

impl RowCollector {
    /// A collector for shards `first..first + count` drawing on `budget`.
    pub fn new(settings: CollectorSettings, budget: Arc<MemoryBudget>, first: u32, count: u32) -> Self {
        let mut slots = Vec::new();
        slots.resize_with(count as usize, || None);
        RowCollector {
            settings,
            budget,
            first,
            slots,
            held: 0,
            next_seq: 0,
            spills: 0,
            chunks_out: 0,
        }
    }

    /// Spill files written so far.
    pub fn spills(&self) -> u32 {
        self.spills
    }

    /// Bytes of rows this collector holds in memory.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// The settings.
    pub fn settings(&self) -> &CollectorSettings {
        &self.settings
    }

    fn index(&self, db: u32) -> Result<usize> {
        db.checked_sub(self.first)
            .map(|i| i as usize)
            .filter(|i| *i < self.slots.len())
            .ok_or_else(|| {
                Error::Internal(format!(
                    "a row of shard {db} reached the collector of shards {}..{}; partitioning is broken",
                    self.first,
                    self.first as usize + self.slots.len()
                ))
            })
    }

    /// Adds rows in arrival order: row `i` (`keys[i]`, `values[i]`, no
    /// nulls) belongs to shard `dbs[i]`. Blocking: it may spill. Returns
    /// the chunks it sealed: sort them ([`Chunk::sort`], when sorting by
    /// key) and give them back with [`put_sealed`](Self::put_sealed);
    /// until then they keep their memory and no spill sees them.
    pub fn push(&mut self, dbs: &[u32], keys: &BinaryArray, values: &BinaryArray) -> Result<Vec<(u32, Chunk)>> {
        if keys.len() != values.len() || keys.len() != dbs.len() || keys.null_count() > 0 || values.null_count() > 0 {
            return Err(Error::Internal(format!(
                "{} shard ids, {} keys and {} values ({} and {} null) in one batch",
                dbs.len(),
                keys.len(),
                values.len(),
                keys.null_count(),
                values.null_count()
            )));
        }
        let cap = self.settings.chunk_bytes.max(1);
        let mut sealed = Vec::new();
        for (row, db) in dbs.iter().enumerate() {
            let (key, value) = (keys.value(row), values.value(row));
            let bytes = key.len() + value.len();
            let i = self.index(*db)?;
            loop {
                let seq = self.next_seq;
                let slot = self.slots[i].get_or_insert_with(Default::default);
                // Seal a full chunk first, so that chunks stay near their size.
                if let Some(full) = slot.open.take_if(|c| !c.rows.is_empty() && c.data.len() + bytes > cap) {
                    self.held -= full.reservation.size();
                    self.chunks_out += 1;
                    sealed.push((*db, full));
                }
                let chunk = slot
                    .open
                    .get_or_insert_with(|| Chunk::new(seq, self.budget.reservation()));
                if chunk.seq == seq {
                    self.next_seq += 1;
                }
                let Some((data_cap, rows_cap)) = chunk.growth(bytes, cap) else {
                    break;
                };
                let extra = (data_cap + rows_cap * ROW_BYTES).saturating_sub(chunk.held());
                if chunk.reservation.try_grow(extra) {
                    chunk.resize(data_cap, rows_cap);
                    self.held += extra;
                    break;
                }
                if self.held >= MIN_SPILL_BYTES.min(self.budget.limit() / 16).max(1) {
                    // Everything goes, this shard's open chunk too; the row
                    // then starts a fresh chunk.
                    self.spill()?;
                    continue;
                }
                chunk.reservation.grow(extra);
                chunk.resize(data_cap, rows_cap);
                self.held += extra;
                break;
            }
            let chunk = self.slots[i]
                .as_mut()
                .and_then(|s| s.open.as_mut())
                .ok_or_else(|| Error::Internal("a shard's open chunk vanished".into()))?;
            chunk.append(key, value)?;
            // The allocator may have given more than asked; that counts too.
            let grown = chunk.held().saturating_sub(chunk.reservation.size());
            if grown > 0 {
                chunk.reservation.grow(grown);
                self.held += grown;
            }
        }
        Ok(sealed)
    }

    /// Takes back a chunk [`push`](Self::push) handed out.
    pub fn put_sealed(&mut self, db: u32, chunk: Chunk) -> Result<()> {
        let i = self.index(db)?;
        self.held += chunk.reservation.size();
        self.chunks_out = self.chunks_out.saturating_sub(1);
        let slot = self.slots[i].get_or_insert_with(Default::default);
        let at = slot.sealed.partition_point(|c| c.seq < chunk.seq);
        slot.sealed.insert(at, chunk);
        Ok(())
    }

    /// Writes every row held in memory to one spill file, shard after
    /// shard, one segment per chunk (sorted, when sorting by key), and
    /// gives the memory back. A segment keeps its chunk's arrival rank, so
    /// a chunk that was out being sorted meanwhile still merges in its
    /// place. Blocking.
    pub fn spill(&mut self) -> Result<()> {
        let dir = self.settings.spill_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating the spill folder {}", dir.display()), e))?;
        let path = dir.join(format!("rows-{:05}.sfspill", self.spills));
        let file = Arc::new(SpillFile { path: path.clone() });
        let mut out = RunWriter::create(&path)?;
        let (order, policy, encoding) = (
            self.settings.order,
            self.settings.on_duplicate,
            self.settings.key_encoding,
        );
        let mut wrote_any = false;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            let mut chunks: Vec<Chunk> = std::mem::take(&mut slot.sealed);
            chunks.extend(slot.open.take().filter(|c| !c.rows.is_empty()));
            let db_id = DbId(self.first + i as u32);
            for mut c in chunks {
                if order == Order::Key {
                    c.sort(db_id, policy, encoding)?;
                    slot.duplicates += std::mem::take(&mut c.duplicates);
                }
                let start = out.position();
                for r in &c.rows {
                    out.write(c.key(r), c.value(r))?;
                }
                slot.segments.push(Segment {
                    file: Arc::clone(&file),
                    offset: start,
                    len: out.position() - start,
                    seq: c.seq,
                });
                wrote_any = true;
                self.held = self.held.saturating_sub(c.reservation.size());
            }
        }
        out.finish()?;
        if wrote_any {
            self.spills += 1;
        }
        Ok(())
    }

    /// Takes shard `db`'s rows out; `None` when it has none. Every chunk
    /// [`push`](Self::push) handed out must be back.
    pub fn take_shard(&mut self, db: u32) -> Result<Option<ShardRows>> {
        if self.chunks_out > 0 {
            return Err(Error::Internal(format!(
                "{} sealed chunks are still out while shard {db} is taken",
                self.chunks_out
            )));
        }
        let i = self.index(db)?;
        let Some(slot) = self.slots[i].take() else {
            return Ok(None);
        };
        let ShardSlot {
            mut sealed,
            open,
            segments,
            duplicates,
        } = *slot;
        sealed.extend(open.filter(|c| !c.rows.is_empty()));
        if sealed.is_empty() && segments.is_empty() {
            return Ok(None);
        }
        for c in &sealed {
            self.held = self.held.saturating_sub(c.reservation.size());
        }
        Ok(Some(ShardRows {
            db_id: DbId(db),
            order: self.settings.order,
            on_duplicate: self.settings.on_duplicate,
            key_encoding: self.settings.key_encoding,
            chunks: sealed,
            segments,
            duplicates,
            merged: 0,
        }))
    }
}

/// One shard's rows, taken out of a [`RowCollector`].
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
        let mut spilled_runs = self.segments.len() as u32;
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
        let mut out = Emitter::default();
        let mut rows = 0u64;
        let mut emit = |cursor: &Cursor, key: &[u8], value: &[u8]| {
            rows += 1;
            out.push(cursor, key, value, chunks, sink)
        };
        match self.order {
            Order::Key => {
                self.duplicates += merge(&mut cursors, chunks, db_id, policy, encoding, &mut emit)?;
            }
            Order::Arrival => {
                for c in &mut cursors {
                    c.advance(chunks)?;
                    while c.live {
                        let (k, v) = c.row(chunks);
                        emit(c, k, v)?;
                        c.advance(chunks)?;
                    }
                }
            }
        }
        out.flush(chunks, sink)?;
        Ok(SortStats {
            rows,
            duplicates: self.duplicates,
            spilled_runs,
        })
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
            let mut out = RunWriter::create(&path)?;
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
    at: At,
}

enum At {
    /// Row `row - 1` of chunk `chunk` is current.
    Memory {
        chunk: usize,
        row: usize,
    },
    Disk(SegmentReader),
}

impl Cursor {
    fn memory(chunk: usize, seq: u64) -> Self {
        Cursor {
            seq,
            live: false,
            prefix: 0,
            at: At::Memory { chunk, row: 0 },
        }
    }

    fn disk(segment: &Segment) -> Result<Self> {
        Ok(Cursor {
            seq: segment.seq,
            live: false,
            prefix: 0,
            at: At::Disk(SegmentReader::open(segment)?),
        })
    }

    /// Moves to the next row; at the end `live` turns false.
    fn advance(&mut self, chunks: &[Chunk]) -> Result<()> {
        match &mut self.at {
            At::Memory { chunk, row } => {
                let c = &chunks[*chunk];
                self.live = *row < c.rows.len();
                if self.live {
                    self.prefix = c.rows[*row].prefix;
                    *row += 1;
                }
            }
            At::Disk(r) => {
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
        match &self.at {
            At::Memory { chunk, row } => {
                let c = &chunks[*chunk];
                let r = &c.rows[*row - 1];
                (c.key(r), c.value(r))
            }
            At::Disk(r) => (&r.key, &r.value),
        }
    }

    fn key<'a>(&'a self, chunks: &'a [Chunk]) -> &'a [u8] {
        self.row(chunks).0
    }
}

/// Receives merged rows: the cursor they come from, key and value.
type Emit<'a> = dyn FnMut(&Cursor, &[u8], &[u8]) -> Result<()> + 'a;

/// Merges sources (oldest first, each sorted with each key once) into one
/// key-ordered stream, each key once, the newest source's row winning;
/// returns the rows dropped.
fn merge(
    cursors: &mut [Cursor],
    chunks: &[Chunk],
    db_id: DbId,
    policy: DuplicatePolicy,
    encoding: KeyEncoding,
    emit: &mut Emit<'_>,
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
        emit(&cursors[best], k, v)?;
        cursors[best].advance(chunks)?;
    }
    Ok(duplicates)
}

/// Builds the slices handed to the sink: rows of chunks in memory by
/// reference, rows read from disk copied into one buffer.
#[derive(Default)]
struct Emitter {
    data: Vec<u8>,
    rows: Vec<Emitted>,
}

enum Emitted {
    Memory {
        chunk: usize,
        row: usize,
    },
    /// Key and value in `data`: key at `start..mid`, value at `mid..end`.
    Copied {
        start: usize,
        mid: usize,
        end: usize,
    },
}

impl Emitter {
    fn push(
        &mut self,
        cursor: &Cursor,
        key: &[u8],
        value: &[u8],
        chunks: &[Chunk],
        sink: &mut dyn FnMut(&[Row<'_>]) -> Result<()>,
    ) -> Result<()> {
        match &cursor.at {
            At::Memory { chunk, row } => self.rows.push(Emitted::Memory {
                chunk: *chunk,
                row: *row - 1,
            }),
            At::Disk(_) => {
                let start = self.data.len();
                self.data.extend_from_slice(key);
                let mid = self.data.len();
                self.data.extend_from_slice(value);
                self.rows.push(Emitted::Copied {
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
                Emitted::Memory { chunk, row } => {
                    let c = &chunks[*chunk];
                    let r = &c.rows[*row];
                    (c.key(r), c.value(r))
                }
                Emitted::Copied { start, mid, end } => (&self.data[*start..*mid], &self.data[*mid..*end]),
            })
            .collect();
        sink(&rows)?;
        self.rows.clear();
        self.data.clear();
        Ok(())
    }
}

/// Writes records (`u32` LE length, key, `u32` LE length, value).
struct RunWriter {
    out: BufWriter<File>,
    path: PathBuf,
    written: u64,
}

impl RunWriter {
    fn create(path: &Path) -> Result<Self> {
        let file =
            File::create(path).map_err(|e| Error::io(format!("creating the spill file {}", path.display()), e))?;
        Ok(RunWriter {
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            path: path.to_path_buf(),
            written: 0,
        })
    }

    fn position(&self) -> u64 {
        self.written
    }

    fn write(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let io = |e| Error::io(format!("writing the spill file {}", self.path.display()), e);
        for field in [key, value] {
            let len = u32::try_from(field.len())
                .map_err(|_| Error::Data(format!("a key or value of {} bytes is too large to sort", field.len())))?;
            self.out.write_all(&len.to_le_bytes()).map_err(io)?;
            self.out.write_all(field).map_err(io)?;
            self.written += 4 + field.len() as u64;
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        let path = self.path;
        self.out
            .into_inner()
            .map_err(|e| Error::io(format!("writing the spill file {}", path.display()), e.into_error()))?;
        Ok(())
    }
}

/// Reads one segment's records.
struct SegmentReader {
    input: BufReader<std::io::Take<File>>,
    /// Keeps the file until the reader is done.
    file: Arc<SpillFile>,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl SegmentReader {
    fn open(segment: &Segment) -> Result<Self> {
        let path = &segment.file.path;
        let io = |e| Error::io(format!("reading the spill file {}", path.display()), e);
        let mut file = File::open(path).map_err(io)?;
        file.seek(SeekFrom::Start(segment.offset)).map_err(io)?;
        Ok(SegmentReader {
            input: BufReader::with_capacity(READ_BUFFER, file.take(segment.len)),
            file: Arc::clone(&segment.file),
            key: Vec::new(),
            value: Vec::new(),
        })
    }

    /// Reads the next record; false at the end of the segment.
    fn advance(&mut self) -> Result<bool> {
        let path = &self.file.path;
        let io = |e| Error::io(format!("reading the spill file {}", path.display()), e);
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && self.input.buffer().is_empty() => return Ok(false),
            Err(e) => return Err(io(e)),
        }
        read_field(&mut self.input, u32::from_le_bytes(len), &mut self.key).map_err(io)?;
        self.input.read_exact(&mut len).map_err(io)?;
        read_field(&mut self.input, u32::from_le_bytes(len), &mut self.value).map_err(io)?;
        Ok(true)
    }
}

fn read_field(input: &mut impl Read, len: u32, into: &mut Vec<u8>) -> std::io::Result<()> {
    into.clear();
    into.resize(len as usize, 0);
    input.read_exact(into)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    type Rows = Vec<(Vec<u8>, Vec<u8>)>;

    struct Run {
        /// Rows handed on per shard.
        shards: BTreeMap<u32, Rows>,
        stats: BTreeMap<u32, SortStats>,
        spills: u32,
        peak: usize,
    }

    fn settings(dir: &Path, order: Order, policy: DuplicatePolicy, chunk_bytes: usize) -> CollectorSettings {
        CollectorSettings {
            order,
            on_duplicate: policy,
            key_encoding: KeyEncoding::Raw,
            chunk_bytes,
            spill_dir: dir.join("spill"),
        }
    }

    /// Feeds `batches` (rows of `(shard, key, value)`) through one
    /// collector of `shards` shards with `budget` bytes, sorting sealed
    /// chunks as a caller does, then drains every shard.
    /// Rows as a test feeds them: shard, key, value.
    type TestRow = (u32, Vec<u8>, Vec<u8>);

    fn collect(
        batches: &[Vec<TestRow>],
        shards: u32,
        budget: usize,
        chunk_bytes: usize,
        order: Order,
        policy: DuplicatePolicy,
    ) -> Result<Run> {
        let dir = tempfile::tempdir().expect("tmp");
        let budget = MemoryBudget::new(budget);
        let mut c = RowCollector::new(
            settings(dir.path(), order, policy, chunk_bytes),
            Arc::clone(&budget),
            0,
            shards,
        );
        for b in batches {
            let dbs: Vec<u32> = b.iter().map(|r| r.0).collect();
            let keys = BinaryArray::from_iter_values(b.iter().map(|r| r.1.as_slice()));
            let values = BinaryArray::from_iter_values(b.iter().map(|r| r.2.as_slice()));
            for (db, mut chunk) in c.push(&dbs, &keys, &values)? {
                if order == Order::Key {
                    chunk.sort(DbId(db), policy, KeyEncoding::Raw)?;
                }
                c.put_sealed(db, chunk)?;
            }
        }
        let spills = c.spills();
        let mut run = Run {
            shards: BTreeMap::new(),
            stats: BTreeMap::new(),
            spills,
            peak: budget.peak(),
        };
        for db in 0..shards {
            let Some(rows) = c.take_shard(db)? else { continue };
            let mut out = Vec::new();
            let stats = rows.drain(&dir.path().join(format!("merge-{db}")), &mut |rows| {
                assert!(!rows.is_empty() && rows.len() <= CHUNK_ROWS);
                out.extend(rows.iter().map(|(k, v)| (k.to_vec(), v.to_vec())));
                Ok(())
            })?;
            run.shards.insert(db, out);
            run.stats.insert(db, stats);
        }
        assert_eq!(c.held_bytes(), 0, "everything was taken");
        assert_eq!(budget.used(), 0, "all memory is given back");
        drop(c);
        let left: Vec<_> = walk(dir.path());
        assert!(left.is_empty(), "spill files are removed once read: {left:?}");
        Ok(run)
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).expect("dir").flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }

    /// Pseudo-random keys of varied lengths sharing long prefixes (so the
    /// 8-byte prefix often ties) over `shards` shards; values record the
    /// arrival number.
    fn rows(n: usize, shards: u32, seed: u64) -> Vec<(u32, Vec<u8>, Vec<u8>)> {
        let mut x = seed | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut key = b"prefix-".to_vec();
                key.extend_from_slice(&(x % 5000).to_be_bytes()[6..]);
                key.extend(std::iter::repeat_n(b'z', (x % 3) as usize));
                let db = (x >> 20) as u32 % shards;
                (db, key, format!("row-{i}").into_bytes())
            })
            .collect()
    }

    /// The expected result per shard: last arrival wins, keys ascending.
    fn expected(all: &[(u32, Vec<u8>, Vec<u8>)]) -> (BTreeMap<u32, Rows>, u64) {
        let mut maps: BTreeMap<u32, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
        for (db, k, v) in all {
            maps.entry(*db).or_default().insert(k.clone(), v.clone());
        }
        let kept: usize = maps.values().map(BTreeMap::len).sum();
        let dups = (all.len() - kept) as u64;
        (
            maps.into_iter().map(|(db, m)| (db, m.into_iter().collect())).collect(),
            dups,
        )
    }

    #[test]
    fn in_memory_and_spilled_collections_agree_with_last_arrival_wins() {
        let all = rows(30_000, 5, 42);
        let batches: Vec<_> = all.chunks(1000).map(<[_]>::to_vec).collect();
        let (want, dups) = expected(&all);
        assert!(dups > 1000, "the data has many duplicates: {dups}");
        for (budget, chunk, spills) in [
            (usize::MAX, MAX_RUN_BYTES, 0..=0),
            // Small chunks: many sorted chunks per shard, merged in passes.
            (usize::MAX, 4096, 0..=0),
            // A small budget: several spills, merged with what is left.
            (200_000, 16_384, 2..=40),
            // Tiny: a spill every few rows, so merges run in passes.
            (30_000, 2_048, 20..=10_000),
        ] {
            let run = collect(&batches, 5, budget, chunk, Order::Key, DuplicatePolicy::LastWins).expect("collect");
            assert!(run.shards == want, "budget {budget}, chunks of {chunk}: rows differ");
            assert_eq!(
                run.stats.values().map(|s| s.duplicates).sum::<u64>(),
                dups,
                "budget {budget}"
            );
            assert!(spills.contains(&run.spills), "budget {budget}: {} spills", run.spills);
            if budget < usize::MAX {
                // A collector refused memory may grow by at most one step
                // below MIN_SPILL_BYTES.
                let allowed = budget + MIN_SPILL_BYTES.min(budget / 16) + 2 * chunk;
                assert!(run.peak <= allowed, "budget {budget}: peak {} > {allowed}", run.peak);
            }
            for (db, s) in &run.stats {
                assert_eq!(s.rows, want[db].len() as u64);
                // ~120 KB a shard: in 4 KiB chunks that is more than
                // MAX_FAN_IN sources, merged in a pass first.
                let on_disk = budget < usize::MAX || chunk == 4096;
                assert_eq!(
                    s.spilled_runs > 0,
                    on_disk,
                    "budget {budget}, chunk {chunk}, shard {db}"
                );
            }
        }
    }

    #[test]
    fn arrival_order_is_kept_across_chunks_and_spills() {
        let all = rows(5_000, 3, 7);
        let batches: Vec<_> = all.chunks(300).map(<[_]>::to_vec).collect();
        for budget in [usize::MAX, 40_000] {
            let run = collect(&batches, 3, budget, 2_048, Order::Arrival, DuplicatePolicy::LastWins).expect("collect");
            for db in 0..3u32 {
                let want: Rows = all
                    .iter()
                    .filter(|r| r.0 == db)
                    .map(|r| (r.1.clone(), r.2.clone()))
                    .collect();
                assert!(run.shards[&db] == want, "shard {db}, budget {budget}: arrival order");
                assert_eq!(run.stats[&db].duplicates, 0);
            }
            assert_eq!(run.spills > 0, budget < usize::MAX);
        }
    }

    #[test]
    fn fixed_width_keys_sort_numerically() {
        let keys: Vec<u64> = vec![5, 1 << 40, 3, u64::MAX, 0, 256];
        let batch: Vec<_> = keys
            .iter()
            .map(|k| (0, k.to_be_bytes().to_vec(), k.to_string().into_bytes()))
            .collect();
        let run = collect(
            &[batch],
            1,
            usize::MAX,
            MAX_RUN_BYTES,
            Order::Key,
            DuplicatePolicy::Error,
        )
        .expect("sort");
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        let got: Vec<u64> = run.shards[&0]
            .iter()
            .map(|(k, _)| u64::from_be_bytes(k.as_slice().try_into().expect("8 bytes")))
            .collect();
        assert_eq!(got, sorted);
        assert_eq!(
            run.stats[&0],
            SortStats {
                rows: 6,
                duplicates: 0,
                spilled_runs: 0
            }
        );
    }

    #[test]
    fn shorter_keys_sort_before_their_extensions() {
        let keys = [&b"ab\0"[..], b"ab", b"abcdefgh1", b"abcdefgh", b"", b"abcdefgh0"];
        let single: Vec<_> = keys.iter().map(|k| vec![(0, k.to_vec(), b"v".to_vec())]).collect();
        for (budget, chunk) in [(usize::MAX, MAX_RUN_BYTES), (usize::MAX, 1), (1, 1)] {
            let run = collect(&single, 1, budget, chunk, Order::Key, DuplicatePolicy::Error).expect("sort");
            let got: Vec<&[u8]> = run.shards[&0].iter().map(|(k, _)| k.as_slice()).collect();
            assert_eq!(
                got,
                vec![&b""[..], b"ab", b"ab\0", b"abcdefgh", b"abcdefgh0", b"abcdefgh1"],
                "budget {budget}, chunk {chunk}"
            );
        }
    }

    #[test]
    fn duplicates_fail_under_error_in_a_chunk_across_chunks_and_across_spills() {
        let first = vec![(0, b"k1".to_vec(), b"a".to_vec()), (0, b"k2".to_vec(), b"a".to_vec())];
        let second = vec![(0, b"k3".to_vec(), b"b".to_vec()), (0, b"k2".to_vec(), b"b".to_vec())];
        for (budget, chunk) in [(usize::MAX, MAX_RUN_BYTES), (usize::MAX, 8), (1, 8)] {
            let e = collect(
                &[first.clone(), second.clone()],
                1,
                budget,
                chunk,
                Order::Key,
                DuplicatePolicy::Error,
            )
            .err()
            .expect("duplicate");
            assert_eq!(
                e.to_string(),
                "shard 0: duplicate key k2 (on_duplicate = \"error\"; use \"last_wins\" to keep the last row)",
                "budget {budget}, chunk {chunk}"
            );
            let run = collect(
                &[first.clone(), second.clone()],
                1,
                budget,
                chunk,
                Order::Key,
                DuplicatePolicy::LastWins,
            )
            .expect("sort");
            assert_eq!(
                run.shards[&0][1],
                (b"k2".to_vec(), b"b".to_vec()),
                "the later row wins (budget {budget}, chunk {chunk})"
            );
            assert_eq!(run.stats[&0].duplicates, 1);
        }
    }

    #[test]
    fn a_failing_sink_stops_the_drain() {
        let all = rows(10_000, 1, 7);
        for budget in [usize::MAX, 50_000] {
            let dir = tempfile::tempdir().expect("tmp");
            let mut c = RowCollector::new(
                settings(dir.path(), Order::Key, DuplicatePolicy::LastWins, 8192),
                MemoryBudget::new(budget),
                0,
                1,
            );
            for b in all.chunks(500) {
                let dbs = vec![0u32; b.len()];
                let keys = BinaryArray::from_iter_values(b.iter().map(|r| r.1.as_slice()));
                let values = BinaryArray::from_iter_values(b.iter().map(|r| r.2.as_slice()));
                for (db, chunk) in c.push(&dbs, &keys, &values).expect("push") {
                    c.put_sealed(db, chunk).expect("put");
                }
            }
            let rows = c.take_shard(0).expect("take").expect("rows");
            let mut calls = 0;
            let e = rows
                .drain(dir.path(), &mut |_| {
                    calls += 1;
                    Err(Error::Data("sink is full".into()))
                })
                .expect_err("fails");
            assert_eq!(calls, 1, "budget {budget}");
            assert_eq!(e.to_string(), "sink is full");
        }
    }

    #[test]
    fn chunks_are_sealed_at_their_size_and_rows_of_other_shards_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = RowCollector::new(
            settings(dir.path(), Order::Key, DuplicatePolicy::LastWins, 1 << 20),
            MemoryBudget::new(usize::MAX),
            10,
            2,
        );
        let value = vec![b'v'; 100_000];
        let mut sealed = Vec::new();
        for i in 0u32..25 {
            let keys = BinaryArray::from_iter_values([i.to_be_bytes()]);
            let values = BinaryArray::from_iter_values([value.as_slice()]);
            sealed.extend(c.push(&[11], &keys, &values).expect("push"));
        }
        assert_eq!(sealed.len(), 2, "two full chunks of 10 rows");
        assert!(sealed.iter().all(|(db, ch)| *db == 11 && ch.rows() == 10));
        assert!(c.take_shard(11).is_err(), "sealed chunks are still out");
        for (db, ch) in sealed {
            c.put_sealed(db, ch).expect("put");
        }
        let keys = BinaryArray::from_iter_values([b"k"]);
        let values = BinaryArray::from_iter_values([b"v"]);
        let e = c
            .push(&[12], &keys, &values)
            .expect_err("shard 12 is not this collector's");
        assert!(e.to_string().contains("partitioning is broken"), "{e}");
        assert!(c.take_shard(10).expect("take").is_none(), "shard 10 got nothing");
        let rows = c.take_shard(11).expect("take").expect("rows");
        let mut n = 0;
        rows.drain(dir.path(), &mut |r| {
            n += r.len();
            Ok(())
        })
        .expect("drain");
        assert_eq!(n, 25);
    }

    #[test]
    fn memory_follows_the_rows_not_the_shard_count() {
        // 20,000 shards with two rows each take what the rows take.
        let dir = tempfile::tempdir().expect("tmp");
        let budget = MemoryBudget::new(usize::MAX);
        let mut c = RowCollector::new(
            settings(dir.path(), Order::Key, DuplicatePolicy::LastWins, MAX_RUN_BYTES),
            Arc::clone(&budget),
            0,
            20_000,
        );
        let dbs: Vec<u32> = (0..40_000u32).map(|i| i % 20_000).collect();
        let keys = BinaryArray::from_iter_values((0..40_000u32).map(|i| i.to_be_bytes()));
        let values = BinaryArray::from_iter_values((0..40_000u32).map(|_| [7u8; 10]));
        assert!(c.push(&dbs, &keys, &values).expect("push").is_empty());
        let per_shard = budget.used() / 20_000;
        assert!(
            per_shard <= FIRST_DATA_BYTES + FIRST_ROWS * ROW_BYTES,
            "{per_shard} bytes per shard of two rows"
        );
    }
}
