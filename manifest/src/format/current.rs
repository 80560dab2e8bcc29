//! `_CURRENT`: the one mutable object of a snapshot prefix, pointing at the
//! manifest readers should serve.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::ids::{RunId, Timestamp};
use crate::format::json::{JsonStyle, to_sorted_string};
use crate::format::manifest::MANIFEST_CONTENT_TYPE;

/// `_CURRENT.format_version` this build writes.
pub const CURRENT_FORMAT_VERSION: i64 = 1;

/// The decoded `_CURRENT` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentPointer {
    /// Always 1.
    pub format_version: i64,
    /// Content type of the manifest (`application/x-sqlite3`).
    pub manifest_content_type: String,
    /// Full URL of the manifest object.
    pub manifest_ref: String,
    /// Run that built the manifest.
    pub run_id: RunId,
    /// When `_CURRENT` was written.
    pub updated_at: Timestamp,
}

impl CurrentPointer {
    /// A pointer at `manifest_ref`, stamped now.
    pub fn new(manifest_ref: impl Into<String>, run_id: RunId) -> Self {
        CurrentPointer {
            format_version: CURRENT_FORMAT_VERSION,
            manifest_content_type: MANIFEST_CONTENT_TYPE.to_string(),
            manifest_ref: manifest_ref.into(),
            run_id,
            updated_at: Timestamp::now(),
        }
    }

    /// Compact sorted-key JSON, as the reference writes it.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let v = serde_json::to_value(self).expect("pointer is plain data");
        to_sorted_string(&v, JsonStyle::Compact).into_bytes()
    }

    /// Decodes `_CURRENT`; `location` names the object in errors.
    pub fn from_json_bytes(bytes: &[u8], location: &str) -> Result<Self> {
        let p: CurrentPointer = serde_json::from_slice(bytes).map_err(|e| Error::corrupt("_CURRENT", location, e))?;
        if p.format_version != CURRENT_FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "_CURRENT",
                location: location.to_string(),
                found: p.format_version,
                supported: CURRENT_FORMAT_VERSION,
            });
        }
        if p.manifest_content_type != MANIFEST_CONTENT_TYPE {
            return Err(Error::corrupt(
                "_CURRENT",
                location,
                format!(
                    "manifest_content_type {:?} is not {MANIFEST_CONTENT_TYPE:?}",
                    p.manifest_content_type
                ),
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_reference_bytes() {
        let text = br#"{"format_version":1,"manifest_content_type":"application/x-sqlite3","manifest_ref":"s3://bucket/prefix/manifests/2026-11-20T23:48:07.694769Z_run_id=r5/manifest","run_id":"r5","updated_at":"2026-11-20T23:48:07.699007Z"}"#;
        let p = CurrentPointer::from_json_bytes(text, "mem").expect("parse");
        assert_eq!(p.run_id.as_str(), "r5");
        assert_eq!(p.to_json_bytes(), text.to_vec());
    }

    #[test]
    fn rejects_garbage_and_other_versions() {
        let e = CurrentPointer::from_json_bytes(b"not json", "s3://b/p/_CURRENT").unwrap_err();
        assert!(e.to_string().contains("s3://b/p/_CURRENT"), "{e}");
        let v2 = br#"{"format_version":2,"manifest_content_type":"application/x-sqlite3","manifest_ref":"x","run_id":"r","updated_at":"2026-11-20T23:48:07.699007Z"}"#;
        assert!(
            CurrentPointer::from_json_bytes(v2, "x")
                .unwrap_err()
                .to_string()
                .contains("format_version 2")
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any bytes as `_CURRENT`: a pointer or an error naming the
        /// object, never a panic.
        #[test]
        fn any_bytes_as_current_decode_or_fail_naming_the_object(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Err(e) = CurrentPointer::from_json_bytes(&bytes, "mem://p/_CURRENT") {
                proptest::prop_assert!(e.to_string().contains("mem://p/_CURRENT"), "{}", e);
            }
        }

        /// Real `_CURRENT` text with one byte changed or the text cut:
        /// decoded or refused, never a panic.
        #[test]
        fn mutated_current_decodes_or_fails(at in 0usize..400, byte in proptest::prelude::any::<u8>(), cut in proptest::prelude::any::<bool>()) {
            let mut text = br#"{"format_version":1,"manifest_content_type":"application/x-sqlite3","manifest_ref":"s3://bucket/prefix/manifests/2026-11-20T23:48:07.694769Z_run_id=r5/manifest","run_id":"r5","updated_at":"2026-11-20T23:48:07.699007Z"}"#.to_vec();
            let at = at % text.len();
            if cut { text.truncate(at) } else { text[at] = byte }
            if let Err(e) = CurrentPointer::from_json_bytes(&text, "mem://p/_CURRENT") {
                proptest::prop_assert!(e.to_string().contains("mem://p/_CURRENT"), "{}", e);
            }
        }
    }
}
