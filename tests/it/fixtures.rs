//! The reference's snapshots: manifests, `_CURRENT`, run records and shard
//! contents parse to exactly what the reference dumped, and route as
//! docs/FORMAT.md says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use sf_manifest::format::json::{JsonStyle, to_sorted_string};
use sf_manifest::{CurrentPointer, Key, KeyEncoding, Manifest, RunRecord, ShardingStrategy};
use sf_router::{Routed, Router, decode_key, encode_key, shard_hash};
use sf_tests::{PyValue, expected, fixture_dir, fixture_path_for, parse_manifest_dump};

fn py(v: &Value) -> String {
    to_sorted_string(v, JsonStyle::Python)
}

fn s(v: &PyValue) -> String {
    match v {
        PyValue::Str(s) => s.clone(),
        other => panic!("expected a str, got {other:?}"),
    }
}

fn i(v: &PyValue) -> i64 {
    match v {
        PyValue::Int(i) => *i,
        other => panic!("expected an int, got {other:?}"),
    }
}

fn opt(v: &PyValue) -> Option<String> {
    match v {
        PyValue::None => None,
        PyValue::Str(s) => Some(s.clone()),
        other => panic!("expected a str or None, got {other:?}"),
    }
}

fn manifest_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for bucket in ["sqlite-bucket-golden", "slatedb-bucket-goldenslate"] {
        for snap in std::fs::read_dir(fixture_dir().join(bucket)).expect("bucket dir") {
            let snap = snap.expect("entry").path();
            for m in std::fs::read_dir(snap.join("manifests")).expect("manifests dir") {
                out.push(m.expect("entry").path().join("manifest"));
            }
        }
    }
    out.sort();
    out
}

fn read_manifest(path: &Path) -> Manifest {
    let bytes = std::fs::read(path).expect("read manifest");
    Manifest::from_sqlite_bytes(&bytes, &path.display().to_string()).expect("decode manifest")
}

/// Every dumped manifest parses to exactly the dumped values, and our JSON
/// encodings of its fields reproduce the reference's text byte for byte.
#[test]
fn manifests_parse_to_the_dumped_values() {
    let mut checked = 0;
    for dump in ["manifest_dump_sqlite.txt", "manifest_dump_slatedb.txt"] {
        let text = std::fs::read_to_string(fixture_dir().join(dump)).expect("dump");
        for d in parse_manifest_dump(&text) {
            let b = &d.build_meta;
            let prefix = s(&b["s3_prefix"]);
            let run_id = s(&b["run_id"]);
            // The dump of the SlateDB snapshot has no header: find its manifest by run id.
            let path = if d.manifest_ref.is_empty() {
                let dir = fixture_path_for(&prefix).join("manifests");
                let entry = std::fs::read_dir(&dir)
                    .expect("manifests")
                    .map(|e| e.expect("entry").path())
                    .find(|p| p.to_string_lossy().ends_with(&format!("_run_id={run_id}")))
                    .expect("manifest of the dumped run");
                entry.join("manifest")
            } else {
                fixture_path_for(&d.manifest_ref)
            };
            let m = read_manifest(&path);
            let mb = &m.build;
            assert_eq!(mb.run_id.as_str(), run_id);
            assert_eq!(mb.created_at.to_iso(), s(&b["created_at"]));
            assert_eq!(i64::from(mb.num_dbs), i(&b["num_dbs"]));
            assert_eq!(mb.s3_prefix, prefix);
            assert_eq!(mb.key_col, s(&b["key_col"]));
            assert_eq!(py(&mb.sharding.to_json()), s(&b["sharding"]), "sharding of {run_id}");
            assert_eq!(mb.db_path_template, s(&b["db_path_template"]));
            assert_eq!(mb.shard_prefix, s(&b["shard_prefix"]));
            assert_eq!(mb.format_version, i(&b["format_version"]));
            assert_eq!(mb.key_encoding.as_str(), s(&b["key_encoding"]));
            assert_eq!(py(&Value::Object(mb.custom.clone())), s(&b["custom"]));
            assert_eq!(m.shards.len(), d.shards.len(), "shards of {run_id}");
            for (row, want) in m.shards.iter().zip(&d.shards) {
                assert_eq!(i64::from(row.db_id.0), i(&want["db_id"]));
                assert_eq!(row.db_url, opt(&want["db_url"]));
                assert_eq!(i64::from(row.attempt.0), i(&want["attempt"]));
                assert_eq!(row.row_count as i64, i(&want["row_count"]));
                assert_eq!(row.db_bytes as i64, i(&want["db_bytes"]));
                assert_eq!(row.min_key.as_ref().map(|k| py(&k.to_json())), opt(&want["min_key"]));
                assert_eq!(row.max_key.as_ref().map(|k| py(&k.to_json())), opt(&want["max_key"]));
                assert_eq!(row.checkpoint_id, opt(&want["checkpoint_id"]));
                assert_eq!(py(&row.writer_info.to_json()), s(&want["writer_info"]));
            }
            if !d.schema.is_empty() {
                assert_eq!(
                    sqlite_master(&std::fs::read(&path).expect("read")),
                    d.schema.trim_end().replace(");", ")")
                );
            }
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        manifest_files().len(),
        "every fixture manifest is dumped and checked"
    );
}

/// `CREATE TABLE` statements of a SQLite file, joined by newlines.
fn sqlite_master(bytes: &[u8]) -> String {
    let dir = tempfile_dir();
    let path = dir.join("m.db");
    std::fs::write(&path, bytes).expect("write");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let mut stmt = conn
        .prepare("SELECT sql FROM sqlite_master WHERE type = 'table' ORDER BY rowid")
        .expect("prepare");
    let sqls: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    sqls.join("\n")
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sf-fixture-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// A manifest written here has the fixtures' schema, page size and JSON
/// shapes, and reads back equal.
#[test]
fn written_manifests_match_the_reference_schema_and_read_back_equal() {
    let reference = read_manifest(&manifest_files()[0]);
    let reference_bytes = std::fs::read(&manifest_files()[0]).expect("read");
    for m in manifest_files().iter().map(|p| read_manifest(p)) {
        let bytes = m.to_sqlite_bytes().expect("encode");
        assert_eq!(&bytes[..16], b"SQLite format 3\0");
        assert_eq!(u16::from_be_bytes([bytes[16], bytes[17]]), 4096, "page size");
        assert_eq!(sqlite_master(&bytes), sqlite_master(&reference_bytes));
        let back = Manifest::from_sqlite_bytes(&bytes, "roundtrip").expect("decode");
        assert_eq!(back, m);
    }
    // Our own additions travel in writer_info and custom, never as columns.
    let mut ours = reference.clone();
    ours.build
        .custom
        .insert("shardforge".into(), serde_json::json!({"rows": 10}));
    ours.shards[0]
        .writer_info
        .extra
        .insert("checksum".into(), Value::from("xxh3_128:00ff"));
    let back = Manifest::from_sqlite_bytes(&ours.to_sqlite_bytes().expect("encode"), "ours").expect("decode");
    assert_eq!(back, ours);
    assert_eq!(back.shards[0].writer_info.checksum(), Some("xxh3_128:00ff"));
    assert_eq!(
        sqlite_master(&ours.to_sqlite_bytes().expect("encode")),
        sqlite_master(&reference_bytes)
    );

    // Raw keys that are not UTF-8 survive as key bounds.
    let mut raw = reference;
    raw.build.key_encoding = KeyEncoding::Raw;
    raw.shards[0].min_key = Some(Key::Bytes(vec![0xff, 0x00]));
    raw.shards[0].max_key = Some(Key::Bytes(b"hex:not-hex".to_vec()));
    let back = Manifest::from_sqlite_bytes(&raw.to_sqlite_bytes().expect("encode"), "raw").expect("decode");
    assert_eq!(back.shards[0].min_key, raw.shards[0].min_key);
    assert_eq!(back.shards[0].max_key, raw.shards[0].max_key);
}

/// `_CURRENT` files parse, point at the expected manifests, and re-encode
/// to the same bytes.
#[test]
fn current_pointers_parse_and_reencode_identically() {
    let exp = expected();
    let current_refs: BTreeMap<&str, &str> = [
        ("hash_int", "hash_int_run2"),
        ("hash_str", "hash_str"),
        ("cel_cat", "cel_cat"),
        ("cel_direct", "cel_direct"),
    ]
    .into_iter()
    .collect();
    for (snap, write_key) in current_refs {
        let path = fixture_dir().join("sqlite-bucket-golden").join(snap).join("_CURRENT");
        let bytes = std::fs::read(&path).expect("read _CURRENT");
        let p = CurrentPointer::from_json_bytes(&bytes, &path.display().to_string()).expect("parse");
        assert_eq!(
            p.manifest_ref,
            exp["write"][write_key]["manifest_ref"].as_str().expect("ref")
        );
        assert_eq!(
            p.run_id.as_str(),
            exp["write"][write_key]["run_id"].as_str().expect("run")
        );
        assert_eq!(p.to_json_bytes(), bytes);
        assert!(fixture_path_for(&p.manifest_ref).exists(), "{} exists", p.manifest_ref);
    }
    let slate = fixture_dir().join("slatedb-bucket-goldenslate/hash_int/_CURRENT");
    let bytes = std::fs::read(&slate).expect("read");
    let p = CurrentPointer::from_json_bytes(&bytes, "slate").expect("parse");
    assert_eq!(p.run_id.as_str(), "slaterun0001");
    assert_eq!(p.to_json_bytes(), bytes);
}

/// Every run record parses and re-encodes to the same bytes.
#[test]
fn run_records_parse_and_reencode_identically() {
    let mut n = 0;
    for bucket in ["sqlite-bucket-golden", "slatedb-bucket-goldenslate"] {
        for snap in std::fs::read_dir(fixture_dir().join(bucket)).expect("dir") {
            for run in std::fs::read_dir(snap.expect("snap").path().join("runs")).expect("runs") {
                let path = run.expect("run").path().join("run.yaml");
                let text = std::fs::read_to_string(&path).expect("read");
                let r = RunRecord::from_yaml(&text, &path.display().to_string()).expect("parse");
                assert!(path.to_string_lossy().contains(&format!("_run_id={}_", r.run_id)));
                assert_eq!(r.to_yaml(), text);
                n += 1;
            }
        }
    }
    assert_eq!(n, 6);
}

fn hash_vector(kind: &str, key: &str) -> Key {
    match kind {
        "int" => Key::Int(key.parse().expect("int key")),
        "str" => Key::Str(key.to_string()),
        "bytes" => Key::Bytes(
            (0..key.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&key[i..i + 2], 16).expect("hex"))
                .collect(),
        ),
        other => panic!("unknown vector kind {other}"),
    }
}

/// Every hash vector in docs/FORMAT.md and expected.json holds.
#[test]
fn hash_vectors_hold() {
    // docs/FORMAT.md's table.
    let table: [(Key, u64, u32, u32); 8] = [
        (Key::Int(0), 14374147212387527897, 1, 4),
        (Key::Int(1), 3439722301264460078, 2, 4),
        (Key::Int(-1), 5841669975847748627, 3, 4),
        (Key::Int(i64::MAX), 11687913294787043142, 2, 4),
        (Key::Str(String::new()), 3244421341483603138, 1, 3),
        (Key::Str("user:0".into()), 9296640054432561966, 0, 3),
        (Key::Str("héllo".into()), 7657728615535385375, 2, 3),
        (Key::Bytes(b"abc".to_vec()), 8696274497037089104, 0, 4),
    ];
    for (key, digest, db, n) in table {
        assert_eq!(shard_hash(&key).expect("hash"), digest, "{key:?}");
        let enc = if matches!(key, Key::Int(_)) {
            KeyEncoding::U64Be
        } else {
            KeyEncoding::Raw
        };
        let router = Router::hash(n, enc).expect("router");
        assert_eq!(router.route_key(&key).expect("route"), Routed::Db(db), "{key:?} of {n}");
    }
    let four = Router::hash(4, KeyEncoding::U64Be).expect("router");
    let routes: Vec<u32> = (0..10)
        .map(|k| match four.route_key(&Key::Int(k)).expect("route") {
            Routed::Db(d) => d,
            Routed::UnknownToken => panic!("hash routing has no tokens"),
        })
        .collect();
    assert_eq!(routes, vec![1, 2, 3, 1, 0, 0, 3, 3, 2, 3]);

    // expected.json's vectors.
    let exp = expected();
    let mut n = 0;
    for (kind, vectors) in exp["hash_vectors"].as_object().expect("vectors") {
        for (key, v) in vectors.as_object().expect("kind") {
            let k = hash_vector(kind, key);
            assert_eq!(
                shard_hash(&k).expect("hash"),
                v["xxh3_64"].as_u64().expect("digest"),
                "{kind} {key}"
            );
            for (field, num_dbs) in [("mod4", 4u32), ("mod3", 3)] {
                if let Some(want) = v.get(field) {
                    let r = Router::hash(num_dbs, KeyEncoding::Raw).expect("router");
                    let want = u32::try_from(want.as_u64().expect("db")).expect("small");
                    assert_eq!(
                        r.route_key(&k).expect("route"),
                        Routed::Db(want),
                        "{kind} {key} {field}"
                    );
                }
            }
            n += 1;
        }
    }
    assert_eq!(n, 14);
}

/// The routes expected.json records for the fixture snapshots hold with the
/// router built from each snapshot's own manifest.
#[test]
fn fixture_routes_hold() {
    let exp = expected();
    for (route_key, snap) in [
        ("hash_int_route", "hash_int"),
        ("hash_str_route", "hash_str"),
        ("cel_direct_route", "cel_direct"),
    ] {
        let m = current_manifest(snap);
        let router = Router::for_build(&m.build).expect("router");
        for (key, want) in exp["read"][route_key].as_object().expect("routes") {
            let k = sf_router::parse_key(key, m.build.key_encoding).expect("key");
            let want = u32::try_from(want.as_u64().expect("db")).expect("small");
            assert_eq!(router.route_key(&k).expect("route"), Routed::Db(want), "{snap} {key}");
        }
    }
}

fn current_manifest(snap: &str) -> Manifest {
    let cur = fixture_dir().join("sqlite-bucket-golden").join(snap).join("_CURRENT");
    let p = CurrentPointer::from_json_bytes(&std::fs::read(cur).expect("read"), snap).expect("parse");
    read_manifest(&fixture_path_for(&p.manifest_ref))
}

/// Every row stored in the fixtures' SQLite shards sits in the shard the
/// router names, and the shard's key range and row count agree with the
/// manifest.
#[test]
fn fixture_rows_sit_in_the_shards_the_router_names() {
    let mut rows_checked = 0;
    for path in manifest_files() {
        if !path.to_string_lossy().contains("sqlite-bucket-golden") {
            continue;
        }
        let m = read_manifest(&path);
        let router = Router::for_build(&m.build).expect("router");
        for shard in &m.shards {
            let db = fixture_path_for(shard.db_url.as_deref().expect("db_url")).join("shard.db");
            let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open shard");
            let mut stmt = conn.prepare("SELECT k, v FROM kv ORDER BY k").expect("prepare");
            let rows: Vec<(Vec<u8>, Vec<u8>)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("query")
                .map(|r| r.expect("row"))
                .collect();
            assert_eq!(rows.len() as u64, shard.row_count, "{}", db.display());
            let keys: Vec<Key> = rows
                .iter()
                .map(|(k, _)| decode_key(k, m.build.key_encoding).expect("decode"))
                .collect();
            assert_eq!(keys.first(), shard.min_key.as_ref());
            assert_eq!(keys.last(), shard.max_key.as_ref());
            if !router.needs_context() {
                // The Arrow kernel agrees with the row router on the stored keys.
                let column: arrow::array::ArrayRef = match m.build.key_encoding {
                    KeyEncoding::Utf8 => Arc::new(arrow::array::StringArray::from(
                        keys.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
                    )),
                    _ => Arc::new(arrow::array::Int64Array::from(
                        keys.iter()
                            .map(|k| match k {
                                Key::Int(i) => *i,
                                other => panic!("integer key expected, got {other:?}"),
                            })
                            .collect::<Vec<_>>(),
                    )),
                };
                let batch = arrow::array::RecordBatch::try_from_iter([("k", column)]).expect("batch");
                let ids = router.route_batch(&batch, "k").expect("kernel");
                assert!(
                    ids.values().iter().all(|d| *d == shard.db_id.0),
                    "kernel routes {} elsewhere",
                    db.display()
                );
            }
            for (key, (raw, _)) in keys.iter().zip(&rows) {
                assert_eq!(&encode_key(key, m.build.key_encoding).expect("encode"), raw);
                if m.build.sharding.strategy == ShardingStrategy::Cel && router.needs_context() {
                    // cel_cat routes by a `region` column the shards do not
                    // store; its rows are checked by categorical reads instead.
                    continue;
                }
                assert_eq!(
                    router.route_key(key).expect("route"),
                    Routed::Db(shard.db_id.0),
                    "{key:?} in {}",
                    db.display()
                );
                rows_checked += 1;
            }
        }
    }
    assert_eq!(
        rows_checked,
        10 + 10 + 8 + 10,
        "hash_int (two runs), hash_str and cel_direct rows"
    );
}
