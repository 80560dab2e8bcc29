//! The canary gate: keys read back through the online reader from a
//! build's new shards, before anything is published.
//!
//! It lives here, above both the writer (which runs it as a
//! [`PublishCheck`]) and the reader (which it reads through), so neither
//! of those crates learns about the other.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sf_manifest::{Manifest, ManifestStore, ObjectManifestStore, StorageOptions};
use sf_reader::{Reader, ReaderSettings};
use sf_writer::publish::gates::{OnFail, PublishCheck, measured};
use sf_writer::publish::verdict::GateResult;

/// `[validate] canary`: a file of keys read back before the flip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// The file, relative to the job file: a key per line, or JSON lines
    /// `{"key": 42, "value": "...", "ctx": {"region": "eu"}}` (`value` and
    /// `ctx` optional; `hex:` values compare as bytes).
    pub path: PathBuf,
    /// `fail` (default) or `warn`.
    #[serde(default)]
    pub on_fail: OnFail,
}

/// One canary key: its text (as `sf-read` takes it), what its value must
/// be, and its routing context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryKey {
    /// The key as text (`hex:` for raw bytes).
    pub key: String,
    /// The value it must have (`hex:` for bytes), or `None`: just present.
    pub value: Option<String>,
    /// `column=value` pairs for CEL snapshots routed by other columns.
    pub ctx: Vec<String>,
}

/// Reads a canary file: a key per line, or JSON lines
/// `{"key": 42, "value": "...", "ctx": {"region": "eu"}}`. Blank lines and
/// lines starting with `#` are skipped.
pub fn read_canary(path: &Path) -> sf_writer::Result<Vec<CanaryKey>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        sf_writer::Error::config("validate.canary.path", format!("cannot read {}: {e}", path.display()))
    })?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_end_matches('\r');
        if t.trim().is_empty() || t.trim_start().starts_with('#') {
            continue;
        }
        if !t.trim_start().starts_with('{') {
            keys.push(CanaryKey {
                key: t.to_string(),
                value: None,
                ctx: Vec::new(),
            });
            continue;
        }
        let bad = |why: String| sf_writer::Error::config(format!("validate.canary {}:{}", path.display(), n + 1), why);
        let v: serde_json::Value = serde_json::from_str(t).map_err(|e| bad(format!("not JSON: {e}")))?;
        let text_of = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        let key = v
            .get("key")
            .and_then(text_of)
            .ok_or_else(|| bad("needs \"key\"".into()))?;
        let value = match v.get("value") {
            None | Some(serde_json::Value::Null) => None,
            Some(x) => Some(text_of(x).ok_or_else(|| bad("\"value\" must be text or a number".into()))?),
        };
        let mut ctx = Vec::new();
        if let Some(c) = v.get("ctx") {
            let obj = c.as_object().ok_or_else(|| bad("\"ctx\" must be an object".into()))?;
            for (k, x) in obj {
                ctx.push(format!(
                    "{k}={}",
                    text_of(x).ok_or_else(|| bad(format!("ctx.{k} must be a scalar")))?
                ));
            }
        }
        keys.push(CanaryKey { key, value, ctx });
    }
    if keys.is_empty() {
        return Err(sf_writer::Error::config(
            "validate.canary.path",
            format!("{} holds no keys", path.display()),
        ));
    }
    Ok(keys)
}

/// The canary as a [`PublishCheck`].
#[derive(Debug, Clone)]
pub struct CanaryCheck {
    path: PathBuf,
    on_fail: OnFail,
    storage: StorageOptions,
    cache_dir: Option<PathBuf>,
}

impl CanaryCheck {
    /// The check `config` asks for, reading with `storage` options.
    pub fn new(config: &CanaryConfig, storage: StorageOptions) -> Self {
        CanaryCheck {
            path: config.path.clone(),
            on_fail: config.on_fail,
            storage,
            cache_dir: None,
        }
    }

    /// Where the reader caches the shards it downloads (default: the
    /// reader's own).
    pub fn with_cache_dir(mut self, dir: PathBuf) -> Self {
        self.cache_dir = Some(dir);
        self
    }
}

fn matches(expected: &str, found: &[u8]) -> bool {
    match expected.strip_prefix("hex:") {
        Some(h) => hex_decode(h).is_some_and(|b| b == found),
        None => expected.as_bytes() == found,
    }
}

fn hex_decode(h: &str) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

#[async_trait]
impl PublishCheck for CanaryCheck {
    async fn check(&self, manifest: &Manifest, store: &ObjectManifestStore) -> sf_writer::Result<Vec<GateResult>> {
        let keys = read_canary(&self.path)?;
        let current = sf_manifest::format::layout::join_url(store.prefix_url(), sf_manifest::format::layout::CURRENT);
        let settings = ReaderSettings {
            cache_dir: self.cache_dir.clone(),
            ..ReaderSettings::default()
        };
        let unpublished = format!("{} (not yet published)", store.prefix_url());
        let read_err = |e: sf_reader::Error| sf_writer::Error::engine_caused(format!("canary: {e}"), e);
        let reader = Reader::builder(current)
            .with_settings(settings)
            .with_storage_options(self.storage.clone())
            .with_object_store(std::sync::Arc::clone(store.object_store()))
            .with_unpublished_manifest(manifest.clone(), unpublished)
            .build()
            .await
            .map_err(read_err)?;
        let mut wrong = Vec::new();
        for k in &keys {
            let key = reader.parse_key(&k.key).map_err(read_err)?;
            let got = if k.ctx.is_empty() {
                reader.get(&key).await
            } else {
                let ctx = reader
                    .parse_context(k.ctx.iter().map(String::as_str))
                    .map_err(read_err)?;
                reader.get_with_context(&key, &ctx).await
            }
            .map_err(read_err)?;
            match (&got, &k.value) {
                (None, _) => wrong.push(format!("key {}: missing", k.key)),
                (Some(v), Some(want)) if !matches(want, v) => wrong.push(format!(
                    "key {}: value {:?}, expected {want:?}",
                    k.key,
                    sf_manifest::format::sharding::bytes_as_text(v)
                )),
                _ => {}
            }
        }
        reader.close();
        let ok = keys.len() - wrong.len();
        let mut detail = wrong.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
        if wrong.len() > 5 {
            detail.push_str(&format!("; and {} more", wrong.len() - 5));
        }
        Ok(vec![measured(
            "canary",
            format!("{ok} of {} keys as expected", keys.len()),
            format!("all {} keys", keys.len()),
            wrong.is_empty(),
            self.on_fail,
            detail,
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_files_take_plain_keys_and_json_lines() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("canary.txt");
        std::fs::write(
            &path,
            "# nightly canary\n42\n\n{\"key\": 7, \"value\": \"v:7\"}\n{\"key\": \"a\", \"ctx\": {\"region\": \"eu\"}}\n",
        )
        .expect("write");
        let keys = read_canary(&path).expect("read");
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0].key, "42");
        assert_eq!(keys[1].value.as_deref(), Some("v:7"));
        assert_eq!(keys[2].ctx, vec!["region=eu"]);
        std::fs::write(&path, "{\"value\": 1}\n").expect("write");
        let e = read_canary(&path).expect_err("no key");
        assert!(
            e.to_string().contains("canary.txt:1") && e.to_string().contains("key"),
            "{e}"
        );
        assert!(matches("hex:6869", b"hi") && matches("hi", b"hi") && !matches("hex:zz", b"hi"));
    }
}
