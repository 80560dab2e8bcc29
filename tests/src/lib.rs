//! Helpers for ShardForge's cross-crate tests: fixture locations, the
//! reference's manifest dumps, the storage emulators' settings, and the
//! rooms below: snapshots built and tampered with, readers opened in every
//! read mode, writer jobs, faults injected in a store or a proxy, clusters
//! and scheduled runs of the real programs.
//!
//! Tests that need S3, GCS or Azure Blob call [`s3_prefix`], [`gcs_prefix`]
//! or [`azure_prefix`]; each reads the emulator the test script started
//! (`scripts/test.sh`) from the environment and panics with instructions
//! when there is none, so those tests never pass silently.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sf_manifest::{ManifestStore, ObjectManifestStore, StorageOptions};

pub mod cluster;
pub mod fault_proxy;
pub mod fault_store;
pub mod readers;
pub mod scenario;
pub mod serve;
pub mod snapshots;
pub mod tamper;
pub mod writer_support;

/// The manifest store of the snapshot under `prefix`, with the storage
/// settings the environment gives.
pub fn manifest_store(prefix: &str) -> ObjectManifestStore {
    ObjectManifestStore::open(prefix, &StorageOptions::new()).expect("open the prefix")
}

/// The run ids of the manifests in the history under `prefix`, newest
/// first.
pub async fn history_runs(prefix: &str) -> Vec<String> {
    manifest_store(prefix)
        .history()
        .await
        .expect("history")
        .into_iter()
        .map(|h| h.run_id.as_str().to_string())
        .collect()
}

/// `text` with `from` replaced by `to`, for editing job files in tests;
/// panics when `text` does not hold `from`, so that an edit whose text no
/// longer matches cannot leave the job as it was and the test passing on
/// the defaults.
pub fn replace_in(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the text to replace, {from:?}, is not in:\n{text}");
    text.replace(from, to)
}

/// Folder of the reference snapshots (copied from shardyfusion v4).
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/shardyfusion-v4")
}

/// `expected.json` of the fixtures.
pub fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).expect("read expected.json");
    serde_json::from_str(&text).expect("expected.json is JSON")
}

/// Maps a fixture URL (`s3://golden/...`, `s3://goldenslate/...`) to its
/// folder in the copy.
pub fn fixture_path_for(url: &str) -> PathBuf {
    let rest = url.strip_prefix("s3://").expect("fixture URLs are s3://");
    let (bucket, key) = rest.split_once('/').expect("bucket/key");
    let folder = match bucket {
        "golden" => "sqlite-bucket-golden",
        "goldenslate" => "slatedb-bucket-goldenslate",
        other => panic!("unknown fixture bucket {other}"),
    };
    fixture_dir().join(folder).join(key)
}

/// A value in the reference's Python-repr dumps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PyValue {
    /// `None`
    None,
    /// An int.
    Int(i64),
    /// A str.
    Str(String),
}

/// One manifest of a `manifest_dump_*.txt` file.
#[derive(Debug, Clone)]
pub struct DumpedManifest {
    /// The `=== <ref>` header, or empty when the dump has none.
    pub manifest_ref: String,
    /// The `build_meta` row.
    pub build_meta: BTreeMap<String, PyValue>,
    /// The `shards` rows in order.
    pub shards: Vec<BTreeMap<String, PyValue>>,
    /// `CREATE TABLE` statements as dumped.
    pub schema: String,
}

/// Parses a `manifest_dump_*.txt` file.
pub fn parse_manifest_dump(text: &str) -> Vec<DumpedManifest> {
    let mut out: Vec<DumpedManifest> = Vec::new();
    let mut in_schema = false;
    for line in text.lines() {
        if let Some(r) = line.strip_prefix("===") {
            out.push(DumpedManifest {
                manifest_ref: r.trim().to_string(),
                build_meta: BTreeMap::new(),
                shards: Vec::new(),
                schema: String::new(),
            });
            in_schema = false;
            continue;
        }
        if let Some(d) = line.strip_prefix("build_meta ") {
            if out.last().is_none_or(|m| !m.build_meta.is_empty()) {
                out.push(DumpedManifest {
                    manifest_ref: String::new(),
                    build_meta: BTreeMap::new(),
                    shards: Vec::new(),
                    schema: String::new(),
                });
            }
            out.last_mut().expect("pushed").build_meta = parse_py_dict(d);
            in_schema = false;
        } else if let Some(d) = line.strip_prefix("shards ") {
            out.last_mut()
                .expect("a build_meta line first")
                .shards
                .push(parse_py_dict(d));
        } else if line.starts_with("CREATE TABLE") || in_schema {
            in_schema = !line.starts_with(')');
            let m = out.last_mut().expect("a header first");
            m.schema.push_str(line);
            m.schema.push('\n');
        }
    }
    out
}

/// Parses a Python dict literal of str keys and None/int/str values.
pub fn parse_py_dict(s: &str) -> BTreeMap<String, PyValue> {
    let chars: Vec<char> = s.trim().chars().collect();
    let mut i = 0;
    let mut out = BTreeMap::new();
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    let parse_str = |i: &mut usize| -> String {
        let quote = chars[*i];
        *i += 1;
        let mut s = String::new();
        while chars[*i] != quote {
            if chars[*i] == '\\' {
                *i += 1;
                s.push(match chars[*i] {
                    'n' => '\n',
                    't' => '\t',
                    c => c,
                });
            } else {
                s.push(chars[*i]);
            }
            *i += 1;
        }
        *i += 1;
        s
    };
    assert_eq!(chars[i], '{', "dict literal: {s}");
    i += 1;
    loop {
        skip_ws(&mut i);
        if chars[i] == '}' {
            break;
        }
        let key = parse_str(&mut i);
        skip_ws(&mut i);
        assert_eq!(chars[i], ':');
        i += 1;
        skip_ws(&mut i);
        let value = if chars[i] == '\'' || chars[i] == '"' {
            PyValue::Str(parse_str(&mut i))
        } else if chars[i..].starts_with(&['N', 'o', 'n', 'e']) {
            i += 4;
            PyValue::None
        } else {
            let start = i;
            while chars[i] == '-' || chars[i].is_ascii_digit() {
                i += 1;
            }
            PyValue::Int(chars[start..i].iter().collect::<String>().parse().expect("int"))
        };
        out.insert(key, value);
        skip_ws(&mut i);
        if chars[i] == ',' {
            i += 1;
        }
    }
    out
}

/// Environment variable naming the bucket the S3 test server serves.
pub const S3_BUCKET_VAR: &str = "SHARDFORGE_TEST_S3_BUCKET";

/// Environment variable naming the bucket the GCS test server serves.
pub const GCS_BUCKET_VAR: &str = "SHARDFORGE_TEST_GCS_BUCKET";

/// Environment variable naming the container the Azure Blob test server serves.
pub const AZURE_CONTAINER_VAR: &str = "SHARDFORGE_TEST_AZURE_CONTAINER";

/// The value of `var`, or a panic that tells how to run the suite.
fn required_env(var: &str, server: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "this test needs the {server} test server, and {var} is not set. \
             Run the suite with `./scripts/test.sh`: it installs and starts the storage emulators on \
             127.0.0.1, sets these variables, runs the tests and stops the servers."
        ),
    }
}

fn assert_loopback(what: &str, url: &str) {
    assert!(
        url.starts_with("http://127.0.0.1:") || url.starts_with("http://localhost:"),
        "{what} must be a loopback address in tests, got {url}"
    );
}

/// A fresh `s3://` prefix for one test on the S3 test server.
///
/// Panics, telling how to run the suite, when no server is configured.
pub fn s3_prefix(test: &str) -> String {
    let bucket = required_env(S3_BUCKET_VAR, "S3");
    let endpoint = required_env("AWS_ENDPOINT", "S3");
    assert_loopback("AWS_ENDPOINT", &endpoint);
    format!("s3://{bucket}/{test}-{}", uuid::Uuid::new_v4().simple())
}

/// A fresh `gs://` prefix for one test on the GCS test server.
///
/// object_store finds the server through the service account file named by
/// `GOOGLE_SERVICE_ACCOUNT` (`gcs_base_url`, `disable_oauth`). Panics,
/// telling how to run the suite, when no server is configured.
pub fn gcs_prefix(test: &str) -> String {
    let bucket = required_env(GCS_BUCKET_VAR, "GCS");
    let account = required_env("GOOGLE_SERVICE_ACCOUNT", "GCS");
    let text = std::fs::read_to_string(&account)
        .unwrap_or_else(|e| panic!("GOOGLE_SERVICE_ACCOUNT names {account}, which cannot be read: {e}"));
    let json: serde_json::Value = serde_json::from_str(&text).expect("the service account file is JSON");
    let base = json["gcs_base_url"].as_str().unwrap_or_default();
    assert_loopback("gcs_base_url of GOOGLE_SERVICE_ACCOUNT", base);
    assert_eq!(
        json["disable_oauth"],
        serde_json::json!(true),
        "the GCS test server takes no OAuth"
    );
    format!("gs://{bucket}/{test}-{}", uuid::Uuid::new_v4().simple())
}

/// A fresh `az://` prefix for one test on the Azure Blob test server.
///
/// object_store finds the server through `AZURE_STORAGE_USE_EMULATOR=true`
/// and `AZURITE_BLOB_STORAGE_URL` (the emulator's well-known account and
/// key). Panics, telling how to run the suite, when no server is configured.
pub fn azure_prefix(test: &str) -> String {
    let container = required_env(AZURE_CONTAINER_VAR, "Azure Blob");
    let emulator = required_env("AZURE_STORAGE_USE_EMULATOR", "Azure Blob");
    assert_eq!(emulator, "true", "AZURE_STORAGE_USE_EMULATOR");
    let url = required_env("AZURITE_BLOB_STORAGE_URL", "Azure Blob");
    assert_loopback("AZURITE_BLOB_STORAGE_URL", &url);
    format!("az://{container}/{test}-{}", uuid::Uuid::new_v4().simple())
}

/// A fresh `memory://` prefix.
pub fn memory_prefix(test: &str) -> String {
    format!("memory://{test}-{}/snap", uuid::Uuid::new_v4().simple())
}
