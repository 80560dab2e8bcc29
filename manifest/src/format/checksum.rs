//! Shard checksums as ShardForge's writer records them in
//! `writer_info["checksum"]` and its reader verifies them:
//!
//! - `xxh3_128:<32 hex>`: xxh3-128 of the bytes of a SQLite `shard.db`;
//! - `xxh3_128-kv:<32 hex>`: xxh3-128 of a SlateDB shard's rows in key
//!   order, each as (u32 LE key length, key, u32 LE value length, value).
//!
//! The hex is the u128 digest, big-endian, lowercase. Shards of other
//! writers (the reference's) carry none, and are not verified.

use std::io::Read;
use std::path::Path;

use xxhash_rust::xxh3::Xxh3;

/// Prefix of a file checksum.
pub const FILE_ALGORITHM: &str = "xxh3_128";
/// Prefix of a key-value stream checksum.
pub const KV_ALGORITHM: &str = "xxh3_128-kv";

/// What a checksum covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// The bytes of a file.
    File,
    /// The ordered key-value stream.
    Kv,
}

/// A checksum recorded in a manifest, split into what it covers and its hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// What it covers.
    pub coverage: Coverage,
    /// `algorithm:hex`, hex in lowercase.
    pub text: String,
}

impl Recorded {
    /// Reads `algorithm:hex`; `None` for algorithms this build does not know
    /// (a newer writer's), which are then not verified.
    pub fn parse(text: &str) -> Option<Recorded> {
        let (algo, hex) = text.split_once(':')?;
        let coverage = match algo {
            FILE_ALGORITHM => Coverage::File,
            KV_ALGORITHM => Coverage::Kv,
            _ => return None,
        };
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Recorded {
            coverage,
            text: format!("{algo}:{}", hex.to_ascii_lowercase()),
        })
    }
}

/// `xxh3_128:<hex>` of a hasher fed with a file's bytes.
pub fn file_checksum(h: &Xxh3) -> String {
    format!("{FILE_ALGORITHM}:{:032x}", h.digest128())
}

/// `xxh3_128:<hex>` of the file at `path`, and its size in bytes.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((file_checksum(&h), size))
}

/// Streams key-value records into a `xxh3_128-kv` checksum.
#[derive(Default)]
pub struct KvHasher {
    hasher: Xxh3,
    rows: u64,
}

impl std::fmt::Debug for KvHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvHasher")
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl KvHasher {
    /// Adds the next row in key order.
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        // Lengths are u32 by the convention; shard keys and values are far
        // below 4 GiB (SlateDB caps them much lower).
        self.hasher.update(&(key.len() as u32).to_le_bytes());
        self.hasher.update(key);
        self.hasher.update(&(value.len() as u32).to_le_bytes());
        self.hasher.update(value);
        self.rows += 1;
    }

    /// Rows added.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The checksum text.
    pub fn finish(&self) -> String {
        format!("{KV_ALGORITHM}:{:032x}", self.hasher.digest128())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kv_hasher_counts_its_rows() {
        let mut h = KvHasher::default();
        assert_eq!(h.rows(), 0);
        h.add(b"a", b"1");
        h.add(b"b", b"2");
        h.add(b"c", b"3");
        assert_eq!(h.rows(), 3);
        assert_eq!(format!("{h:?}"), "KvHasher { rows: 3, .. }");
    }

    #[test]
    fn recorded_checksums_parse() {
        let r = Recorded::parse("xxh3_128:00112233445566778899AABBCCDDEEFF").expect("file");
        assert_eq!(r.coverage, Coverage::File);
        assert_eq!(r.text, "xxh3_128:00112233445566778899aabbccddeeff");
        assert_eq!(
            Recorded::parse("xxh3_128-kv:00112233445566778899aabbccddeeff")
                .expect("kv")
                .coverage,
            Coverage::Kv
        );
        assert!(Recorded::parse("sha256:00").is_none());
        assert!(Recorded::parse("xxh3_128:00").is_none());
        assert!(Recorded::parse("nocolon").is_none());
    }

    #[test]
    fn files_hash_as_their_bytes() {
        let dir = std::env::temp_dir().join(format!("sf-checksum-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("f");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let (sum, size) = hash_file(&path).expect("hash");
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert_eq!(size, bytes.len() as u64);
        let mut h = Xxh3::new();
        h.update(&bytes);
        assert_eq!(sum, file_checksum(&h));
        assert_eq!(sum, format!("xxh3_128:{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes)));
    }

    #[test]
    fn kv_stream_is_framed() {
        // ("ab", "c") and ("a", "bc") must differ: lengths frame the bytes.
        let mut a = KvHasher::default();
        a.add(b"ab", b"c");
        let mut b = KvHasher::default();
        b.add(b"a", b"bc");
        assert_ne!(a.finish(), b.finish());
        let mut h = Xxh3::new();
        h.update(&2u32.to_le_bytes());
        h.update(b"ab");
        h.update(&1u32.to_le_bytes());
        h.update(b"c");
        assert_eq!(a.finish(), format!("xxh3_128-kv:{:032x}", h.digest128()));
    }
}
