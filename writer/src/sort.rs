//! Sorting one shard's rows by key inside its task, in bounded memory.
//!
//! A shard task hands its rows to a [`ShardSorter`] as they arrive (encoded
//! keys and values, in arrival order). The sorter keeps them as they came,
//! in Arrow arrays, until they reach its memory budget; then it sorts them
//! and writes one *run* to the task's local folder (records of `u32` LE key
//! length, key, `u32` LE value length, value, in key order, each key once).
//! When the input ends, [`ShardSorter::drain`] hands the rows to the shard
//! builder in key order, each key once:
//!
//! - nothing spilled: straight from the arrays through a sorted index, no
//!   copy of keys or values;
//! - spilled: a merge of the runs (the rows still in memory become the
//!   last run), at most [`MAX_FAN_IN`] runs at a time; more runs are first
//!   merged into fewer, in passes over consecutive groups.
//!
//! Runs are at most [`MAX_RUN_BYTES`], even when memory would allow more.
//!
//! A run can be written on another thread while the next one fills
//! ([`ShardSorter::take_run`]), so the input keeps flowing. Memory is then
//! twice the budget plus one read buffer per merged run, whatever the
//! shard's size.
//!
//! Equal keys: the row that arrived last wins (a later run beats an earlier
//! one; within a run, arrival order decides), or the shard fails with
//! [`Error::DuplicateKey`] under [`DuplicatePolicy::Error`].

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use arrow::array::{Array, BinaryArray};
use sf_manifest::{DbId, KeyEncoding};

use crate::adapter::{DuplicatePolicy, Row, show_key};
use crate::error::{Error, Result};

/// Runs merged at once; more are merged in several passes.
pub const MAX_FAN_IN: usize = 16;
/// The most a sorter buffers before writing a run, whatever its budget:
/// sorting in pieces of this size while the input is still arriving, then
/// merging runs read sequentially, measured faster than sorting big
/// buffers once the input ends (10M rows in 16 shards: 14.8 s with 16 MiB
/// runs, 16.4 s with 32 MiB, 19.6 s with 64 MiB, 18.5 s all in memory),
/// and it keeps memory low when the limit is generous.
pub const MAX_RUN_BYTES: usize = 16 << 20;
/// Rows handed to the builder per call.
pub const CHUNK_ROWS: usize = 4096;
/// Buffer of each run being written or read.
const RUN_BUFFER: usize = 256 << 10;
/// Memory the sort index takes per buffered row.
const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// What a drained sort did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SortStats {
    /// Distinct keys handed on.
    pub rows: u64,
    /// Rows dropped because a later row had the same key.
    pub duplicates: u64,
    /// Runs written to disk (0 when the shard fit in memory).
    pub spilled_runs: u32,
}

/// Buffered rows on their way to becoming a sorted run on disk.
#[derive(Debug)]
pub struct PendingRun {
    batches: Vec<(BinaryArray, BinaryArray)>,
    path: PathBuf,
    db_id: DbId,
    key_encoding: KeyEncoding,
    on_duplicate: DuplicatePolicy,
}

impl PendingRun {
    /// Sorts the rows and writes the run (blocking); returns the rows
    /// dropped as duplicates.
    pub fn write(self) -> Result<u64> {
        let mut out = RunWriter::create(&self.path)?;
        let order = sort_index(&self.batches);
        let duplicates = unique_rows(
            &self.batches,
            &order,
            self.db_id,
            self.key_encoding,
            self.on_duplicate,
            |k, v| out.write(k, v),
        )?;
        out.finish()?;
        Ok(duplicates)
    }
}

/// Sorts one shard's rows; see the [module docs](self).
#[derive(Debug)]
pub struct ShardSorter {
    db_id: DbId,
    key_encoding: KeyEncoding,
    on_duplicate: DuplicatePolicy,
    budget: usize,
    dir: PathBuf,
    batches: Vec<(BinaryArray, BinaryArray)>,
    buffered_bytes: usize,
    /// Spilled runs, oldest first.
    runs: Vec<PathBuf>,
    runs_written: u32,
    duplicates: u64,
}

impl ShardSorter {
    /// A sorter for `db_id` that keeps about `budget` bytes of rows (at
    /// most [`MAX_RUN_BYTES`]) in memory and spills runs into `dir`.
    pub fn new(
        db_id: DbId,
        key_encoding: KeyEncoding,
        on_duplicate: DuplicatePolicy,
        budget: usize,
        dir: &Path,
    ) -> Self {
        ShardSorter {
            db_id,
            key_encoding,
            on_duplicate,
            budget: budget.clamp(1, MAX_RUN_BYTES),
            dir: dir.to_path_buf(),
            batches: Vec::new(),
            buffered_bytes: 0,
            runs: Vec::new(),
            runs_written: 0,
            duplicates: 0,
        }
    }

    /// Adds rows in arrival order (`keys[i]` goes with `values[i]`, no
    /// nulls). Returns whether the buffer reached the budget: the caller
    /// then calls [`spill`](Self::spill), off any async runtime.
    pub fn push(&mut self, keys: BinaryArray, values: BinaryArray) -> Result<bool> {
        if keys.len() != values.len() || keys.null_count() > 0 || values.null_count() > 0 {
            return Err(Error::Internal(format!(
                "shard {}: {} keys and {} values ({} and {} null) in one batch",
                self.db_id,
                keys.len(),
                values.len(),
                keys.null_count(),
                values.null_count()
            )));
        }
        if keys.is_empty() {
            return Ok(false);
        }
        if u32::try_from(self.batches.len()).is_err() || u32::try_from(keys.len()).is_err() {
            return Err(Error::Internal(format!(
                "shard {}: too many batches to index",
                self.db_id
            )));
        }
        self.buffered_bytes +=
            keys.get_buffer_memory_size() + values.get_buffer_memory_size() + keys.len() * ENTRY_BYTES;
        self.batches.push((keys, values));
        Ok(self.buffered_bytes >= self.budget)
    }

    /// Sorts the buffered rows into a run on disk and frees them.
    pub fn spill(&mut self) -> Result<()> {
        if let Some(run) = self.take_run() {
            let duplicates = run.write()?;
            self.add_duplicates(duplicates);
        }
        Ok(())
    }

    /// Takes the buffered rows out as the next run, to be written by
    /// [`PendingRun::write`] (possibly on another thread while more rows
    /// arrive); `None` when nothing is buffered. The run's place among
    /// the runs is fixed here, so arrival order holds for duplicates. Its
    /// duplicates go to [`add_duplicates`](Self::add_duplicates).
    pub fn take_run(&mut self) -> Option<PendingRun> {
        if self.batches.is_empty() {
            return None;
        }
        let path = self.dir.join(format!("run-{:05}.sfsort", self.runs_written));
        self.runs.push(path.clone());
        self.runs_written += 1;
        self.buffered_bytes = 0;
        Some(PendingRun {
            batches: std::mem::take(&mut self.batches),
            path,
            db_id: self.db_id,
            key_encoding: self.key_encoding,
            on_duplicate: self.on_duplicate,
        })
    }

    /// Counts rows a written run dropped as duplicates.
    pub fn add_duplicates(&mut self, n: u64) {
        self.duplicates += n;
    }

    /// Whether no row was pushed.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.runs.is_empty()
    }

    /// Hands every row on in key order, each key once, in chunks of up to
    /// [`CHUNK_ROWS`] rows. Blocking.
    pub fn drain(mut self, sink: &mut dyn FnMut(&[Row<'_>]) -> Result<()>) -> Result<SortStats> {
        let (db_id, encoding, policy) = (self.db_id, self.key_encoding, self.on_duplicate);
        let mut rows = 0u64;
        if self.runs.is_empty() {
            let order = sort_index(&self.batches);
            let mut chunk: Vec<Row<'_>> = Vec::with_capacity(CHUNK_ROWS);
            self.duplicates += unique_rows(&self.batches, &order, db_id, encoding, policy, |k, v| {
                chunk.push((k, v));
                if chunk.len() == CHUNK_ROWS {
                    rows += chunk.len() as u64;
                    sink(&chunk)?;
                    chunk.clear();
                }
                Ok(())
            })?;
            rows += chunk.len() as u64;
            if !chunk.is_empty() {
                sink(&chunk)?;
            }
        } else {
            self.spill()?;
            // Each pass merges consecutive groups, so every row is rewritten
            // once per pass and runs stay in arrival order.
            while self.runs.len() > MAX_FAN_IN {
                let mut next = Vec::with_capacity(self.runs.len().div_ceil(MAX_FAN_IN));
                for group in std::mem::take(&mut self.runs).chunks(MAX_FAN_IN) {
                    if let [single] = group {
                        next.push(single.clone());
                        continue;
                    }
                    let merged = self.dir.join(format!("run-{:05}.sfsort", self.runs_written));
                    self.runs_written += 1;
                    let mut out = RunWriter::create(&merged)?;
                    self.duplicates += merge(group, db_id, encoding, policy, &mut |k, v| out.write(k, v))?;
                    out.finish()?;
                    remove_runs(group);
                    next.push(merged);
                }
                self.runs = next;
            }
            let mut chunk = ChunkBuffer::default();
            let runs = std::mem::take(&mut self.runs);
            let dups = merge(&runs, db_id, encoding, policy, &mut |k, v| {
                chunk.push(k, v);
                if chunk.len() == CHUNK_ROWS {
                    rows += chunk.len() as u64;
                    chunk.flush(sink)?;
                }
                Ok(())
            })?;
            self.duplicates += dups;
            rows += chunk.len() as u64;
            chunk.flush(sink)?;
            remove_runs(&runs);
        }
        Ok(SortStats {
            rows,
            duplicates: self.duplicates,
            spilled_runs: self.runs_written,
        })
    }
}

fn remove_runs(runs: &[PathBuf]) {
    for run in runs {
        // The task's folder goes with the task; this only frees disk early.
        let _ = std::fs::remove_file(run);
    }
}

/// One buffered row in the sort index: the key's first 8 bytes (big
/// endian, zero padded) settle most comparisons without touching the key.
#[derive(Debug, Clone, Copy)]
struct Entry {
    prefix: u64,
    batch: u32,
    row: u32,
}

fn key_prefix(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(bytes)
}

fn key_of<'a>(batches: &'a [(BinaryArray, BinaryArray)], e: &Entry) -> &'a [u8] {
    batches[e.batch as usize].0.value(e.row as usize)
}

/// The buffered rows in key order; equal keys in arrival order.
fn sort_index(batches: &[(BinaryArray, BinaryArray)]) -> Vec<Entry> {
    let rows = batches.iter().map(|(k, _)| k.len()).sum();
    let mut order = Vec::with_capacity(rows);
    for (b, (keys, _)) in batches.iter().enumerate() {
        // `push` checked that batch and row numbers fit in u32.
        order.extend((0..keys.len()).map(|r| Entry {
            prefix: key_prefix(keys.value(r)),
            batch: b as u32,
            row: r as u32,
        }));
    }
    // Every entry differs in (batch, row), so an unstable sort is exact.
    order.sort_unstable_by(|a, b| {
        a.prefix
            .cmp(&b.prefix)
            .then_with(|| key_of(batches, a).cmp(key_of(batches, b)))
            .then_with(|| (a.batch, a.row).cmp(&(b.batch, b.row)))
    });
    order
}

/// Calls `emit` for each distinct key of `order` with its last row;
/// returns how many rows were dropped as duplicates.
fn unique_rows<'a>(
    batches: &'a [(BinaryArray, BinaryArray)],
    order: &[Entry],
    db_id: DbId,
    encoding: KeyEncoding,
    policy: DuplicatePolicy,
    mut emit: impl FnMut(&'a [u8], &'a [u8]) -> Result<()>,
) -> Result<u64> {
    let mut duplicates = 0u64;
    for (i, e) in order.iter().enumerate() {
        let key = key_of(batches, e);
        if let Some(next) = order.get(i + 1)
            && next.prefix == e.prefix
            && key_of(batches, next) == key
        {
            duplicate(db_id, key, encoding, policy)?;
            duplicates += 1;
            continue;
        }
        emit(key, batches[e.batch as usize].1.value(e.row as usize))?;
    }
    Ok(duplicates)
}

fn duplicate(db_id: DbId, key: &[u8], encoding: KeyEncoding, policy: DuplicatePolicy) -> Result<()> {
    match policy {
        DuplicatePolicy::LastWins => Ok(()),
        DuplicatePolicy::Error => Err(Error::DuplicateKey {
            db_id,
            key: show_key(key, encoding),
        }),
    }
}

/// Receives merged rows.
type Emit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// Merges runs (oldest first) into one key-ordered stream, each key once,
/// the newest run's row winning; returns the rows dropped.
fn merge(
    runs: &[PathBuf],
    db_id: DbId,
    encoding: KeyEncoding,
    policy: DuplicatePolicy,
    emit: &mut Emit<'_>,
) -> Result<u64> {
    let mut readers = runs.iter().map(|p| RunReader::open(p)).collect::<Result<Vec<_>>>()?;
    for r in &mut readers {
        r.advance()?;
    }
    let mut duplicates = 0u64;
    loop {
        // Few runs at a time (MAX_FAN_IN): a scan beats a heap's upkeep.
        let mut best: Option<usize> = None;
        let mut tied = 0usize;
        for (i, r) in readers.iter().enumerate() {
            if !r.live {
                continue;
            }
            match best {
                None => (best, tied) = (Some(i), 0),
                Some(b) => match r.key.cmp(&readers[b].key) {
                    Ordering::Less => (best, tied) = (Some(i), 0),
                    // A later run wins a tie.
                    Ordering::Equal => (best, tied) = (Some(i), tied + 1),
                    Ordering::Greater => {}
                },
            }
        }
        let Some(best) = best else { break };
        if tied > 0 {
            duplicate(db_id, &readers[best].key, encoding, policy)?;
            duplicates += tied as u64;
            let key = readers[best].key.clone();
            for (i, r) in readers.iter_mut().enumerate() {
                if i != best && r.live && r.key == key {
                    r.advance()?;
                }
            }
        }
        emit(&readers[best].key, &readers[best].value)?;
        readers[best].advance()?;
    }
    Ok(duplicates)
}

/// Rows copied out of merged runs, handed on as one chunk.
#[derive(Default)]
struct ChunkBuffer {
    data: Vec<u8>,
    /// (key end, value end) in `data`, per row.
    ends: Vec<(usize, usize)>,
}

impl ChunkBuffer {
    fn push(&mut self, key: &[u8], value: &[u8]) {
        self.data.extend_from_slice(key);
        let key_end = self.data.len();
        self.data.extend_from_slice(value);
        self.ends.push((key_end, self.data.len()));
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn flush(&mut self, sink: &mut dyn FnMut(&[Row<'_>]) -> Result<()>) -> Result<()> {
        if self.ends.is_empty() {
            return Ok(());
        }
        let mut start = 0;
        let rows: Vec<Row<'_>> = self
            .ends
            .iter()
            .map(|&(k, v)| {
                let row = (&self.data[start..k], &self.data[k..v]);
                start = v;
                row
            })
            .collect();
        sink(&rows)?;
        self.data.clear();
        self.ends.clear();
        Ok(())
    }
}

struct RunWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl RunWriter {
    fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|e| Error::io(format!("creating the sort run {}", path.display()), e))?;
        Ok(RunWriter {
            out: BufWriter::with_capacity(RUN_BUFFER, file),
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let io = |e| Error::io(format!("writing the sort run {}", self.path.display()), e);
        for field in [key, value] {
            let len = u32::try_from(field.len())
                .map_err(|_| Error::Data(format!("a key or value of {} bytes is too large to sort", field.len())))?;
            self.out.write_all(&len.to_le_bytes()).map_err(io)?;
            self.out.write_all(field).map_err(io)?;
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        let path = self.path;
        self.out
            .into_inner()
            .map_err(|e| Error::io(format!("writing the sort run {}", path.display()), e.into_error()))?;
        Ok(())
    }
}

struct RunReader {
    input: BufReader<File>,
    path: PathBuf,
    key: Vec<u8>,
    value: Vec<u8>,
    live: bool,
}

impl RunReader {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(format!("opening the sort run {}", path.display()), e))?;
        Ok(RunReader {
            input: BufReader::with_capacity(RUN_BUFFER, file),
            path: path.to_path_buf(),
            key: Vec::new(),
            value: Vec::new(),
            live: true,
        })
    }

    /// Reads the next row; at the end of the run, `live` turns false.
    fn advance(&mut self) -> Result<()> {
        let io = |e| Error::io(format!("reading the sort run {}", self.path.display()), e);
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && self.input.buffer().is_empty() => {
                self.live = false;
                return Ok(());
            }
            Err(e) => return Err(io(e)),
        }
        read_field(&mut self.input, u32::from_le_bytes(len), &mut self.key).map_err(io)?;
        self.input.read_exact(&mut len).map_err(io)?;
        read_field(&mut self.input, u32::from_le_bytes(len), &mut self.value).map_err(io)?;
        Ok(())
    }
}

fn read_field(input: &mut BufReader<File>, len: u32, into: &mut Vec<u8>) -> std::io::Result<()> {
    into.clear();
    into.resize(len as usize, 0);
    input.read_exact(into)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rows = Vec<(Vec<u8>, Vec<u8>)>;

    fn arrays(rows: &[(Vec<u8>, Vec<u8>)]) -> (BinaryArray, BinaryArray) {
        (
            BinaryArray::from_iter_values(rows.iter().map(|r| r.0.as_slice())),
            BinaryArray::from_iter_values(rows.iter().map(|r| r.1.as_slice())),
        )
    }

    /// Feeds `batches` through a sorter with `budget`, spilling when asked;
    /// returns what it drained and its stats.
    fn sort(batches: &[Rows], budget: usize, policy: DuplicatePolicy) -> Result<(Rows, SortStats)> {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = ShardSorter::new(DbId(7), KeyEncoding::Raw, policy, budget, dir.path());
        for b in batches {
            let (k, v) = arrays(b);
            if s.push(k, v)? {
                s.spill()?;
            }
        }
        let mut out = Vec::new();
        let stats = s.drain(&mut |rows| {
            assert!(!rows.is_empty() && rows.len() <= CHUNK_ROWS);
            out.extend(rows.iter().map(|(k, v)| (k.to_vec(), v.to_vec())));
            Ok(())
        })?;
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert!(left.is_empty(), "runs are removed once merged: {left:?}");
        Ok((out, stats))
    }

    /// Pseudo-random keys of varied lengths sharing long prefixes, so the
    /// 8-byte prefix often ties; values record the arrival number.
    fn rows(n: usize, seed: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut x = seed | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut key = b"prefix-".to_vec();
                key.extend_from_slice(&(x % 5000).to_be_bytes()[6..]);
                key.extend(std::iter::repeat_n(b'z', (x % 3) as usize));
                (key, format!("row-{i}").into_bytes())
            })
            .collect()
    }

    /// The expected result: last arrival wins, keys ascending.
    fn expected(all: &[(Vec<u8>, Vec<u8>)]) -> (Rows, u64) {
        let mut map = std::collections::BTreeMap::new();
        for (k, v) in all {
            map.insert(k.clone(), v.clone());
        }
        let dups = (all.len() - map.len()) as u64;
        (map.into_iter().collect(), dups)
    }

    #[test]
    fn in_memory_and_spilled_sorts_agree_with_last_arrival_wins() {
        let all = rows(30_000, 42);
        let batches: Vec<_> = all.chunks(1000).map(<[_]>::to_vec).collect();
        let (want, dups) = expected(&all);
        assert!(dups > 1000, "the data has many duplicates: {dups}");
        for (budget, min_runs, max_runs) in [
            (usize::MAX, 0, 0),
            // About 3 batches a run: ~10 runs, one merge pass.
            (150_000, 5, 16),
            // A batch a run: 30 runs, so two merge passes.
            (1, 30, 40),
        ] {
            let (got, stats) = sort(&batches, budget, DuplicatePolicy::LastWins).expect("sort");
            assert_eq!(got.len(), want.len(), "budget {budget}");
            assert!(got == want, "budget {budget}: rows differ");
            assert_eq!(stats.rows, want.len() as u64);
            assert_eq!(stats.duplicates, dups);
            assert!(
                (min_runs..=max_runs).contains(&stats.spilled_runs),
                "budget {budget}: {} runs",
                stats.spilled_runs
            );
        }
    }

    #[test]
    fn fixed_width_keys_sort_numerically() {
        let keys: Vec<u64> = vec![5, 1 << 40, 3, u64::MAX, 0, 256];
        let batch: Vec<_> = keys
            .iter()
            .map(|k| (k.to_be_bytes().to_vec(), k.to_string().into_bytes()))
            .collect();
        let (got, stats) = sort(&[batch], usize::MAX, DuplicatePolicy::Error).expect("sort");
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        let got_keys: Vec<u64> = got
            .iter()
            .map(|(k, _)| u64::from_be_bytes(k.as_slice().try_into().expect("8 bytes")))
            .collect();
        assert_eq!(got_keys, sorted);
        assert_eq!(
            stats,
            SortStats {
                rows: 6,
                duplicates: 0,
                spilled_runs: 0
            }
        );
    }

    #[test]
    fn shorter_keys_sort_before_their_extensions() {
        let batch: Vec<_> = [&b"ab\0"[..], b"ab", b"abcdefgh1", b"abcdefgh", b"", b"abcdefgh0"]
            .iter()
            .map(|k| (k.to_vec(), b"v".to_vec()))
            .collect();
        for budget in [usize::MAX, 1] {
            let single: Vec<_> = batch.iter().map(|r| vec![r.clone()]).collect();
            let (got, _) = sort(&single, budget, DuplicatePolicy::Error).expect("sort");
            let got: Vec<&[u8]> = got.iter().map(|(k, _)| k.as_slice()).collect();
            assert_eq!(
                got,
                vec![&b""[..], b"ab", b"ab\0", b"abcdefgh", b"abcdefgh0", b"abcdefgh1"],
                "budget {budget}"
            );
        }
    }

    #[test]
    fn duplicates_fail_under_error_in_memory_and_across_runs() {
        let first = vec![(b"k1".to_vec(), b"a".to_vec()), (b"k2".to_vec(), b"a".to_vec())];
        let second = vec![(b"k3".to_vec(), b"b".to_vec()), (b"k2".to_vec(), b"b".to_vec())];
        for budget in [usize::MAX, 1] {
            let e = sort(&[first.clone(), second.clone()], budget, DuplicatePolicy::Error).expect_err("duplicate");
            assert_eq!(
                e.to_string(),
                "shard 7: duplicate key k2 (on_duplicate = \"error\"; use \"last_wins\" to keep the last row)",
                "budget {budget}"
            );
            let (got, stats) = sort(&[first.clone(), second.clone()], budget, DuplicatePolicy::LastWins).expect("sort");
            assert_eq!(
                got[1],
                (b"k2".to_vec(), b"b".to_vec()),
                "the later row wins (budget {budget})"
            );
            assert_eq!(stats.duplicates, 1);
        }
    }

    #[test]
    fn a_failing_sink_stops_the_drain() {
        let batch = rows(10_000, 7);
        for budget in [usize::MAX, 50_000] {
            let dir = tempfile::tempdir().expect("tmp");
            let mut s = ShardSorter::new(DbId(1), KeyEncoding::Raw, DuplicatePolicy::LastWins, budget, dir.path());
            for b in batch.chunks(500) {
                let (k, v) = arrays(b);
                if s.push(k, v).expect("push") {
                    s.spill().expect("spill");
                }
            }
            let mut calls = 0;
            let e = s
                .drain(&mut |_| {
                    calls += 1;
                    Err(Error::Data("sink is full".into()))
                })
                .expect_err("fails");
            assert_eq!(calls, 1, "budget {budget}");
            assert_eq!(e.to_string(), "sink is full");
        }
    }

    #[test]
    fn runs_are_capped_whatever_the_budget() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = ShardSorter::new(
            DbId(0),
            KeyEncoding::Raw,
            DuplicatePolicy::LastWins,
            usize::MAX,
            dir.path(),
        );
        let value = vec![b'v'; 1 << 20];
        let mut pushed = 0usize;
        for i in 0u32..64 {
            let keys = BinaryArray::from_iter_values([i.to_be_bytes()]);
            let values = BinaryArray::from_iter_values([value.as_slice()]);
            pushed += value.len();
            if s.push(keys, values).expect("push") {
                break;
            }
        }
        assert!(
            (MAX_RUN_BYTES..MAX_RUN_BYTES + (2 << 20)).contains(&pushed),
            "a full buffer after {pushed} bytes"
        );
    }

    #[test]
    fn an_empty_sorter_drains_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = ShardSorter::new(DbId(0), KeyEncoding::Raw, DuplicatePolicy::LastWins, 10, dir.path());
        assert!(s.is_empty());
        let (k, v) = arrays(&[]);
        assert!(!s.push(k, v).expect("push"), "an empty batch takes no budget");
        assert!(s.is_empty());
        let stats = s.drain(&mut |_| panic!("no rows")).expect("drain");
        assert_eq!(stats, SortStats::default());
    }
}
