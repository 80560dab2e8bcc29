//! `sf-write` jobs on Google Cloud Storage and Azure Blob (the
//! fake-gcs-server and Azurite emulators of `scripts/test.sh`): SQLite and
//! SlateDB shards built to a `gs://` and an `az://` prefix, every row read
//! back from the shards and every key through `sf_reader::Reader`.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use sf_manifest::Key;
use sf_reader::SqliteMode;
use sf_router::Router;
use sf_tests::readers::{PAGED_MODES, read_in_every_mode};
use sf_tests::writer_support::{build_embedded, list_keys, parse_job, read_snapshot, write_parquet};
use sf_tests::{azure_prefix, gcs_prefix};

const ROWS: i64 = 1_500;
const SHARDS: u32 = 4;

fn value(id: i64) -> Vec<u8> {
    format!("value-{id}-{}", "x".repeat((id % 17) as usize)).into_bytes()
}

fn write_input(dir: &Path) {
    let ids: Vec<i64> = (0..ROWS).collect();
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
        (
            "payload",
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| String::from_utf8(value(*i)).expect("ASCII")),
            )) as ArrayRef,
        ),
    ])
    .expect("batch");
    write_parquet(&dir.join("rows.parquet"), &[batch]);
}

/// Builds `ROWS` rows into `SHARDS` shards of `backend` under `prefix`,
/// then reads everything back.
async fn build_and_read(prefix: &str, backend: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    write_input(dir.path());
    let toml = format!(
        r#"
key_col = "id"
[input]
format = "parquet"
path = "rows.parquet"
[value]
binary_col = "payload"
[routing]
num_dbs = {SHARDS}
[output]
prefix = "{prefix}"
backend = "{backend}"
"#
    );
    let summary = build_embedded(&parse_job(dir.path(), &toml)).await;
    assert_eq!(
        (summary.rows, summary.num_dbs, summary.shards_written),
        (ROWS as u64, SHARDS, SHARDS),
        "{prefix}"
    );

    // The shards themselves: every row once, with its value, each shard
    // under the prefix it was built at.
    let snap = read_snapshot(prefix).await;
    assert_eq!(snap.manifest.build.s3_prefix, prefix);
    for shard in &snap.manifest.shards {
        let url = shard.db_url.as_deref().expect("db_url");
        assert!(url.starts_with(&format!("{prefix}/shards/")), "{url}");
    }
    let router = Router::for_build(&snap.manifest.build).expect("router");
    let rows = snap.rows();
    assert_eq!(rows.len() as i64, ROWS, "{prefix}: every row stored once");
    for id in 0..ROWS {
        let stored = rows
            .get(&router.encode_key(&Key::Int(id)).expect("encode"))
            .unwrap_or_else(|| panic!("{prefix}: key {id} missing"));
        assert_eq!(stored.1, value(id), "{prefix}: value of key {id}");
    }
    if backend == "sqlite" {
        // Only the winners' attempt folders are left, each with its shard
        // file and claim.
        let keys = list_keys(prefix).await;
        let shard_objects = keys.iter().filter(|k| k.starts_with("shards/")).count();
        assert_eq!(shard_objects, 2 * SHARDS as usize, "{keys:?}");
    }

    // The online reader: every key, and a miss.
    let modes: &[SqliteMode] = if backend == "sqlite" {
        &PAGED_MODES
    } else {
        &[SqliteMode::Auto]
    };
    read_in_every_mode(prefix, modes, async |reader| {
        let keys: Vec<Key> = (0..ROWS + 1).map(Key::Int).collect();
        let got = reader.multi_get(&keys).await.expect("multi_get");
        for (id, v) in (0..ROWS).zip(&got) {
            assert_eq!(v.as_deref(), Some(value(id).as_slice()), "{prefix}: key {id}");
        }
        assert_eq!(got[ROWS as usize], None, "{prefix}: absent key");
        let one = reader.get(&Key::Int(7)).await.expect("get");
        assert_eq!(one.as_deref(), Some(value(7).as_slice()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_job_on_gcs() {
    build_and_read(&gcs_prefix("job-sqlite"), "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slatedb_job_on_gcs() {
    build_and_read(&gcs_prefix("job-slatedb"), "slatedb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_job_on_azure() {
    build_and_read(&azure_prefix("job-sqlite"), "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slatedb_job_on_azure() {
    build_and_read(&azure_prefix("job-slatedb"), "slatedb").await;
}

/// Storage options alone reach Azurite, as a user without the emulator's
/// environment would configure it (they win over `AZURE_STORAGE_USE_EMULATOR`
/// in the environment): an object written through them is the one the
/// environment-configured store reads, and the other way round.
#[tokio::test]
async fn azure_through_storage_options() {
    use object_store::PutPayload;
    let prefix = azure_prefix("options");
    let endpoint = std::env::var("AZURITE_BLOB_STORAGE_URL").expect("set with the container");
    let options = sf_manifest::StorageOptions::new()
        .with("azure_storage_use_emulator", "false")
        .with("azure_storage_account_name", "devstoreaccount1")
        .with(
            "azure_storage_account_key",
            // The emulator's well-known key, public by design.
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
        )
        .with("azure_storage_endpoint", format!("{endpoint}/devstoreaccount1"))
        .with("allow_http", "true");
    let by_options = sf_manifest::resolve(&prefix, &options).expect("resolve with options");
    let by_env = sf_manifest::resolve(&prefix, &sf_manifest::StorageOptions::new()).expect("resolve");
    assert!(
        !Arc::ptr_eq(&by_options.store, &by_env.store),
        "two differently configured clients"
    );

    let a = by_options.path_of("a");
    by_options
        .store
        .put(&a, PutPayload::from_static(b"through options"))
        .await
        .expect("put");
    let got = by_env.store.get(&a).await.expect("get").bytes().await.expect("bytes");
    assert_eq!(got, "through options");
    let b = by_env.path_of("b");
    by_env
        .store
        .put(&b, PutPayload::from_static(b"through the environment"))
        .await
        .expect("put");
    let got = by_options
        .store
        .get(&b)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(got, "through the environment");

    // The options are what the client signs with: a wrong key is refused.
    let wrong = options.with("azure_storage_account_key", "A".repeat(86) + "==");
    let refused = sf_manifest::resolve(&prefix, &wrong).expect("resolve with a wrong key");
    let e = refused.store.get(&a).await.expect_err("a wrong key is refused");
    assert!(matches!(e, object_store::Error::PermissionDenied { .. }), "{e}");
}
