//! SQLite page sizes: the reference's shards of 8, 16, 32 and 64 KiB pages
//! read in download, range and memory modes against what its own reader
//! returned, and shards `sf-write` built with `output.sqlite.page_size =
//! "auto"` (values with overflow chains among them), sorted and unsorted,
//! on files and S3, read back in every mode.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch};
use serde_json::Value;
use sf_manifest::{Key, ManifestStore};
use sf_tests::readers::{SQLITE_MODES, read_in_every_mode};
use sf_tests::writer_support::{binary, write_parquet};
use sf_tests::{manifest_store, s3_prefix};
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/shardyfusion-pagesize")
}

/// The page size a SQLite file's header records (offset 16, 1 = 65536).
fn header_page_size(header: &[u8]) -> u32 {
    match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u32::from(n),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_references_shards_of_every_page_size_read_in_every_mode() {
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).expect("expected.json"))
            .expect("JSON");
    let sets = exp["sets"].as_object().expect("sets");
    assert_eq!(sets.len(), 4);
    for (name, set) in sets {
        let page_size = set["page_size"].as_u64().expect("page size") as u32;
        // The files are what they say: each header has the set's size.
        for shard in set["shards"].as_array().expect("shards") {
            let bytes = std::fs::read(fixtures().join(shard["path"].as_str().expect("path"))).expect("shard");
            assert_eq!(header_page_size(&bytes), page_size, "{name}");
        }
        let prefix = fixtures().join(set["local_prefix"].as_str().expect("prefix"));
        let rows = set["rows"].as_array().expect("rows");
        let mut overflowing = 0;
        read_in_every_mode(&prefix.display().to_string(), &SQLITE_MODES, async |r| {
            let keys: Vec<Key> = rows
                .iter()
                .map(|row| Key::Int(row["key"].as_i64().expect("key")))
                .collect();
            let many = r.multi_get(&keys).await.expect("multi_get");
            for (row, (key, from_many)) in rows.iter().zip(keys.iter().zip(many)) {
                let got = r.get(key).await.expect("get");
                assert_eq!(got, from_many, "{name} {key:?}");
                match (&row["sha256"], got) {
                    (Value::Null, None) => {}
                    (Value::String(sha), Some(v)) => {
                        assert_eq!(v.len() as u64, row["len"].as_u64().expect("len"), "{name} {key:?}");
                        assert_eq!(&hex::encode(Sha256::digest(&v)), sha, "{name} {key:?}");
                        // Longer than a cell keeps: read through its overflow chain.
                        if v.len() > (page_size as usize - 12) * 64 / 255 - 23 {
                            overflowing += 1;
                        }
                    }
                    (want, got) => panic!("{name} {key:?}: expected {want}, got {got:?}"),
                }
            }
        })
        .await;
        assert!(overflowing > 0, "{name}: some values have overflow chains");
    }
}

/// Key `k`'s value: mostly 3000 bytes (whole from 16 KiB pages), every
/// 100th 30000 bytes (an overflow chain at 16 KiB), a few short ones.
fn value(k: i64) -> Vec<u8> {
    let len = match k {
        k if k % 100 == 3 => 30_000,
        k if k % 20 == 1 => 10,
        _ => 3000,
    };
    (0..len).map(|i| ((k * 7 + i) % 251) as u8).collect()
}

const ROWS: i64 = 400;

fn job(sorted: bool) -> String {
    format!(
        r#"
key_col = "id"
[input]
format = "parquet"
path = "rows.parquet"
[value]
binary_col = "payload"
[routing]
num_dbs = 3
[write]
sort_within_shard = {sorted}
[output]
prefix = "PREFIX"
[output.sqlite]
page_size = "auto"
"#
    )
}

/// Builds the rows with `sf-write` into `prefix` (`sorted` or not), checks
/// the report, the manifest and each shard's header, and reads every key
/// back in every mode.
async fn build_auto_and_read(dir: &Path, prefix: &str, sorted: bool) {
    let ids: Vec<i64> = (0..ROWS).collect();
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
        (
            "payload",
            Arc::new(BinaryArray::from_iter_values(ids.iter().map(|&k| value(k)))) as ArrayRef,
        ),
    ])
    .expect("batch");
    write_parquet(&dir.join("rows.parquet"), &[batch]);
    std::fs::write(dir.join("job.toml"), job(sorted).replace("PREFIX", prefix)).expect("job");
    let out = std::process::Command::new(binary("sf-write"))
        .args(["--config", "job.toml", "--json", "--progress", "off"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sf-write");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    // The 95th-percentile value is 3000 bytes: 16 KiB pages for every shard.
    assert_eq!(summary["page_sizes"], serde_json::json!({"16384": 3}), "{summary}");

    let store = manifest_store(prefix);
    let current = store.load_current().await.expect("current").expect("published");
    let manifest = store
        .load_manifest(&current.pointer.manifest_ref)
        .await
        .expect("manifest");
    let ours = &manifest.build.custom["shardforge"];
    assert_eq!(ours["page_size"], "auto");
    assert_eq!(ours["page_sizes"], serde_json::json!({"16384": 3}));
    for shard in &manifest.shards {
        let file = store
            .locate(
                shard.db_url.as_deref().expect("db_url"),
                Some(manifest.build.s3_prefix.as_str()),
            )
            .expect("locate")
            .child("shard.db");
        let header = file.store.get_range(&file.path, 0..100).await.expect("header");
        assert_eq!(header_page_size(&header), 16384, "shard {}", shard.db_id);
    }

    read_in_every_mode(prefix, &SQLITE_MODES, async |r| {
        let keys: Vec<Key> = (0..ROWS + 3).map(Key::Int).collect();
        let many = r.multi_get(&keys).await.expect("multi_get");
        for (k, got) in (0..ROWS + 3).zip(many) {
            let want = (k < ROWS).then(|| value(k));
            assert_eq!(got.as_deref(), want.as_deref(), "key {k} by multi_get");
        }
        for k in [0, 1, 3, 28, ROWS - 1] {
            assert_eq!(
                r.get(&Key::Int(k)).await.expect("get").as_deref(),
                Some(&value(k)[..]),
                "key {k}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_page_size_shards_read_in_every_mode_on_files() {
    for sorted in [true, false] {
        let dir = tempfile::tempdir().expect("tmp");
        let prefix = format!("file://{}/out", dir.path().display());
        build_auto_and_read(dir.path(), &prefix, sorted).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_page_size_shards_read_in_every_mode_on_s3() {
    let dir = tempfile::tempdir().expect("tmp");
    build_auto_and_read(dir.path(), &s3_prefix("auto-page-size"), true).await;
}

/// Copies the folder `from` into `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

/// The reference's 8 KiB snapshot with shard 0's header changed by
/// `patch` (same length, and the reference records no checksum, so only
/// SQLite's own checks stand between the reader and the bytes): in every
/// mode a lookup of shard 0 is an error that says what is wrong, twice
/// alike, while shard 1 keeps answering; nothing panics.
async fn damaged_header(patch: impl Fn(&mut [u8]), want: &[&str]) {
    let dir = tempfile::tempdir().expect("tmp");
    copy_tree(&fixtures().join("bucket-sfpages/p8k"), dir.path());
    let shard = dir.path().join("shards/run_id=pages8192/db=00000/attempt=00/shard.db");
    let mut bytes = std::fs::read(&shard).expect("shard");
    patch(&mut bytes);
    std::fs::write(&shard, &bytes).expect("write");
    read_in_every_mode(&dir.path().display().to_string(), &SQLITE_MODES, async |r| {
        let (mut refused, mut answered) = (0, 0);
        for k in 0..40 {
            let key = Key::Int(k);
            let db = r.route(&key, None).expect("route").db_id.expect("a shard").0;
            for _ in 0..2 {
                match (db, r.get(&key).await) {
                    (0, Err(e)) => {
                        let text = format!("{e:#}");
                        assert!(want.iter().any(|w| text.contains(w)), "key {k}: {text}");
                        refused += 1;
                    }
                    (1, Ok(Some(v))) => {
                        assert!(!v.is_empty(), "key {k}");
                        answered += 1;
                    }
                    (db, other) => panic!("key {k} of shard {db}: {other:?}"),
                }
            }
        }
        assert!(refused > 0 && answered > 0, "{refused} refused, {answered} answered");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_size_that_is_no_power_of_two_is_one_clear_error() {
    damaged_header(
        |b| b[16..18].copy_from_slice(&3000u16.to_be_bytes()),
        &["not a database"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_size_out_of_range_is_one_clear_error() {
    damaged_header(
        |b| b[16..18].copy_from_slice(&256u16.to_be_bytes()),
        &["not a database"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_shorter_than_its_pages_is_one_clear_error() {
    // The 8 KiB file claims 64 KiB pages (1 stands for 65536): its
    // header's page count times the page size is far past its end.
    damaged_header(
        |b| b[16..18].copy_from_slice(&1u16.to_be_bytes()),
        &["malformed", "not a database", "disk I/O error", "short"],
    )
    .await;
}
