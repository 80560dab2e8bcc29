//! Shard checksums as our writer records them in `writer_info["checksum"]`:
//!
//! - `xxh3_128:<32 hex>`: xxh3-128 of the bytes of a SQLite `shard.db`;
//! - `xxh3_128-kv:<32 hex>`: xxh3-128 of a SlateDB shard's rows in key
//!   order, each as (u32 LE key length, key, u32 LE value length, value).
//!
//! The hex is the u128 digest, big-endian, lowercase. Shards of other
//! writers (the reference's) carry none, and are not verified.

use xxhash_rust::xxh3::Xxh3;

/// Prefix of a file checksum.
pub const FILE_ALGORITHM: &str = "xxh3_128";
/// Prefix of a key-value stream checksum.
pub const KV_ALGORITHM: &str = "xxh3_128-kv";

/// What a checksum covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coverage {
    /// The bytes of a file.
    File,
    /// The ordered key-value stream.
    Kv,
}

/// A checksum recorded in a manifest, split into what it covers and its hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) coverage: Coverage,
    pub(crate) text: String,
}

impl Recorded {
    /// Reads `algorithm:hex`; `None` for algorithms this build does not know
    /// (a newer writer's), which are then not verified.
    pub(crate) fn parse(text: &str) -> Option<Recorded> {
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
pub(crate) fn file_checksum(h: &Xxh3) -> String {
    format!("{FILE_ALGORITHM}:{:032x}", h.digest128())
}

/// Streams key-value records into a `xxh3_128-kv` checksum.
#[derive(Default)]
pub(crate) struct KvHasher(Xxh3);

impl KvHasher {
    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) {
        // Lengths are u32 by the convention; shard keys and values are far
        // below 4 GiB (SlateDB caps them much lower).
        self.0.update(&(key.len() as u32).to_le_bytes());
        self.0.update(key);
        self.0.update(&(value.len() as u32).to_le_bytes());
        self.0.update(value);
    }

    pub(crate) fn finish(&self) -> String {
        format!("{KV_ALGORITHM}:{:032x}", self.0.digest128())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
