//! A chunk: rows of one shard in memory, keys and values in one buffer
//! with a small index entry per row, reserved from the run's memory budget
//! as it grows; sorted by key (each key's last row kept) once sealed.

use sf_manifest::{DbId, KeyEncoding};

use crate::build::backend::{DuplicatePolicy, show_key};
use crate::error::{Error, Result};
use crate::route::budget::Reservation;

/// First room a chunk takes for keys and values, and for index entries.
pub(crate) const FIRST_DATA_BYTES: usize = 512;
pub(crate) const FIRST_ROWS: usize = 8;
/// Memory one row's index entry takes.
pub(crate) const ROW_BYTES: usize = std::mem::size_of::<RowRef>();

/// One row of a chunk: where its key and value are, and the key's first
/// 8 bytes (big endian, zero padded), which settle most comparisons.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowRef {
    pub(crate) prefix: u64,
    off: u32,
    klen: u32,
    vlen: u32,
}

pub(crate) fn key_prefix(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(bytes)
}

/// Rows of one shard in memory: keys and values in one buffer, an entry
/// per row; in arrival order until sorted.
#[derive(Debug)]
pub struct Chunk {
    pub(crate) data: Vec<u8>,
    pub(crate) rows: Vec<RowRef>,
    /// Arrival rank among the collector's chunks and spills.
    pub(crate) seq: u64,
    sorted: bool,
    /// Rows dropped by sorting, not yet counted by the shard.
    pub(crate) duplicates: u64,
    pub(crate) reservation: Reservation,
}

impl Chunk {
    pub(crate) fn new(seq: u64, reservation: Reservation) -> Self {
        Chunk {
            data: Vec::new(),
            rows: Vec::new(),
            seq,
            sorted: false,
            duplicates: 0,
            reservation,
        }
    }

    pub(crate) fn held(&self) -> usize {
        self.data.capacity() + self.rows.capacity() * ROW_BYTES
    }

    pub(crate) fn key(&self, r: &RowRef) -> &[u8] {
        let off = r.off as usize;
        &self.data[off..off + r.klen as usize]
    }

    pub(crate) fn value(&self, r: &RowRef) -> &[u8] {
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
    pub(crate) fn growth(&self, bytes: usize, cap: usize) -> Option<(usize, usize)> {
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

    pub(crate) fn resize(&mut self, data_cap: usize, rows_cap: usize) {
        self.data.reserve_exact(data_cap - self.data.len());
        self.rows.reserve_exact(rows_cap - self.rows.len());
    }

    pub(crate) fn append(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
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

pub(crate) fn duplicate_error(db_id: DbId, key: &[u8], encoding: KeyEncoding) -> Error {
    Error::DuplicateKey {
        db_id,
        key: show_key(key, encoding),
    }
}
