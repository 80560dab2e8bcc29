//! `runs/<ts>_run_id=<R>_<nonce>/run.yaml`: a run's own record of its state
//! (`running` with a heartbeat lease, then `succeeded` or `failed`).
//!
//! The file is a flat YAML mapping with sorted keys, as the reference writes
//! it; the codec here reads and writes exactly that subset of YAML.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};
use crate::format::ids::{RunId, Timestamp};
use crate::format::manifest::{DB_PATH_TEMPLATE, SHARD_PREFIX};

/// `run.yaml` `format_version`.
pub const RUN_RECORD_FORMAT_VERSION: i64 = 1;
/// `writer_type` this build records.
pub const WRITER_TYPE: &str = "shardforge";

/// Lifecycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Writing; the lease is renewed by a heartbeat.
    Running,
    /// Published.
    Succeeded,
    /// Gave up; see `error_type` and `error_message`.
    Failed,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The decoded `run.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The run.
    pub run_id: RunId,
    /// Where it started.
    pub started_at: Timestamp,
    /// Last write of this record.
    pub updated_at: Timestamp,
    /// A `running` record whose lease is past is a run that died.
    pub lease_expires_at: Timestamp,
    /// State.
    pub status: RunStatus,
    /// Prefix URL of the snapshot.
    pub s3_prefix: String,
    /// Manifest the run published, once it has.
    pub manifest_ref: Option<String>,
    /// Error class of a failed run.
    pub error_type: Option<String>,
    /// Error text of a failed run.
    pub error_message: Option<String>,
    /// Who wrote it.
    pub writer_type: String,
    /// What else a reader of the record should know (the gates a forced
    /// publish overrode); written only when there is something.
    pub notes: Option<String>,
}

impl RunRecord {
    /// A `running` record started now, with a lease of `lease`.
    pub fn start(run_id: RunId, s3_prefix: impl Into<String>, lease: std::time::Duration) -> Self {
        let now = Timestamp::now();
        RunRecord {
            run_id,
            started_at: now,
            updated_at: now,
            lease_expires_at: lease_after(now, lease),
            status: RunStatus::Running,
            s3_prefix: s3_prefix.into(),
            manifest_ref: None,
            error_type: None,
            error_message: None,
            writer_type: WRITER_TYPE.to_string(),
            notes: None,
        }
    }

    /// Renews the lease from now.
    pub fn heartbeat(&mut self, lease: std::time::Duration) {
        self.updated_at = Timestamp::now();
        self.lease_expires_at = lease_after(self.updated_at, lease);
    }

    /// Marks the run published.
    pub fn succeed(&mut self, manifest_ref: impl Into<String>) {
        self.status = RunStatus::Succeeded;
        self.manifest_ref = Some(manifest_ref.into());
        self.updated_at = Timestamp::now();
        self.lease_expires_at = self.updated_at;
    }

    /// Marks the run failed.
    pub fn fail(&mut self, error_type: impl Into<String>, message: impl Into<String>) {
        self.status = RunStatus::Failed;
        self.error_type = Some(error_type.into());
        self.error_message = Some(message.into());
        self.updated_at = Timestamp::now();
        self.lease_expires_at = self.updated_at;
    }

    /// The YAML text.
    pub fn to_yaml(&self) -> String {
        let opt = |v: &Option<String>| v.as_deref().map_or_else(|| "null".to_string(), yaml_str);
        let fields: BTreeMap<&str, String> = BTreeMap::from([
            ("db_path_template", yaml_str(DB_PATH_TEMPLATE)),
            ("error_message", opt(&self.error_message)),
            ("error_type", opt(&self.error_type)),
            ("format_version", RUN_RECORD_FORMAT_VERSION.to_string()),
            ("lease_expires_at", yaml_str(&self.lease_expires_at.to_iso())),
            ("manifest_ref", opt(&self.manifest_ref)),
            ("run_id", yaml_str(self.run_id.as_str())),
            ("s3_prefix", yaml_str(&self.s3_prefix)),
            ("shard_prefix", yaml_str(SHARD_PREFIX)),
            ("started_at", yaml_str(&self.started_at.to_iso())),
            ("status", yaml_str(self.status.as_str())),
            ("updated_at", yaml_str(&self.updated_at.to_iso())),
            ("writer_type", yaml_str(&self.writer_type)),
        ]);
        let mut fields = fields;
        if let Some(n) = &self.notes {
            fields.insert("notes", yaml_str(n));
        }
        let mut out = String::new();
        for (k, v) in fields {
            out.push_str(k);
            out.push_str(": ");
            out.push_str(&v);
            out.push('\n');
        }
        out
    }

    /// Decodes `run.yaml`; `location` names the object in errors.
    pub fn from_yaml(text: &str, location: &str) -> Result<Self> {
        let bad = |reason: String| Error::corrupt("run record", location, reason);
        let mut map: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| bad(format!("line {}: expected `key: value`", n + 1)))?;
            let value = parse_scalar(v.trim()).map_err(|e| bad(format!("line {}: {e}", n + 1)))?;
            map.insert(k.trim().to_string(), value);
        }
        let get = |k: &str| map.get(k).cloned().flatten();
        let need = |k: &str| get(k).ok_or_else(|| bad(format!("missing {k}")));
        let ts = |k: &str| -> Result<Timestamp> { Timestamp::parse(&need(k)?).map_err(|e| bad(format!("{k}: {e}"))) };
        let status = match need("status")?.as_str() {
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            other => return Err(bad(format!("unknown status {other:?}"))),
        };
        Ok(RunRecord {
            run_id: RunId::new(need("run_id")?).map_err(|e| bad(e.to_string()))?,
            started_at: ts("started_at")?,
            updated_at: ts("updated_at")?,
            lease_expires_at: ts("lease_expires_at")?,
            status,
            s3_prefix: need("s3_prefix")?,
            manifest_ref: get("manifest_ref"),
            error_type: get("error_type"),
            error_message: get("error_message"),
            writer_type: get("writer_type").unwrap_or_default(),
            notes: get("notes"),
        })
    }
}

fn lease_after(t: Timestamp, lease: std::time::Duration) -> Timestamp {
    let micros = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
    Timestamp::from_micros(t.as_micros().saturating_add(micros)).unwrap_or(t)
}

/// A YAML scalar for a string: plain when that reads back as the same
/// string, single-quoted for timestamps (as PyYAML does), double-quoted
/// with JSON escapes otherwise.
fn yaml_str(s: &str) -> String {
    let looks_like_time = s.len() >= 10 && s.as_bytes()[4] == b'-' && s[..4].bytes().all(|b| b.is_ascii_digit());
    let plain_safe = !s.is_empty()
        && !matches!(
            s,
            "null" | "Null" | "NULL" | "~" | "true" | "false" | "yes" | "no" | "on" | "off"
        )
        && s.parse::<f64>().is_err()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-./=:{}".contains(c))
        && !s.starts_with(|c: char| "-{}:".contains(c))
        && !s.contains(": ");
    if looks_like_time && !s.contains('\'') {
        format!("'{s}'")
    } else if plain_safe {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("strings always encode")
    }
}

fn parse_scalar(v: &str) -> std::result::Result<Option<String>, String> {
    if v.is_empty() || v == "null" || v == "~" {
        return Ok(None);
    }
    if let Some(inner) = v.strip_prefix('\'') {
        let inner = inner.strip_suffix('\'').ok_or("unterminated single quote")?;
        return Ok(Some(inner.replace("''", "'")));
    }
    if v.starts_with('"') {
        return serde_json::from_str::<String>(v)
            .map(Some)
            .map_err(|e| format!("bad double-quoted string: {e}"));
    }
    Ok(Some(v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "db_path_template: db={db_id:05d}
error_message: null
error_type: null
format_version: 1
lease_expires_at: '2026-11-20T23:48:07.171601Z'
manifest_ref: s3://golden/hash_int/manifests/2026-11-20T23:48:07.144348Z_run_id=goldenrun0001/manifest
run_id: goldenrun0001
s3_prefix: s3://golden/hash_int
shard_prefix: shards
started_at: '2026-11-20T23:48:06.983905Z'
status: succeeded
updated_at: '2026-11-20T23:48:07.171601Z'
writer_type: python
";

    #[test]
    fn reads_and_rewrites_the_reference_record_byte_for_byte() {
        let r = RunRecord::from_yaml(FIXTURE, "run.yaml").expect("parse");
        assert_eq!(r.status, RunStatus::Succeeded);
        assert_eq!(r.run_id.as_str(), "goldenrun0001");
        assert_eq!(r.started_at.to_iso(), "2026-11-20T23:48:06.983905Z");
        assert_eq!(r.to_yaml(), FIXTURE);
    }

    #[test]
    fn awkward_messages_round_trip() {
        let mut r = RunRecord::start(
            RunId::new("r1").expect("id"),
            "file:///tmp/x y",
            std::time::Duration::from_secs(60),
        );
        r.fail("data", "row 3: key 'a': null\nsecond line: \"quoted\" é");
        r.notes = Some("forced past gates: min_rows (0 < 1)".into());
        let text = r.to_yaml();
        let back = RunRecord::from_yaml(&text, "x").expect("parse");
        assert_eq!(back, r);
        assert!(back.lease_expires_at >= back.started_at);
    }
}
