//! The reader on snapshots written the way our writer writes them (by the
//! `sf_tests::snapshots` helper, without running `sf-write`): hash and CEL
//! routing, SQLite (download, range and memory) and SlateDB shards, checksums
//! verified, on `file://` and on S3 (the moto server of `scripts/test.sh`).

use std::collections::BTreeMap;

use sf_manifest::{CelType, Key, KeyEncoding, RoutingValue, ShardingSpec};
use sf_reader::{ContextValue, Reader, RoutingContext, SqliteMode};
use sf_tests::readers::{SQLITE_MODES, in_every_mode, open, settings};
use sf_tests::s3_prefix;
use sf_tests::snapshots::{Backend, Row, SnapshotSpec, build_snapshot};

struct Case {
    name: &'static str,
    spec: SnapshotSpec,
    rows: Vec<Row>,
    /// Keys that are not in the snapshot (with their context).
    misses: Vec<Row>,
}

fn region(k: u64) -> &'static str {
    ["eu", "us", "ap"][(k % 3) as usize]
}

fn cases(backend: Backend) -> Vec<Case> {
    let mut out = Vec::new();
    let with_backend = |mut s: SnapshotSpec| {
        s.backend = backend;
        s
    };

    out.push(Case {
        name: "hash-u64be",
        spec: with_backend(SnapshotSpec::hash("hash-u64be", 4, KeyEncoding::U64Be)),
        rows: (0..300).map(|k| Row::new(Key::Int(k), format!("h:{k}"))).collect(),
        misses: [300, 1000, 1 << 40]
            .into_iter()
            .map(|k| Row::new(Key::Int(k), ""))
            .collect(),
    });
    out.push(Case {
        name: "hash-utf8",
        spec: with_backend(SnapshotSpec::hash("hash-utf8", 3, KeyEncoding::Utf8)),
        rows: (0..200)
            .map(|k| Row::new(Key::Str(format!("user:{k}")), format!("{{\"n\": {k}}}")))
            .chain([Row::new(Key::Str("héllo".into()), "accent")])
            .collect(),
        misses: vec![
            Row::new(Key::Str("nope".into()), ""),
            Row::new(Key::Str(String::new()), ""),
        ],
    });
    out.push(Case {
        name: "hash-raw",
        spec: with_backend(SnapshotSpec::hash("hash-raw", 4, KeyEncoding::Raw)),
        rows: (0..100u32)
            .map(|k| {
                Row::new(
                    Key::Bytes(vec![0xff, (k % 256) as u8, 0x00, (k / 256) as u8]),
                    vec![k as u8; 3],
                )
            })
            .collect(),
        misses: vec![Row::new(Key::Bytes(vec![0xfe]), "")],
    });
    out.push(Case {
        name: "hash-sparse",
        // 16 shards, 5 rows: most shards are empty and left out of the
        // manifest; keys routed there are misses.
        spec: with_backend(SnapshotSpec::hash("hash-sparse", 16, KeyEncoding::U32Be)),
        rows: (0..5).map(|k| Row::new(Key::Int(k), format!("s:{k}"))).collect(),
        misses: (5..40).map(|k| Row::new(Key::Int(k), "")).collect(),
    });
    let mut direct = SnapshotSpec::hash("cel-direct", 4, KeyEncoding::U64Be);
    direct.sharding = ShardingSpec::cel(
        "shard_hash(key) % 4u",
        BTreeMap::from([("key".to_string(), CelType::Int)]),
        None,
    );
    out.push(Case {
        name: "cel-direct",
        spec: with_backend(direct),
        rows: (0..200).map(|k| Row::new(Key::Int(k), format!("d:{k}"))).collect(),
        misses: vec![Row::new(Key::Int(5000), "")],
    });
    let mut cat = SnapshotSpec::hash("cel-cat", 3, KeyEncoding::U64Be);
    cat.sharding = ShardingSpec::cel(
        "region",
        BTreeMap::from([("region".to_string(), CelType::String)]),
        Some(vec![
            RoutingValue::Str("ap".into()),
            RoutingValue::Str("eu".into()),
            RoutingValue::Str("us".into()),
        ]),
    );
    out.push(Case {
        name: "cel-cat",
        spec: with_backend(cat),
        rows: (0..150u64)
            .map(|k| Row::new(Key::Int(k as i64), format!("c:{k}")).with("region", ContextValue::Str(region(k).into())))
            .collect(),
        misses: vec![
            // A known key under the wrong region, and an unknown token.
            Row::new(Key::Int(0), "").with("region", ContextValue::Str("ap".into())),
            Row::new(Key::Int(1), "").with("region", ContextValue::Str("mars".into())),
        ],
    });
    out
}

fn context(row: &Row) -> Option<RoutingContext> {
    (!row.context.is_empty()).then(|| row.context.clone())
}

async fn check(reader: &Reader, case: &Case, label: &str) {
    for row in &case.rows {
        let v = match context(row) {
            Some(c) => reader.get_with_context(&row.key, &c).await,
            None => reader.get(&row.key).await,
        }
        .unwrap_or_else(|e| panic!("{label}: get {:?}: {e}", row.key));
        assert_eq!(v.as_deref(), Some(row.value.as_slice()), "{label}: {:?}", row.key);
    }
    for row in &case.misses {
        let v = match context(row) {
            Some(c) => reader.get_with_context(&row.key, &c).await,
            None => reader.get(&row.key).await,
        }
        .unwrap_or_else(|e| panic!("{label}: get {:?}: {e}", row.key));
        assert_eq!(v, None, "{label}: {:?} is a miss", row.key);
    }
    // All rows and misses in one multi_get, interleaved, in input order.
    let all: Vec<&Row> = case
        .rows
        .iter()
        .zip(case.misses.iter().cycle())
        .flat_map(|(a, b)| [a, b])
        .collect();
    let values = if reader.needs_context() {
        let items: Vec<(Key, RoutingContext)> = all.iter().map(|r| (r.key.clone(), r.context.clone())).collect();
        reader.multi_get_with_context(&items).await
    } else {
        let keys: Vec<Key> = all.iter().map(|r| r.key.clone()).collect();
        reader.multi_get(&keys).await
    }
    .unwrap_or_else(|e| panic!("{label}: multi_get: {e}"));
    for (i, (row, v)) in all.iter().zip(values).enumerate() {
        let expect = if i % 2 == 0 { Some(row.value.as_slice()) } else { None };
        assert_eq!(v.as_deref(), expect, "{label}: multi_get item {i} {:?}", row.key);
    }
}

async fn matrix(prefix_of: impl Fn(&str) -> String) {
    let cache = tempfile::tempdir().expect("cache");
    for backend in [Backend::Sqlite, Backend::SlateDb] {
        for case in cases(backend) {
            let prefix = prefix_of(&format!("{}-{backend:?}", case.name).to_lowercase());
            let built = build_snapshot(&prefix, &case.spec, &case.rows).await;
            assert!(built.manifest.shards.iter().all(|s| s.writer_info.checksum().is_some()));
            let modes: &[SqliteMode] = match backend {
                Backend::Sqlite => &SQLITE_MODES,
                Backend::SlateDb => &[SqliteMode::Auto],
            };
            in_every_mode(modes, async |mode| {
                let label = format!("{} {backend:?} {mode:?} at {prefix}", case.name);
                let reader = open(&prefix, settings(mode, cache.path())).await;
                assert_eq!(reader.info().manifest_ref, built.manifest_ref);
                check(&reader, &case, &label).await;
                let expected_backend = match (backend, mode) {
                    (Backend::SlateDb, _) => "slatedb",
                    (_, SqliteMode::Range) => "sqlite-range",
                    (_, SqliteMode::Memory) => "sqlite-memory",
                    _ => "sqlite-download",
                };
                for s in reader.shards() {
                    assert_eq!(s.opened_as, Some(expected_backend), "{label}: shard {}", s.db_id);
                }
            })
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fresh_snapshots_on_the_file_system() {
    let root = tempfile::tempdir().expect("root");
    let base = root.path().to_path_buf();
    matrix(|name| format!("file://{}/{name}", base.display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fresh_snapshots_on_s3() {
    let base = s3_prefix("reader-snapshots");
    matrix(|name| format!("{base}/{name}")).await;
}
