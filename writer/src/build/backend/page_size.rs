//! `output.sqlite.page_size`: a fixed page size, or one chosen per shard
//! from the sizes of the rows it stores (`"auto"`).
//!
//! The rule is the reference library's (`recommend_page_size`): the
//! smallest of 4, 8, 16, 32 and 64 KiB whose largest local payload of an
//! index cell, `X = (U - 12) * 64 / 255 - 23`, holds the shard's
//! 95th-percentile value (nearest rank over every stored row) plus its
//! longest key plus 12 bytes of cell overhead; 64 KiB when none does. A
//! row that fits is stored whole in its leaf cell: no overflow chain,
//! one page per lookup.
//!
//! The reference measures a shard after writing it through SQLite and
//! rewrites it (`VACUUM`) when another size wins. The page writer needs
//! the size before its first page, so the build measures first: one pass
//! over the shard's rows as they will be stored (duplicates already
//! dropped), counting sizes into a [`SizeStats`], then the pages.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The page sizes `"auto"` chooses from, smallest first (the reference's).
pub const AUTO_PAGE_SIZES: [u32; 5] = [4096, 8192, 16384, 32768, 65536];

/// Per-cell bytes the reference adds to key and value (varints of the
/// cell and record headers, with slack).
const CELL_OVERHEAD_BYTES: u64 = 12;

/// Share of rows whose values should fit in their cell.
const PERCENTILE: f64 = 0.95;

/// Values longer than this fit no page size: counted together.
const LARGEST_FITTING: usize = 16_422;

/// How `output.sqlite.page_size` is set: a number of bytes, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    /// Every shard has pages of this many bytes (512..=65536, a power of
    /// two).
    Fixed(u32),
    /// Each shard's size is chosen from its rows; see the
    /// [module docs](self).
    Auto,
}

impl Default for PageSize {
    fn default() -> Self {
        PageSize::Fixed(4096)
    }
}

impl PageSize {
    /// The value recorded in the manifest: the number, or `"auto"` (how the
    /// reference records its setting).
    pub fn manifest_value(self) -> serde_json::Value {
        match self {
            PageSize::Fixed(n) => serde_json::Value::from(n),
            PageSize::Auto => serde_json::Value::from("auto"),
        }
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageSize::Fixed(n) => write!(f, "{n}"),
            PageSize::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for PageSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PageSize::Fixed(n) => s.serialize_u32(*n),
            PageSize::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for PageSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PageSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a page size in bytes or \"auto\"")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<PageSize, E> {
                u32::try_from(n)
                    .map(PageSize::Fixed)
                    .map_err(|_| E::custom(format!("{n} is not a power of two between 512 and 65536")))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<PageSize, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format!("{n} is not a power of two between 512 and 65536")))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PageSize, E> {
                match s {
                    "auto" => Ok(PageSize::Auto),
                    _ => Err(E::custom(format!("{s:?}: expected a number of bytes or \"auto\""))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The sizes of a shard's stored rows, as far as choosing a page size
/// needs them: how many values have each length up to the largest that
/// any page size keeps whole, and the longest key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SizeStats {
    /// `counts[n]`: values of `n` bytes; the last slot counts every longer
    /// value. Grown on demand (short values, short table).
    counts: Vec<u64>,
    rows: u64,
    max_key: u64,
}

impl fmt::Debug for SizeStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SizeStats")
            .field("rows", &self.rows)
            .field("p95_value", &self.p95_value())
            .field("max_key", &self.max_key)
            .finish()
    }
}

impl SizeStats {
    /// Counts one stored row.
    pub fn add(&mut self, key_len: usize, value_len: usize) {
        let slot = value_len.min(LARGEST_FITTING + 1);
        if self.counts.len() <= slot {
            self.counts.resize(slot + 1, 0);
        }
        self.counts[slot] += 1;
        self.rows += 1;
        self.max_key = self.max_key.max(key_len as u64);
    }

    /// Rows counted.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The longest key, in bytes.
    pub fn max_key(&self) -> u64 {
        self.max_key
    }

    /// The 95th-percentile value length (nearest rank, as the reference
    /// computes it), `None` without rows. A value longer than any page
    /// keeps whole is reported as `LARGEST_FITTING + 1`: the choice
    /// is the largest page then, whatever its exact length.
    pub fn p95_value(&self) -> Option<u64> {
        if self.rows == 0 {
            return None;
        }
        // Rank ceil(p * n), 1-based.
        let rank = ((self.rows as f64 * PERCENTILE).ceil() as u64).clamp(1, self.rows);
        let mut seen = 0u64;
        for (len, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(len as u64);
            }
        }
        Some(LARGEST_FITTING as u64 + 1)
    }

    /// The page size for these rows: 4096 for none (an empty shard, as
    /// the reference leaves it).
    pub fn choose(&self) -> u32 {
        match self.p95_value() {
            None => AUTO_PAGE_SIZES[0],
            Some(p95) => recommend(p95, self.max_key),
        }
    }
}

/// Largest payload an index cell keeps whole on pages of `page_size`
/// bytes (no reserved bytes), SQLite's `X`.
pub fn max_local_payload(page_size: u32) -> u64 {
    (u64::from(page_size) - 12) * 64 / 255 - 23
}

/// The reference's `recommend_page_size`: the smallest page size whose
/// cells keep a `value`-byte value with a `key`-byte key whole.
pub fn recommend(value: u64, key: u64) -> u32 {
    let needed = value + key + CELL_OVERHEAD_BYTES;
    AUTO_PAGE_SIZES
        .into_iter()
        .find(|&u| max_local_payload(u) >= needed)
        .unwrap_or(AUTO_PAGE_SIZES[AUTO_PAGE_SIZES.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_sqlites() {
        let x: Vec<u64> = AUTO_PAGE_SIZES.iter().map(|&u| max_local_payload(u)).collect();
        assert_eq!(x, vec![1002, 2030, 4086, 8198, 16422]);
        assert_eq!(LARGEST_FITTING as u64, x[4]);
    }

    #[test]
    fn recommends_as_the_reference_does() {
        // Values computed with shardyfusion.sqlite_page_size.recommend_page_size.
        for (value, key, want) in [
            (0, 0, 4096),
            (926, 64, 4096),
            (927, 64, 8192),
            (1954, 64, 8192),
            (1955, 64, 16384),
            (4010, 64, 16384),
            (4011, 64, 32768),
            (8122, 64, 32768),
            (8123, 64, 65536),
            (16346, 64, 65536),
            (1_000_000, 8, 65536),
        ] {
            assert_eq!(recommend(value, key), want, "value {value}, key {key}");
        }
    }

    #[test]
    fn the_95th_percentile_is_the_nearest_rank() {
        let mut s = SizeStats::default();
        assert_eq!((s.p95_value(), s.choose()), (None, 4096));
        // 21 rows: rank ceil(19.95) = 20, so the second-largest value.
        for n in 0..19 {
            s.add(8, n);
        }
        s.add(8, 3000);
        s.add(8, 100_000);
        assert_eq!(s.p95_value(), Some(3000));
        assert_eq!(s.choose(), 16384);
        assert_eq!(s.max_key(), 8);
        // Values past every page's limit choose the largest page.
        let mut big = SizeStats::default();
        big.add(8, 2_000_000);
        assert_eq!(big.choose(), 65536);
    }

    #[test]
    fn parses_numbers_and_auto() {
        #[derive(Deserialize, Serialize)]
        struct T {
            page_size: PageSize,
        }
        let t: T = toml::from_str("page_size = \"auto\"").expect("auto");
        assert_eq!(t.page_size, PageSize::Auto);
        let t: T = toml::from_str("page_size = 16384").expect("number");
        assert_eq!(t.page_size, PageSize::Fixed(16384));
        assert!(toml::from_str::<T>("page_size = \"big\"").is_err());
        assert!(toml::from_str::<T>("page_size = -1").is_err());
        assert_eq!(
            toml::to_string(&T {
                page_size: PageSize::Auto
            })
            .expect("ser"),
            "page_size = \"auto\"\n"
        );
    }
}
