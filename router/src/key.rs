//! Canonical key bytes (what routing hashes) and key encodings (what shards store).

use std::borrow::Cow;

use sf_manifest::{Key, KeyEncoding};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};

/// The bytes routing hashes: an integer as 8-byte signed little-endian
/// (so it must fit `i64`), text as UTF-8, bytes as they are.
pub fn canonical_bytes(key: &Key) -> Result<Cow<'_, [u8]>> {
    match key {
        Key::Int(i) => Ok(Cow::Owned(i.to_le_bytes().to_vec())),
        Key::UInt(u) => Err(Error::KeyOutOfRange {
            key: u.to_string(),
            encoding: KeyEncoding::U64Be,
            reason: "integer keys are hashed as signed 64-bit and must be at most 9223372036854775807".into(),
        }),
        Key::Str(s) => Ok(Cow::Borrowed(s.as_bytes())),
        Key::Bytes(b) => Ok(Cow::Borrowed(b.as_slice())),
    }
}

/// `xxh3_64` (seed 0) of a key's canonical bytes: the digest both hash
/// routing and CEL's `shard_hash()` use.
pub fn shard_hash(key: &Key) -> Result<u64> {
    Ok(match key {
        Key::Int(i) => hash_i64(*i),
        other => hash_bytes(&canonical_bytes(other)?),
    })
}

/// `xxh3_64` of an integer's canonical bytes.
#[inline]
pub fn hash_i64(v: i64) -> u64 {
    xxh3_64(&v.to_le_bytes())
}

/// `xxh3_64` of text or bytes.
#[inline]
pub fn hash_bytes(b: &[u8]) -> u64 {
    xxh3_64(b)
}

fn wrong_type(encoding: KeyEncoding, expected: &str, key: &Key) -> Error {
    Error::WrongType {
        what: format!("key for key encoding {encoding}"),
        expected: expected.to_string(),
        found: describe(key),
    }
}

/// A short description of a key for errors: its type and value.
pub fn describe(key: &Key) -> String {
    match key {
        Key::Int(i) => format!("integer {i}"),
        Key::UInt(u) => format!("integer {u}"),
        Key::Str(s) => format!("text {s:?}"),
        // The value too: among the keys of a multi_get, the length alone
        // does not tell the caller which one was refused.
        Key::Bytes(b) => format!("{} bytes {key}", b.len()),
    }
}

/// The bytes a shard stores for `key` under `encoding`.
pub fn encode_key(key: &Key, encoding: KeyEncoding) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_key_into(key, encoding, &mut out)?;
    Ok(out)
}

/// [`encode_key`], appended to `out` (which an error leaves as it was):
/// many keys encoded into one buffer.
pub fn encode_key_into(key: &Key, encoding: KeyEncoding, out: &mut Vec<u8>) -> Result<()> {
    let range = |reason: &str| Error::KeyOutOfRange {
        key: key.to_string(),
        encoding,
        reason: reason.to_string(),
    };
    let bytes: &[u8] = match encoding {
        KeyEncoding::U64Be => match key {
            Key::Int(i) => {
                let u = u64::try_from(*i).map_err(|_| range("u64be keys must be at least 0"))?;
                out.extend_from_slice(&u.to_be_bytes());
                return Ok(());
            }
            Key::UInt(u) => {
                out.extend_from_slice(&u.to_be_bytes());
                return Ok(());
            }
            Key::Bytes(b) if b.len() == 8 => b,
            other => return Err(wrong_type(encoding, "an integer (or 8 bytes)", other)),
        },
        KeyEncoding::U32Be => match key {
            Key::Int(i) => {
                let u = u32::try_from(*i).map_err(|_| range("u32be keys must lie in 0..=4294967295"))?;
                out.extend_from_slice(&u.to_be_bytes());
                return Ok(());
            }
            Key::UInt(_) => return Err(range("u32be keys must lie in 0..=4294967295")),
            Key::Bytes(b) if b.len() == 4 => b,
            other => return Err(wrong_type(encoding, "an integer (or 4 bytes)", other)),
        },
        KeyEncoding::Utf8 => match key {
            Key::Str(s) => s.as_bytes(),
            Key::Bytes(b) => std::str::from_utf8(b)
                .map_err(|_| range("utf8 keys must be valid UTF-8"))?
                .as_bytes(),
            other => return Err(wrong_type(encoding, "text", other)),
        },
        KeyEncoding::Raw => match key {
            Key::Str(s) => s.as_bytes(),
            Key::Bytes(b) => b,
            other => return Err(wrong_type(encoding, "bytes or text", other)),
        },
    };
    out.extend_from_slice(bytes);
    Ok(())
}

/// The key a shard's stored bytes stand for.
pub fn decode_key(bytes: &[u8], encoding: KeyEncoding) -> Result<Key> {
    let bad = |reason: String| Error::KeyOutOfRange {
        key: format!("0x{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        encoding,
        reason,
    };
    match encoding {
        KeyEncoding::U64Be => <[u8; 8]>::try_from(bytes)
            .map(|a| Key::from_u64(u64::from_be_bytes(a)))
            .map_err(|_| bad(format!("{} bytes, expected 8", bytes.len()))),
        KeyEncoding::U32Be => <[u8; 4]>::try_from(bytes)
            .map(|a| Key::Int(i64::from(u32::from_be_bytes(a))))
            .map_err(|_| bad(format!("{} bytes, expected 4", bytes.len()))),
        KeyEncoding::Utf8 => std::str::from_utf8(bytes)
            .map(|s| Key::Str(s.to_string()))
            .map_err(|e| bad(format!("not UTF-8: {e}"))),
        KeyEncoding::Raw => Ok(Key::Bytes(bytes.to_vec())),
    }
}

/// Parses a key typed on a command line: an integer for `u64be`/`u32be`,
/// text for `utf8`, text or `hex:`-prefixed bytes for `raw`.
pub fn parse_key(text: &str, encoding: KeyEncoding) -> Result<Key> {
    let key = match encoding {
        KeyEncoding::U64Be | KeyEncoding::U32Be => {
            let t = text.trim();
            if let Ok(i) = t.parse::<i64>() {
                Key::Int(i)
            } else if let Ok(u) = t.parse::<u64>() {
                Key::UInt(u)
            } else {
                return Err(Error::WrongType {
                    what: format!("key {text:?} for key encoding {encoding}"),
                    expected: "an integer".into(),
                    found: "text".into(),
                });
            }
        }
        KeyEncoding::Utf8 => Key::Str(text.to_string()),
        KeyEncoding::Raw => {
            Key::Bytes(
                sf_manifest::format::sharding::text_as_bytes(text).map_err(|e| Error::WrongType {
                    what: format!("key {text:?}"),
                    expected: "text or hex:<hex digits>".into(),
                    found: e.to_string(),
                })?,
            )
        }
    };
    // Range-check now so the caller hears about it before any I/O.
    encode_key(&key, encoding)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_byte_keys_are_named_by_value() {
        let e = encode_key(&Key::Bytes(vec![0xff, 0x02]), KeyEncoding::U64Be).expect_err("2 bytes for u64be");
        assert!(e.to_string().contains("2 bytes hex:ff02"), "{e}");
    }

    #[test]
    fn encodings_store_what_the_fixtures_store() {
        assert_eq!(
            encode_key(&Key::Int(9), KeyEncoding::U64Be).expect("u64"),
            vec![0, 0, 0, 0, 0, 0, 0, 9]
        );
        assert_eq!(
            encode_key(&Key::Int(9), KeyEncoding::U32Be).expect("u32"),
            vec![0, 0, 0, 9]
        );
        assert_eq!(
            encode_key(&Key::Str("user:7".into()), KeyEncoding::Utf8).expect("utf8"),
            b"user:7".to_vec()
        );
        assert_eq!(
            encode_key(&Key::Bytes(vec![0xff]), KeyEncoding::Raw).expect("raw"),
            vec![0xff]
        );
        assert_eq!(
            encode_key(&Key::UInt(u64::MAX), KeyEncoding::U64Be).expect("max"),
            vec![0xff; 8]
        );
    }

    #[test]
    fn text_and_bytes_hash_to_the_documented_digests() {
        // docs/FORMAT.md's table (the reference's values).
        assert_eq!(
            shard_hash(&Key::Str(String::new())).expect("empty"),
            3244421341483603138
        );
        assert_eq!(
            shard_hash(&Key::Str("user:0".into())).expect("text"),
            9296640054432561966
        );
        assert_eq!(
            shard_hash(&Key::Bytes(b"abc".to_vec())).expect("bytes"),
            8696274497037089104
        );
    }

    #[test]
    fn fixed_width_byte_keys_pass_only_at_their_width() {
        let eight = vec![0, 0, 0, 0, 0, 0, 1, 2];
        assert_eq!(
            encode_key(&Key::Bytes(eight.clone()), KeyEncoding::U64Be).expect("8 bytes"),
            eight
        );
        assert_eq!(
            encode_key(&Key::Bytes(vec![0, 0, 1, 2]), KeyEncoding::U32Be).expect("4 bytes"),
            vec![0, 0, 1, 2]
        );
        assert!(encode_key(&Key::Bytes(vec![1, 2, 3]), KeyEncoding::U32Be).is_err());
        assert!(encode_key(&Key::Bytes(vec![1; 7]), KeyEncoding::U64Be).is_err());
    }

    #[test]
    fn encodings_check_ranges_and_types() {
        let e = encode_key(&Key::Int(-1), KeyEncoding::U64Be).unwrap_err();
        assert!(e.to_string().contains("at least 0"), "{e}");
        assert!(encode_key(&Key::Int(1 << 32), KeyEncoding::U32Be).is_err());
        assert!(encode_key(&Key::Int(u32::MAX as i64), KeyEncoding::U32Be).is_ok());
        assert!(encode_key(&Key::Str("3".into()), KeyEncoding::U64Be).is_err());
        assert!(encode_key(&Key::Int(3), KeyEncoding::Utf8).is_err());
        assert!(encode_key(&Key::Bytes(vec![0xff]), KeyEncoding::Utf8).is_err());
    }

    #[test]
    fn keys_encoded_into_one_buffer_follow_each_other_and_a_refused_one_adds_nothing() {
        let mut buf = vec![0xaa];
        encode_key_into(&Key::Int(258), KeyEncoding::U32Be, &mut buf).expect("u32");
        encode_key_into(&Key::Str("ab".into()), KeyEncoding::Raw, &mut buf).expect("raw");
        assert_eq!(buf, [0xaa, 0, 0, 1, 2, b'a', b'b']);
        for (key, encoding) in [
            (Key::Int(-1), KeyEncoding::U64Be),
            (Key::Int(1 << 32), KeyEncoding::U32Be),
            (Key::Bytes(vec![0xff]), KeyEncoding::Utf8),
            (Key::Int(3), KeyEncoding::Raw),
        ] {
            assert!(encode_key_into(&key, encoding, &mut buf).is_err());
            assert_eq!(buf.len(), 7, "{key:?} under {encoding:?} left bytes behind");
        }
    }

    #[test]
    fn decode_inverts_encode() {
        for (k, e) in [
            (Key::Int(42), KeyEncoding::U64Be),
            (Key::UInt(u64::MAX), KeyEncoding::U64Be),
            (Key::Int(7), KeyEncoding::U32Be),
            (Key::Str("héllo".into()), KeyEncoding::Utf8),
            (Key::Bytes(vec![0, 1, 255]), KeyEncoding::Raw),
        ] {
            assert_eq!(decode_key(&encode_key(&k, e).expect("enc"), e).expect("dec"), k);
        }
        assert!(decode_key(&[1, 2, 3], KeyEncoding::U64Be).is_err());
    }

    #[test]
    fn canonical_bytes_are_signed_little_endian() {
        assert_eq!(
            canonical_bytes(&Key::Int(1)).expect("1").as_ref(),
            &[1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(canonical_bytes(&Key::Int(-1)).expect("-1").as_ref(), &[0xff; 8]);
        assert!(canonical_bytes(&Key::UInt(u64::MAX)).is_err());
    }

    #[test]
    fn command_line_keys_parse_by_encoding() {
        assert_eq!(parse_key("3", KeyEncoding::U64Be).expect("int"), Key::Int(3));
        assert!(
            parse_key("abc", KeyEncoding::U64Be)
                .unwrap_err()
                .to_string()
                .contains("integer")
        );
        assert!(parse_key("-3", KeyEncoding::U64Be).is_err());
        assert_eq!(
            parse_key("user:7", KeyEncoding::Utf8).expect("str"),
            Key::Str("user:7".into())
        );
        assert_eq!(
            parse_key("hex:00ff", KeyEncoding::Raw).expect("hex"),
            Key::Bytes(vec![0, 0xff])
        );
        assert_eq!(
            parse_key("abc", KeyEncoding::Raw).expect("raw text"),
            Key::Bytes(b"abc".to_vec())
        );
        assert!(parse_key("hex:zz", KeyEncoding::Raw).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any text as a key of each encoding: a key that encodes, or an
        /// error quoting the text, never a panic. Text keys are kept as
        /// typed.
        #[test]
        fn any_text_parses_to_an_encodable_key_or_a_clear_error(text in ".{0,40}|hex:[0-9a-fA-Fg]{0,12}|[+-]?[0-9]{1,22}") {
            for encoding in [KeyEncoding::U64Be, KeyEncoding::U32Be, KeyEncoding::Utf8, KeyEncoding::Raw] {
                match parse_key(&text, encoding) {
                    Ok(key) => {
                        proptest::prop_assert!(encode_key(&key, encoding).is_ok());
                        if encoding == KeyEncoding::Utf8 {
                            proptest::prop_assert_eq!(&key, &Key::Str(text.clone()));
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        proptest::prop_assert!(!message.is_empty());
                        proptest::prop_assert!(encoding != KeyEncoding::Utf8, "utf8 takes any text: {}", message);
                    }
                }
            }
        }

        /// Any stored bytes as a key of each encoding: decoded or refused,
        /// never a panic; what decodes encodes back to the same bytes.
        #[test]
        fn any_stored_bytes_decode_or_fail(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16)) {
            for encoding in [KeyEncoding::U64Be, KeyEncoding::U32Be, KeyEncoding::Utf8, KeyEncoding::Raw] {
                if let Ok(key) = decode_key(&bytes, encoding) {
                    proptest::prop_assert_eq!(encode_key(&key, encoding).expect("encode"), bytes.clone());
                }
            }
        }
    }
}
