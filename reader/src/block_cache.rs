//! A byte-bounded LRU of fixed-size blocks of remote files, shared by every
//! range-mode shard of a reader.
//!
//! SQLite keeps its own small page cache per connection; this one sits
//! below it, so pages fetched by one connection serve every connection and
//! every snapshot that reads the same file.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;

/// (file id, block index)
pub(crate) type BlockKey = (u64, u64);

#[derive(Debug, Default)]
struct Lru {
    blocks: HashMap<BlockKey, (Bytes, u64)>,
    by_age: BTreeMap<u64, BlockKey>,
    bytes: u64,
    tick: u64,
}

/// The cache; see the module docs.
#[derive(Debug)]
pub(crate) struct BlockCache {
    capacity: u64,
    lru: Mutex<Lru>,
}

impl BlockCache {
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        BlockCache {
            capacity: capacity_bytes,
            lru: Mutex::new(Lru::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // A panic while holding the lock leaves plain data behind; the
        // cache stays usable.
        sf_manifest::sync::lock(&self.lru)
    }

    /// The block, marked as just used.
    pub(crate) fn get(&self, key: BlockKey) -> Option<Bytes> {
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        let (data, old) = {
            let entry = lru.blocks.get_mut(&key)?;
            let old = std::mem::replace(&mut entry.1, tick);
            (entry.0.clone(), old)
        };
        lru.by_age.remove(&old);
        lru.by_age.insert(tick, key);
        Some(data)
    }

    /// Adds a block, evicting the least recently used ones beyond capacity.
    pub(crate) fn insert(&self, key: BlockKey, data: Bytes) {
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        let size = data.len() as u64;
        if let Some((old, old_tick)) = lru.blocks.insert(key, (data, tick)) {
            lru.bytes -= old.len() as u64;
            lru.by_age.remove(&old_tick);
        }
        lru.bytes += size;
        lru.by_age.insert(tick, key);
        while lru.bytes > self.capacity {
            let Some((_, victim)) = lru.by_age.pop_first() else {
                break;
            };
            if let Some((old, _)) = lru.blocks.remove(&victim) {
                lru.bytes -= old.len() as u64;
            }
        }
    }

    /// Drops every block of one file (its shard was closed).
    pub(crate) fn forget_file(&self, file: u64) {
        let mut lru = self.lock();
        let victims: Vec<(u64, BlockKey)> = lru
            .by_age
            .iter()
            .filter(|(_, k)| k.0 == file)
            .map(|(t, k)| (*t, *k))
            .collect();
        for (tick, key) in victims {
            lru.by_age.remove(&tick);
            if let Some((old, _)) = lru.blocks.remove(&key) {
                lru.bytes -= old.len() as u64;
            }
        }
    }

    /// Bytes held.
    pub(crate) fn used_bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let c = BlockCache::new(3 * 4);
        for i in 0..3 {
            c.insert((1, i), Bytes::from(vec![i as u8; 4]));
        }
        assert!(c.get((1, 0)).is_some(), "touch block 0");
        c.insert((1, 3), Bytes::from(vec![3; 4]));
        assert!(c.get((1, 1)).is_none(), "block 1 was least recently used");
        assert!(c.get((1, 0)).is_some());
        assert!(c.get((1, 3)).is_some());
        assert_eq!(c.used_bytes(), 12);
        c.insert((2, 0), Bytes::from(vec![9; 4]));
        c.forget_file(1);
        assert_eq!(c.used_bytes(), 4);
        assert!(c.get((2, 0)).is_some());
    }
}
