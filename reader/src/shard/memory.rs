//! Memory mode: a SQLite shard held in memory and answered without SQLite.
//!
//! At open, the downloaded (and verified) shard file is read once, in key
//! order, into one arena of records, and an open-addressing hash table
//! points into it:
//!
//! ```text
//! arena   [key len u32][value len u32][key][value] [key len][value len][key][value] ...
//! slots   u64 each: 0 = empty, else  tag (24 bits of the key's hash) << 40 | record offset
//! ```
//!
//! A lookup hashes the key, probes linearly from the slot the hash's top
//! bits name, passes over slots whose tag differs without touching the
//! arena, and compares the key of a slot whose tag matches: about two
//! cache misses (the slot, then the record, whose key and value are
//! adjacent), against a B-tree walk of several pages in SQLite. The table
//! is at most two-thirds full, so probes are short and every probe ends at
//! an empty slot.
//!
//! The hash is xxh3 with a seed of its own: a shard's keys share their
//! routing hash (seed 0) modulo `num_dbs`, and with the routing hash a
//! table indexed by those bits would pile every key onto a fraction of its
//! slots.
//!
//! Memory is accounted before it is taken: an open reserves an estimate
//! (the file's size plus the table) from the reader's [`MemoryBudget`],
//! grows the reservation only if the arena outgrows it, and trims it to
//! what the index holds once loaded. A shard whose reservation does not
//! fit is not loaded (the caller keeps it on SQLite), so the bytes held by
//! all memory-mode shards never exceed `memory_limit_bytes`. The bytes go
//! back to the budget when the shard is dropped (a refresh that no longer
//! serves it, or the reader's close).

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::Connection;

use super::huge_pages;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The lookup table's own hash seed (any constant other than routing's 0).
const SEED: u64 = 0x5346_6d65_6d69_6478;
/// Low bits of a slot: the record's offset in the arena (arenas up to 1 TiB).
const OFFSET_BITS: u32 = 40;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;
/// Bits of the hash kept as a slot's tag; the top one is always set, so an
/// occupied slot is never 0.
const TAG_BITS: u32 = 24;
const TAG_SET: u64 = 1 << (TAG_BITS - 1);
/// Two little-endian u32: key length, value length.
const RECORD_HEADER: usize = 8;
/// Keys a batched lookup ([`MemoryIndex::get_each`]) takes at once: enough
/// misses in flight to fill a core's line fill buffers.
const GROUP: usize = 16;
/// The smallest table.
const MIN_SLOTS: usize = 8;
/// Bytes a record needs at most beyond what its row takes in a SQLite
/// file: a row costs its key and value plus at least 5 bytes there (a
/// 2-byte cell pointer, a 1-byte payload size and a 3-byte record header),
/// and 8 bytes of header here.
const RECORD_EXTRA_OVER_FILE: u64 = 3;

/// Hashes a key for the table; a trait so tests can force collisions.
pub(crate) trait KeyHash {
    fn hash(key: &[u8]) -> u64;
}

/// xxh3-64 with the table's seed: see the module docs.
#[derive(Debug)]
pub(crate) struct SeededXxh3;

impl KeyHash for SeededXxh3 {
    #[inline]
    fn hash(key: &[u8]) -> u64 {
        xxh3_64_with_seed(key, SEED)
    }
}

#[inline]
fn tag_of(hash: u64) -> u64 {
    (hash & (TAG_SET - 1)) | TAG_SET
}

/// Slots for `rows` rows: a power of two, at most two-thirds full.
fn slot_count(rows: u64) -> usize {
    let want = rows.saturating_add(rows / 2).saturating_add(1);
    usize::try_from(want)
        .ok()
        .and_then(usize::checked_next_power_of_two)
        .unwrap_or(usize::MAX / 2 + 1)
        .max(MIN_SLOTS)
}

/// Bytes of the hash table for `rows` rows.
fn table_bytes(rows: u64) -> u64 {
    (slot_count(rows) as u64).saturating_mul(8)
}

/// What loading a shard of `file_bytes` bytes and `rows` rows (as the
/// manifest records them) is expected to hold: an arena no larger than
/// the file's rows need there, and the table.
pub(crate) fn estimate(file_bytes: u64, rows: u64) -> u64 {
    arena_estimate(file_bytes, rows).saturating_add(table_bytes(rows))
}

fn arena_estimate(file_bytes: u64, rows: u64) -> u64 {
    file_bytes.saturating_add(rows.saturating_mul(RECORD_EXTRA_OVER_FILE))
}

/// The memory all memory-mode shards of one reader may hold; shared by
/// every snapshot the reader serves.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
    shards: AtomicU64,
}

impl MemoryBudget {
    pub(crate) fn new(limit: u64) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicU64::new(0),
            shards: AtomicU64::new(0),
        })
    }

    /// Bytes held (or being loaded) now.
    pub(crate) fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Shards held in memory now.
    pub(crate) fn shards(&self) -> u64 {
        self.shards.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget, or `None` when they do not fit.
    pub(crate) fn reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        self.take(bytes).then(|| Reservation {
            budget: Arc::clone(self),
            bytes,
        })
    }

    fn take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Bytes taken from a [`MemoryBudget`], given back on drop.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Reservation {
    /// Makes the reservation exactly `bytes`; false (and unchanged) when
    /// growing it does not fit.
    fn resize(&mut self, bytes: u64) -> bool {
        if bytes > self.bytes {
            if !self.budget.take(bytes - self.bytes) {
                return false;
            }
        } else {
            self.budget.give_back(self.bytes - bytes);
        }
        self.bytes = bytes;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// Why a shard could not be loaded into memory.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// The shard needs more than the budget has left; it stays on SQLite.
    #[error("it needs more memory than memory_limit_bytes leaves")]
    OverBudget,
    /// SQLite could not read the file.
    #[error("SQLite cannot read the shard file: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A key or value is not a BLOB, as the format requires.
    #[error("row {row} of kv holds a {found} {column}; shards store keys and values as BLOBs")]
    NotBlob {
        row: u64,
        column: &'static str,
        /// SQLite's name of the type found (`TEXT`, `INTEGER`, ...).
        found: String,
    },
    /// The same key twice: the file is not a valid shard.
    #[error("key {key} ({len} bytes) is stored twice")]
    Duplicate { key: String, len: usize },
    /// Beyond what one arena addresses.
    #[error("the shard's rows exceed the 1 TiB one in-memory shard can hold")]
    TooLarge,
}

/// Keys and values of one shard, looked up by hash; see the module docs.
pub(crate) struct MemoryIndex<H: KeyHash = SeededXxh3> {
    arena: Vec<u8>,
    slots: Box<[u64]>,
    /// `64 - log2(slots)`: the hash's top bits pick the first slot.
    shift: u32,
    rows: u64,
    hash: PhantomData<H>,
}

impl<H: KeyHash> std::fmt::Debug for MemoryIndex<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryIndex")
            .field("rows", &self.rows)
            .field("arena_bytes", &self.arena.len())
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl<H: KeyHash> MemoryIndex<H> {
    /// The value stored for `key`.
    #[inline]
    pub(crate) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.get_hashed(H::hash(key), key)
    }

    /// [`get`](Self::get) of a key whose hash is known.
    #[inline]
    fn get_hashed(&self, hash: u64, key: &[u8]) -> Option<&[u8]> {
        let tag = tag_of(hash);
        let mask = self.slots.len() - 1;
        let mut i = (hash >> self.shift) as usize;
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                return None;
            }
            if slot >> OFFSET_BITS == tag {
                let (k, v) = self.record((slot & OFFSET_MASK) as usize);
                if k == key {
                    return Some(v);
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Looks up every key of `keys`, handing each key's position and
    /// value to `found`, [`GROUP`] keys at a time: a group's table slots
    /// are all touched before any is probed, then its records, so that
    /// the cache misses of a group overlap instead of following one
    /// another (a lookup in a large shard is two misses and little else).
    pub(crate) fn get_each<K: AsRef<[u8]>>(&self, keys: &[(usize, K)], mut found: impl FnMut(usize, Option<&[u8]>)) {
        let mask = self.slots.len() - 1;
        for group in keys.chunks(GROUP) {
            let mut hashes = [0u64; GROUP];
            let mut touched = 0u64;
            for (h, (_, key)) in hashes.iter_mut().zip(group) {
                *h = H::hash(key.as_ref());
                touched ^= self.slots[(*h >> self.shift) as usize];
            }
            // The first record whose tag matches: nearly always the key's.
            for h in &hashes[..group.len()] {
                let tag = tag_of(*h);
                let mut i = (*h >> self.shift) as usize;
                loop {
                    let slot = self.slots[i];
                    if slot == 0 {
                        break;
                    }
                    if slot >> OFFSET_BITS == tag {
                        touched ^= u64::from(self.arena[(slot & OFFSET_MASK) as usize]);
                        break;
                    }
                    i = (i + 1) & mask;
                }
            }
            std::hint::black_box(touched);
            for (h, (at, key)) in hashes.iter().zip(group) {
                found(*at, self.get_hashed(*h, key.as_ref()));
            }
        }
    }

    /// Rows held.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes held: the arena's allocation and the table.
    pub(crate) fn bytes(&self) -> u64 {
        (self.arena.capacity() + self.slots.len() * 8) as u64
    }

    #[inline]
    fn record(&self, at: usize) -> (&[u8], &[u8]) {
        let u32_at = |i: usize| {
            let b: [u8; 4] = self.arena[i..i + 4].try_into().expect("a slice of four bytes");
            u32::from_le_bytes(b) as usize
        };
        let key_len = u32_at(at);
        let value_len = u32_at(at + 4);
        let key_at = at + RECORD_HEADER;
        let value_at = key_at + key_len;
        (
            &self.arena[key_at..value_at],
            &self.arena[value_at..value_at + value_len],
        )
    }

    /// Every (key, value) in load order.
    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut at = 0;
        std::iter::from_fn(move || {
            if at >= self.arena.len() {
                return None;
            }
            let (k, v) = self.record(at);
            at += RECORD_HEADER + k.len() + v.len();
            Some((k, v))
        })
    }

    /// The longest run of probes any stored key takes.
    #[cfg(test)]
    fn longest_probe(&self) -> usize {
        let mask = self.slots.len() - 1;
        self.iter()
            .map(|(k, _)| {
                let hash = H::hash(k);
                let mut i = (hash >> self.shift) as usize;
                let mut probes = 1;
                while self.record((self.slots[i] & OFFSET_MASK) as usize).0 != k {
                    i = (i + 1) & mask;
                    probes += 1;
                }
                probes
            })
            .max()
            .unwrap_or(0)
    }
}

/// Fills an arena row by row, within a reservation, then indexes it.
pub(crate) struct IndexBuilder<H: KeyHash = SeededXxh3> {
    arena: Vec<u8>,
    rows: u64,
    /// Whether to ask for huge pages ([`huge_pages::advise`]) under the
    /// arena and the table.
    huge_pages: bool,
    reservation: Reservation,
    hash: PhantomData<H>,
}

impl<H: KeyHash> IndexBuilder<H> {
    /// A builder whose arena starts with room for `arena_bytes`; the
    /// reservation must already cover them.
    fn new(reservation: Reservation, arena_bytes: u64, huge_pages: bool) -> Result<Self, LoadError> {
        let capacity = usize::try_from(arena_bytes).map_err(|_| LoadError::TooLarge)?;
        let mut arena = Vec::new();
        arena.try_reserve_exact(capacity).map_err(|_| LoadError::OverBudget)?;
        if huge_pages {
            huge_pages::advise(&arena);
        }
        Ok(IndexBuilder {
            arena,
            rows: 0,
            huge_pages,
            reservation,
            hash: PhantomData,
        })
    }

    /// Adds a row (keys arrive unique; [`finish`](Self::finish) checks).
    fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), LoadError> {
        let key_len = u32::try_from(key.len()).map_err(|_| LoadError::TooLarge)?;
        let value_len = u32::try_from(value.len()).map_err(|_| LoadError::TooLarge)?;
        let need = RECORD_HEADER + key.len() + value.len();
        let at = self.arena.len();
        if at as u64 > OFFSET_MASK {
            return Err(LoadError::TooLarge);
        }
        if self.arena.capacity() - at < need {
            // More than the estimate (a manifest whose row count is low):
            // grow by a quarter at least, if the budget allows.
            let capacity = self.arena.capacity();
            let new_capacity = (at + need).max(capacity + capacity / 4);
            let held = self.reservation.bytes.saturating_sub(capacity as u64);
            if !self.reservation.resize(held + new_capacity as u64) {
                return Err(LoadError::OverBudget);
            }
            self.arena
                .try_reserve_exact(new_capacity - at)
                .map_err(|_| LoadError::OverBudget)?;
            if self.huge_pages {
                huge_pages::advise(&self.arena);
            }
        }
        self.arena.extend_from_slice(&key_len.to_le_bytes());
        self.arena.extend_from_slice(&value_len.to_le_bytes());
        self.arena.extend_from_slice(key);
        self.arena.extend_from_slice(value);
        self.rows += 1;
        Ok(())
    }

    /// Builds the table over the arena; the reservation then covers
    /// exactly what the index holds.
    fn finish(mut self) -> Result<(MemoryIndex<H>, Reservation), LoadError> {
        // A shrink returns the estimate's slack (page headers and free
        // space of the file) to the allocator.
        if self.arena.capacity() - self.arena.len() > self.arena.len() / 64 {
            self.arena.shrink_to_fit();
            // A shrink may move the arena to a new mapping.
            if self.huge_pages {
                huge_pages::advise(&self.arena);
            }
        }
        let slots_len = slot_count(self.rows);
        if !self
            .reservation
            .resize(self.arena.capacity() as u64 + (slots_len as u64) * 8)
        {
            return Err(LoadError::OverBudget);
        }
        let mut slots = Vec::new();
        slots.try_reserve_exact(slots_len).map_err(|_| LoadError::OverBudget)?;
        if self.huge_pages {
            huge_pages::advise(&slots);
        }
        slots.resize(slots_len, 0u64);
        let mut index = MemoryIndex {
            arena: self.arena,
            slots: slots.into_boxed_slice(),
            shift: 64 - slots_len.trailing_zeros(),
            rows: self.rows,
            hash: PhantomData,
        };
        let mask = slots_len - 1;
        let mut at = 0;
        while at < index.arena.len() {
            let (key, value) = index.record(at);
            let hash = H::hash(key);
            let tag = tag_of(hash);
            let mut i = (hash >> index.shift) as usize;
            loop {
                let slot = index.slots[i];
                if slot == 0 {
                    break;
                }
                if slot >> OFFSET_BITS == tag && index.record((slot & OFFSET_MASK) as usize).0 == key {
                    return Err(LoadError::Duplicate {
                        key: shown(key),
                        len: key.len(),
                    });
                }
                i = (i + 1) & mask;
            }
            let next = at + RECORD_HEADER + key.len() + value.len();
            index.slots[i] = (tag << OFFSET_BITS) | at as u64;
            at = next;
        }
        Ok((index, self.reservation))
    }
}

/// A key for an error message: hex, cut at 32 bytes.
fn shown(key: &[u8]) -> String {
    let mut s = hex::encode(&key[..key.len().min(32)]);
    if key.len() > 32 {
        s.push_str("...");
    }
    s
}

/// A shard held in memory: its index and the budget it holds.
#[derive(Debug)]
pub(crate) struct MemoryShard {
    index: MemoryIndex,
    reservation: Reservation,
}

impl MemoryShard {
    fn new(index: MemoryIndex, reservation: Reservation) -> Self {
        reservation.budget.shards.fetch_add(1, Ordering::Relaxed);
        MemoryShard { index, reservation }
    }

    /// The value stored for `key`.
    #[inline]
    pub(crate) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.index.get(key)
    }

    /// [`MemoryIndex::get_each`].
    #[inline]
    pub(crate) fn get_each<K: AsRef<[u8]>>(&self, keys: &[(usize, K)], found: impl FnMut(usize, Option<&[u8]>)) {
        self.index.get_each(keys, found)
    }

    /// Rows held.
    pub(crate) fn rows(&self) -> u64 {
        self.index.rows()
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.index.bytes()
    }
}

impl Drop for MemoryShard {
    fn drop(&mut self) {
        self.reservation.budget.shards.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads every row of the shard open on `conn` (a file of `file_bytes`
/// bytes, `rows` rows by its manifest) into memory, within `reservation`,
/// which must cover [`estimate`]`(file_bytes, rows)`.
/// With `huge_pages`, the arena and the table ask for transparent huge
/// pages ([`huge_pages::advise`]).
pub(crate) fn load(
    conn: &Connection,
    reservation: Reservation,
    file_bytes: u64,
    rows: u64,
    huge_pages: bool,
) -> Result<MemoryShard, LoadError> {
    let (index, reservation) = load_index::<SeededXxh3>(conn, reservation, file_bytes, rows, huge_pages)?;
    Ok(MemoryShard::new(index, reservation))
}

fn load_index<H: KeyHash>(
    conn: &Connection,
    reservation: Reservation,
    file_bytes: u64,
    rows: u64,
    huge_pages: bool,
) -> Result<(MemoryIndex<H>, Reservation), LoadError> {
    // The estimate's table share stays reserved until the table is built.
    let mut builder = IndexBuilder::<H>::new(reservation, arena_estimate(file_bytes, rows), huge_pages)?;
    // `k` is the primary key of a WITHOUT ROWID table: this walks the
    // table's own B-tree in order, no sort.
    // A full read of a real table takes a few steps per row, and a row
    // takes bytes of the file: a budget by the file's size stops only a
    // file whose `kv` makes more work than it holds.
    let _budget = sf_manifest::format::untrusted::Budget::start(file_bytes.saturating_mul(64).saturating_add(1 << 20));
    let mut stmt = conn.prepare(sf_manifest::format::kv::SCAN)?;
    let mut cursor = stmt.raw_query();
    let mut row = 0u64;
    while let Some(r) = cursor.next()? {
        row += 1;
        let blob = |i: usize, column: &'static str| -> Result<&[u8], LoadError> {
            match r.get_ref(i)? {
                rusqlite::types::ValueRef::Blob(b) => Ok(b),
                other => Err(LoadError::NotBlob {
                    row,
                    column,
                    found: other.data_type().to_string().to_uppercase(),
                }),
            }
        };
        builder.push(blob(0, "key")?, blob(1, "value")?)?;
    }
    builder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key hashes alike: every lookup walks one run of slots.
    struct Colliding;

    impl KeyHash for Colliding {
        fn hash(_: &[u8]) -> u64 {
            0x0123_4567_89ab_cdef
        }
    }

    fn build<H: KeyHash>(rows: &[(Vec<u8>, Vec<u8>)]) -> (MemoryIndex<H>, Arc<MemoryBudget>) {
        let budget = MemoryBudget::new(u64::MAX);
        let reservation = budget.reserve(0).expect("unlimited");
        let mut b = IndexBuilder::<H>::new(reservation, 0, true).expect("builder");
        for (k, v) in rows {
            b.push(k, v).expect("push");
        }
        let (index, reservation) = b.finish().expect("finish");
        assert_eq!(
            reservation.bytes,
            index.bytes(),
            "the reservation is what the index holds"
        );
        assert_eq!(budget.used_bytes(), index.bytes());
        drop(reservation);
        (index, budget)
    }

    fn check<H: KeyHash>(index: &MemoryIndex<H>, rows: &[(Vec<u8>, Vec<u8>)], misses: &[Vec<u8>]) {
        assert_eq!(index.rows(), rows.len() as u64);
        for (k, v) in rows {
            assert_eq!(index.get(k), Some(v.as_slice()), "key {}", hex::encode(k));
        }
        for k in misses {
            assert_eq!(index.get(k), None, "miss {}", hex::encode(k));
        }
        let back: Vec<(Vec<u8>, Vec<u8>)> = index.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        assert_eq!(back, rows, "the arena holds the rows in load order");
        // The batched lookup answers alike, hits and misses interleaved,
        // positions kept, over groups of every fill (the key list is
        // reversed so that hits and misses share groups).
        let asked: Vec<(usize, Vec<u8>)> = rows
            .iter()
            .map(|(k, _)| k.clone())
            .chain(misses.iter().cloned())
            .rev()
            .enumerate()
            .collect();
        for n in [0, 1, GROUP - 1, GROUP, GROUP + 1, asked.len()] {
            let part = &asked[..n.min(asked.len())];
            let mut seen = Vec::new();
            index.get_each(part, |at, v| seen.push((at, v.map(<[u8]>::to_vec))));
            let want: Vec<(usize, Option<Vec<u8>>)> = part
                .iter()
                .map(|(at, k)| (*at, index.get(k).map(<[u8]>::to_vec)))
                .collect();
            assert_eq!(seen, want, "get_each of {n} keys");
        }
    }

    fn int_rows(n: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|k| (k.to_be_bytes().to_vec(), format!("value-{k}").into_bytes()))
            .collect()
    }

    #[test]
    fn empty_shards_answer_every_key_with_a_miss() {
        let (index, _) = build::<SeededXxh3>(&[]);
        check(&index, &[], &[vec![], vec![0], 7u64.to_be_bytes().to_vec()]);
        assert_eq!(index.slots.len(), MIN_SLOTS);
    }

    #[test]
    fn keys_and_values_of_every_size() {
        let mut rows = vec![
            (vec![], b"the empty key".to_vec()),
            (vec![0], vec![]),
            (vec![0, 0], vec![0]),
            (vec![1], vec![7u8; 3 * 1024 * 1024]),
            (vec![0xab; 70_000], b"a long key".to_vec()),
            (vec![0xab; 70_001], vec![0xcd; 100_000]),
        ];
        rows.extend(int_rows(1000));
        rows.sort();
        let (index, _) = build::<SeededXxh3>(&rows);
        check(
            &index,
            &rows,
            &[
                vec![0, 0, 0],
                vec![0xab; 69_999],
                vec![2],
                5000u64.to_be_bytes().to_vec(),
            ],
        );
    }

    #[test]
    fn colliding_hashes_are_told_apart_by_their_keys() {
        let rows = int_rows(300);
        let (index, _) = build::<Colliding>(&rows);
        check(
            &index,
            &rows,
            &[300u64.to_be_bytes().to_vec(), vec![], vec![0; 7], vec![0; 9]],
        );
        assert_eq!(index.longest_probe(), 300, "all keys share one run of slots");
    }

    #[test]
    fn the_table_is_at_most_two_thirds_full() {
        for n in [0u64, 1, 5, 6, 7, 100, 1 << 16, (1 << 16) + 1] {
            let slots = slot_count(n) as u64;
            assert!(slots.is_power_of_two() && slots >= MIN_SLOTS as u64);
            assert!(n * 3 <= slots * 2, "{n} rows in {slots} slots");
            assert!(
                slots <= (n * 3).max(MIN_SLOTS as u64),
                "{n} rows in {slots} slots: too sparse"
            );
        }
    }

    /// The keys one shard of a 16-shard snapshot holds share the low bits
    /// of their routing hash; with the table's own seed they still spread.
    #[test]
    fn keys_of_one_routing_shard_spread_over_the_table() {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = (0u64..400_000)
            .map(|k| k.to_be_bytes().to_vec())
            .filter(|k| xxhash_rust::xxh3::xxh3_64(k) % 16 == 3)
            .map(|k| (k, b"v".to_vec()))
            .collect();
        assert!(rows.len() > 20_000);
        let (index, _) = build::<SeededXxh3>(&rows);
        check(&index, &rows, &[]);
        let longest = index.longest_probe();
        assert!(longest < 100, "a probe run of {longest} slots");
    }

    #[test]
    fn the_same_key_twice_is_refused() {
        let budget = MemoryBudget::new(u64::MAX);
        let mut b = IndexBuilder::<SeededXxh3>::new(budget.reserve(0).expect("r"), 0, false).expect("b");
        b.push(b"a", b"1").expect("push");
        b.push(b"b", b"2").expect("push");
        b.push(b"a", b"3").expect("push");
        let e = b.finish().expect_err("duplicate").to_string();
        assert!(e.contains("61 (1 bytes) is stored twice"), "{e}");
        assert_eq!(budget.used_bytes(), 0, "a failed build gives its memory back");
    }

    #[test]
    fn the_budget_bounds_every_reservation() {
        let budget = MemoryBudget::new(1000);
        let a = budget.reserve(600).expect("fits");
        assert!(budget.reserve(401).is_none(), "beyond the limit");
        let mut b = budget.reserve(400).expect("fits exactly");
        assert_eq!(budget.used_bytes(), 1000);
        assert!(!b.resize(401), "growing past the limit");
        assert_eq!(b.bytes, 400);
        assert!(b.resize(100));
        assert_eq!(budget.used_bytes(), 700);
        drop(a);
        assert_eq!(budget.used_bytes(), 100);
        drop(b);
        assert_eq!(budget.used_bytes(), 0);
    }

    #[test]
    fn an_arena_outgrowing_its_estimate_grows_within_the_budget() {
        let rows = int_rows(100);
        let need: u64 = rows
            .iter()
            .map(|(k, v)| (RECORD_HEADER + k.len() + v.len()) as u64)
            .sum();
        // Room for the rows and the table, but an estimate of nothing.
        let budget = MemoryBudget::new(need * 2 + table_bytes(100));
        let mut b = IndexBuilder::<SeededXxh3>::new(budget.reserve(0).expect("r"), 0, false).expect("b");
        for (k, v) in &rows {
            b.push(k, v).expect("grows");
        }
        let (index, reservation) = b.finish().expect("finish");
        check(&index, &rows, &[]);
        assert_eq!(budget.used_bytes(), index.bytes());
        drop(reservation);

        // Too little for the rows: the builder stops and gives it all back.
        let budget = MemoryBudget::new(need / 2);
        let mut b = IndexBuilder::<SeededXxh3>::new(budget.reserve(0).expect("r"), 0, false).expect("b");
        let failed = rows.iter().find_map(|(k, v)| b.push(k, v).err());
        assert!(matches!(failed, Some(LoadError::OverBudget)), "{failed:?}");
        assert!(budget.used_bytes() <= need / 2);
        drop(b);
        assert_eq!(budget.used_bytes(), 0);
    }

    fn shard_file(dir: &std::path::Path, rows: &[(Vec<u8>, Vec<u8>)]) -> (std::path::PathBuf, u64) {
        let path = dir.join("shard.db");
        let mut conn = Connection::open(&path).expect("create");
        conn.execute_batch(sf_manifest::format::kv::DDL).expect("ddl");
        let tx = conn.transaction().expect("tx");
        for (k, v) in rows {
            tx.execute("INSERT INTO kv VALUES (?1, ?2)", (k, v)).expect("insert");
        }
        tx.commit().expect("commit");
        drop(conn);
        let size = std::fs::metadata(&path).expect("size").len();
        (path, size)
    }

    #[test]
    fn a_shard_file_loads_within_its_estimate() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut rows = int_rows(5000);
        // Overflow pages: a value and a key larger than a 4 KiB page.
        rows.push((vec![0xff; 9000], vec![1; 20_000]));
        rows.push((vec![0xfe], vec![]));
        rows.push((vec![], b"empty key".to_vec()));
        rows.sort();
        let (path, size) = shard_file(dir.path(), &rows);
        let budget = MemoryBudget::new(u64::MAX);
        let conn = Connection::open(&path).expect("open");
        let estimate = estimate(size, rows.len() as u64);
        let shard = load(
            &conn,
            budget.reserve(estimate).expect("r"),
            size,
            rows.len() as u64,
            true,
        )
        .expect("load");
        check(&shard.index, &rows, &[vec![0xff; 8999], vec![0xfd]]);
        assert!(
            shard.bytes() <= estimate,
            "{} held, {estimate} estimated",
            shard.bytes()
        );
        assert_eq!(budget.used_bytes(), shard.bytes());
        assert_eq!(budget.shards(), 1);
        drop(shard);
        assert_eq!((budget.used_bytes(), budget.shards()), (0, 0));
    }

    #[test]
    fn keys_or_values_that_are_not_blobs_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let (path, size) = shard_file(dir.path(), &int_rows(3));
        let conn = Connection::open(&path).expect("open");
        conn.execute("INSERT INTO kv VALUES (?1, ?2)", (b"\xff".as_slice(), "text"))
            .expect("a TEXT value");
        let budget = MemoryBudget::new(u64::MAX);
        let e = load(&conn, budget.reserve(estimate(size, 4)).expect("r"), size, 4, false)
            .expect_err("TEXT value")
            .to_string();
        assert!(e.contains("row 4 of kv holds a TEXT value"), "{e}");
        assert_eq!(budget.used_bytes(), 0);

        let other = dir.path().join("other.db");
        let conn = Connection::open(&other).expect("create");
        conn.execute_batch("CREATE TABLE other (a)").expect("ddl");
        let e = load(&conn, budget.reserve(0).expect("r"), 0, 0, false).expect_err("no kv");
        assert!(matches!(e, LoadError::Sqlite(_)), "{e:?}");
    }
}
