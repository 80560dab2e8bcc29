//! Object keys under a snapshot prefix (docs/FORMAT.md, "Layout under a prefix").
//!
//! ```text
//! <prefix>/_CURRENT
//! <prefix>/manifests/<UTC %Y-%m-%dT%H:%M:%S.%6fZ>_run_id=<run_id>/manifest
//! <prefix>/runs/<start ts>_run_id=<run_id>_<32 hex>/run.yaml
//! <prefix>/shards/run_id=<run_id>/db=<db_id:05>/attempt=<attempt:02>/...
//! ```
//!
//! Keys here are relative to the prefix, `/`-separated, and pure strings;
//! joining them to a store path or URL is the caller's business.

use crate::error::{Error, Result};
use crate::format::ids::{Attempt, DbId, RunId, Timestamp};

/// Key of the pointer object.
pub const CURRENT: &str = "_CURRENT";
/// Folder of manifests.
pub const MANIFESTS: &str = "manifests";
/// Folder of run records.
pub const RUNS: &str = "runs";
/// Folder of shard data.
pub const SHARDS: &str = "shards";
/// File name of a manifest inside its folder.
pub const MANIFEST_FILE: &str = "manifest";
/// File name of a run record inside its folder.
pub const RUN_RECORD_FILE: &str = "run.yaml";
/// File name of a SQLite shard inside its attempt folder.
pub const SQLITE_SHARD_FILE: &str = "shard.db";
/// The marker that claims an attempt folder, created if absent before
/// anything else is written there. It names the build that claimed it
/// (`build_id`), so a build deletes only attempts it claimed itself.
pub const CLAIM_FILE: &str = "_claim.json";

/// `manifests/<ts>_run_id=<R>/manifest`
pub fn manifest_key(published_at: Timestamp, run_id: &RunId) -> String {
    format!(
        "{MANIFESTS}/{}/{MANIFEST_FILE}",
        manifest_dir_name(published_at, run_id)
    )
}

/// `<ts>_run_id=<R>`, the folder name of a manifest.
pub fn manifest_dir_name(published_at: Timestamp, run_id: &RunId) -> String {
    format!("{}_run_id={run_id}", published_at.to_iso())
}

/// Parses a manifest folder name back into its timestamp and run id.
pub fn parse_manifest_dir_name(name: &str) -> Option<(Timestamp, RunId)> {
    let (ts, run) = name.split_once("_run_id=")?;
    Some((Timestamp::parse(ts).ok()?, RunId::new(run).ok()?))
}

/// `runs/<ts>_run_id=<R>_<nonce>/run.yaml`; `nonce` is 32 hex digits.
pub fn run_record_key(started_at: Timestamp, run_id: &RunId, nonce: &str) -> String {
    format!(
        "{RUNS}/{}_run_id={run_id}_{nonce}/{RUN_RECORD_FILE}",
        started_at.to_iso()
    )
}

/// `shards/run_id=<R>`, the folder of all of a run's shard data.
pub fn run_shards_key(run_id: &RunId) -> String {
    format!("{SHARDS}/run_id={run_id}")
}

/// `shards/run_id=<R>/db=<NNNNN>`
pub fn shard_db_key(run_id: &RunId, db_id: DbId) -> String {
    format!("{}/db={:05}", run_shards_key(run_id), db_id.0)
}

/// `shards/run_id=<R>/db=<NNNNN>/attempt=<AA>`
pub fn shard_attempt_key(run_id: &RunId, db_id: DbId, attempt: Attempt) -> String {
    format!("{}/attempt={:02}", shard_db_key(run_id, db_id), attempt.0)
}

/// The parts of a key inside `shards/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardKeyParts {
    /// `run_id=` part.
    pub run_id: RunId,
    /// `db=` part, if the key goes that deep.
    pub db_id: Option<DbId>,
    /// `attempt=` part, if the key goes that deep.
    pub attempt: Option<Attempt>,
}

/// Parses `shards/run_id=R[/db=N[/attempt=A[/...]]]`.
pub fn parse_shard_key(key: &str) -> Option<ShardKeyParts> {
    let mut parts = key.split('/');
    if parts.next()? != SHARDS {
        return None;
    }
    let run_id = RunId::new(parts.next()?.strip_prefix("run_id=")?).ok()?;
    let db_id = match parts.next() {
        Some(p) => Some(DbId(p.strip_prefix("db=")?.parse().ok()?)),
        None => None,
    };
    let attempt = match parts.next() {
        Some(p) if db_id.is_some() => Some(Attempt(p.strip_prefix("attempt=")?.parse().ok()?)),
        Some(_) => return None,
        None => None,
    };
    Some(ShardKeyParts { run_id, db_id, attempt })
}

/// Joins a prefix URL and a relative key with exactly one `/`.
pub fn join_url(prefix_url: &str, key: &str) -> String {
    let p = prefix_url.trim_end_matches('/');
    let k = key.trim_start_matches('/');
    if k.is_empty() {
        p.to_string()
    } else {
        format!("{p}/{k}")
    }
}

/// The key of `url` relative to `prefix_url`, if `url` lies under it.
pub fn relative_key<'a>(prefix_url: &str, url: &'a str) -> Option<&'a str> {
    let p = prefix_url.trim_end_matches('/');
    let rest = url.strip_prefix(p)?;
    if rest.is_empty() {
        return Some("");
    }
    rest.strip_prefix('/')
}

/// Where a stored URL (a `manifest_ref` or `db_url`) lives relative to a
/// snapshot prefix.
///
/// A URL under the prefix maps to its relative key. A URL under the prefix
/// the snapshot was written at (`written_prefix`, the manifest's
/// `s3_prefix`) is rebased: a snapshot copied to another bucket or folder
/// stays readable. Anything else is an error naming both.
pub fn locate(prefix_url: &str, written_prefix: Option<&str>, url: &str) -> Result<String> {
    if let Some(k) = relative_key(prefix_url, url) {
        return Ok(k.to_string());
    }
    if let Some(k) = written_prefix.and_then(|w| relative_key(w, url)) {
        return Ok(k.to_string());
    }
    // A manifest_ref names its own layout: `<p>/manifests/<dir>/manifest`.
    if let Some(idx) = url.rfind(&format!("/{MANIFESTS}/")) {
        let tail = &url[idx + 1..];
        if tail.ends_with(&format!("/{MANIFEST_FILE}")) && tail.matches('/').count() == 2 {
            return Ok(tail.to_string());
        }
    }
    Err(Error::invalid(
        "object reference",
        format!("{url:?} lies outside the snapshot prefix {prefix_url:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_reference_shape() {
        let run = RunId::new("goldenrun0005").expect("id");
        let ts = Timestamp::parse("2026-11-20T23:48:07.694769Z").expect("ts");
        assert_eq!(
            manifest_key(ts, &run),
            "manifests/2026-11-20T23:48:07.694769Z_run_id=goldenrun0005/manifest"
        );
        assert_eq!(
            shard_attempt_key(&run, DbId(3), Attempt(0)),
            "shards/run_id=goldenrun0005/db=00003/attempt=00"
        );
        assert_eq!(
            run_record_key(ts, &run, "0cdee0f5478d4eff9a3c4b4d32f23f7b"),
            "runs/2026-11-20T23:48:07.694769Z_run_id=goldenrun0005_0cdee0f5478d4eff9a3c4b4d32f23f7b/run.yaml"
        );
        let (t, r) = parse_manifest_dir_name("2026-11-20T23:48:07.694769Z_run_id=goldenrun0005").expect("parse");
        assert_eq!((t, r), (ts, run.clone()));
        assert!(parse_manifest_dir_name("garbage").is_none());
    }

    #[test]
    fn shard_keys_parse_at_every_depth() {
        let p = parse_shard_key("shards/run_id=r1/db=00012/attempt=03/shard.db").expect("parse");
        assert_eq!(p.db_id, Some(DbId(12)));
        assert_eq!(p.attempt, Some(Attempt(3)));
        let p = parse_shard_key("shards/run_id=r1").expect("parse");
        assert_eq!((p.db_id, p.attempt), (None, None));
        assert!(parse_shard_key("shards/r1").is_none());
        assert!(parse_shard_key("manifests/x").is_none());
    }

    #[test]
    fn locate_rebases_relocated_snapshots() {
        let here = "file:///data/golden/hash_int";
        let written = "s3://golden/hash_int";
        assert_eq!(
            locate(here, Some(written), "file:///data/golden/hash_int/_CURRENT").expect("under"),
            "_CURRENT"
        );
        assert_eq!(
            locate(
                here,
                Some(written),
                "s3://golden/hash_int/shards/run_id=r/db=00000/attempt=00"
            )
            .expect("rebased"),
            "shards/run_id=r/db=00000/attempt=00"
        );
        assert_eq!(
            locate(
                here,
                None,
                "s3://golden/hash_int/manifests/2026-11-20T23:48:07.694769Z_run_id=r/manifest"
            )
            .expect("ref"),
            "manifests/2026-11-20T23:48:07.694769Z_run_id=r/manifest"
        );
        assert!(locate(here, Some(written), "s3://other/thing").is_err());
        assert!(relative_key("s3://b/p", "s3://b/pq/x").is_none());
    }
}
