//! Collecting the rows of many shards in bounded memory.
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
//! segments) as [`ShardRows`], which the shard's build drains in key order
//! ([`ShardRows::drain`]).

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, BinaryArray};
use sf_manifest::{DbId, KeyEncoding};

use crate::build::backend::DuplicatePolicy;
use crate::build::merge::{Order, ShardRows};
use crate::error::{Error, Result};
use crate::route::budget::MemoryBudget;
use crate::route::chunk::{Chunk, ROW_BYTES};
use crate::route::spill::{Segment, SegmentWriter, SpillFile};

/// Size at which a chunk is sealed (and sorted): sorting in pieces of this
/// size while the input is still arriving, then merging, measured faster
/// than sorting big buffers once the input ends (10M rows in 16 shards:
/// 14.8 s with 16 MiB pieces, 18.5 s with one sort per shard at the end).
pub const MAX_RUN_BYTES: usize = 16 << 20;
/// Below this, a collector refused memory grows beyond the budget instead
/// of spilling (a spill of a few rows would only make tiny files); the
/// overshoot is at most this much per collector.
const MIN_SPILL_BYTES: usize = 1 << 20;

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
        let mut out = SegmentWriter::create(&path)?;
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
        Ok(Some(ShardRows::new(
            DbId(db),
            self.settings.order,
            self.settings.on_duplicate,
            self.settings.key_encoding,
            sealed,
            segments,
            duplicates,
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::build::merge::{CHUNK_ROWS, SortStats};
    use crate::route::chunk::{FIRST_DATA_BYTES, FIRST_ROWS};

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
