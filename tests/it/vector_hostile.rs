//! Hostile vector shards, end to end: a unified snapshot built by the real
//! `sf-write`, then one of its tables damaged in every shard with SQLite
//! (a `vec_index` chunk whose vectors blob is cut short, a `vec_id_map`
//! row that is not JSON or whose id has the wrong type, a `vec_payloads`
//! row that is not a JSON object). With the manifest left as it was, the
//! shard's checksum refuses the file; with the manifest republished to
//! match the damaged file, the search code itself meets the bad data.
//! Either way a search of that snapshot is one clear error, every time it
//! is asked (no hang), in download and memory mode, through the reader and
//! through a running `sf-serve` over HTTP and gRPC, while gets of the same
//! snapshot, searches of a healthy one and the process itself carry on.

use std::path::Path;

use object_store::PutPayload;
use serde_json::{Value, json};
use sf_manifest::format::layout;
use sf_manifest::format::manifest::CHECKSUM_KEY;
use sf_manifest::format::vector::{Metric, VectorId};
use sf_manifest::{Key, ManifestStore};
use sf_reader::{SearchOptions, SqliteMode};
use sf_tests::manifest_store;
use sf_tests::readers::{open, settings};
use sf_tests::serve::{ServeProcess, call, kind};
use sf_tests::tamper::{current_manifest, publish_over};
use sf_tests::writer_support::write_parquet;

use crate::vector_build::{Rows, build, unified_job};

/// One damage: a name, the SQL run over every shard, and what the error
/// names.
struct Damage {
    name: &'static str,
    sql: &'static str,
    says: &'static str,
}

const DAMAGES: [Damage; 4] = [
    Damage {
        name: "truncated-chunk",
        sql: "UPDATE vec_index_vector_chunks00 SET vectors = substr(vectors, 1, length(vectors) - 4)",
        says: "bytes of vectors",
    },
    Damage {
        name: "malformed-id",
        sql: r#"UPDATE vec_id_map SET original_id = '{"v": 1, '"#,
        says: "is not JSON",
    },
    Damage {
        name: "wrong-type-id",
        sql: r#"UPDATE vec_id_map SET original_id = '{"v": [1], "t": "int"}'"#,
        says: "is not an integer",
    },
    Damage {
        name: "payload-not-object",
        sql: "UPDATE vec_payloads SET payload = '[1, 2]'",
        says: "is not a JSON object",
    },
];

const ROWS: usize = 120;

/// Builds the unified snapshot of `dir/in.parquet` under `dir/name`;
/// returns its prefix.
fn build_snapshot(dir: &Path, name: &str) -> String {
    let prefix = dir.join(name).display().to_string();
    let (_, code, err) = build(dir, &unified_job("in.parquet", "parquet", &prefix, "l2", ""));
    assert_eq!(code, Some(0), "{err}");
    prefix
}

/// Runs `sql` over every shard file of the snapshot under `prefix`; with
/// `matching`, republishes the manifest with each damaged file's checksum
/// and size, so nothing but the search code can refuse it.
async fn damage(prefix: &str, sql: &str, matching: bool) {
    let s = manifest_store(prefix);
    let (mut manifest, _) = current_manifest(prefix).await;
    let work = tempfile::tempdir().expect("tmp");
    for row in &mut manifest.shards {
        let key = layout::locate(s.prefix_url(), None, row.db_url.as_deref().expect("db_url")).expect("key");
        let path = s.location().path_of(&format!("{key}/{}", layout::SQLITE_SHARD_FILE));
        let bytes = s
            .object_store()
            .get(&path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        let file = work.path().join(format!("{}.db", row.db_id.0));
        std::fs::write(&file, &bytes).expect("write");
        let conn = rusqlite::Connection::open(&file).expect("open");
        let changed = conn.execute(sql, []).expect("damage");
        assert!(changed > 0, "{sql} changed nothing in shard {}", row.db_id);
        drop(conn);
        let damaged = std::fs::read(&file).expect("read");
        assert_ne!(damaged, bytes.to_vec(), "the file changed");
        let (checksum, size) = sf_manifest::format::checksum::hash_file(&file).expect("hash");
        s.object_store()
            .put(&path, PutPayload::from(damaged))
            .await
            .expect("put");
        row.db_bytes = size;
        row.writer_info.extra.insert(CHECKSUM_KEY.into(), Value::from(checksum));
    }
    if matching {
        publish_over(prefix, &manifest).await;
    }
}

/// A search of the reader's snapshot fails twice the same way, naming
/// `says`; gets still answer (unless `gets` is false: the file was
/// refused whole).
async fn assert_search_refused(prefix: &str, mode: SqliteMode, rows: &Rows, says: &str, gets: bool) {
    let cache = tempfile::tempdir().expect("cache");
    let reader = open(prefix, settings(mode, cache.path())).await;
    let q = &rows.vectors[3];
    for _ in 0..2 {
        let e = reader
            .search(q, &SearchOptions::default())
            .await
            .expect_err("a damaged shard");
        assert!(e.to_string().contains(says), "{mode:?}: {says:?} not in {e}");
    }
    if gets {
        let v = reader.get(&Key::Int(rows.ids[3])).await.expect("get").expect("present");
        assert_eq!(
            serde_json::from_slice::<Value>(&v).expect("json"),
            json!({ "name": format!("user-{}", rows.ids[3]) })
        );
    }
    reader.close();
}

async fn assert_search_answers(prefix: &str, mode: SqliteMode, rows: &Rows) {
    let cache = tempfile::tempdir().expect("cache");
    let reader = open(prefix, settings(mode, cache.path())).await;
    let q = &rows.vectors[3];
    let found = reader.search(q, &SearchOptions::default()).await.expect("search");
    let want: Vec<VectorId> = rows
        .exact(Metric::L2, q, 10)
        .iter()
        .map(|(id, _)| VectorId::Int(*id))
        .collect();
    assert_eq!(found.hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>(), want);
    reader.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_vector_tables_cost_one_clear_error_per_search() {
    let dir = tempfile::tempdir().expect("tmp");
    let rows = Rows::new(ROWS, 71);
    write_parquet(&dir.path().join("in.parquet"), &[rows.batch()]);
    let good = build_snapshot(dir.path(), "good");
    let mut bad = Vec::new();
    for d in &DAMAGES {
        let prefix = build_snapshot(dir.path(), d.name);
        damage(&prefix, d.sql, true).await;
        bad.push(prefix);
    }
    // The same damage behind the manifest's back: the checksum refuses
    // the file before any table is read.
    let unmatched = build_snapshot(dir.path(), "unmatched");
    damage(&unmatched, DAMAGES[3].sql, false).await;

    for mode in [SqliteMode::Download, SqliteMode::Memory] {
        for (d, prefix) in DAMAGES.iter().zip(&bad) {
            assert_search_refused(prefix, mode, &rows, d.says, true).await;
        }
        assert_search_refused(&unmatched, mode, &rows, "checksum", false).await;
        assert_search_answers(&good, mode, &rows).await;
    }

    // One sf-serve with all of them: each damaged snapshot answers its
    // searches with one error, twice alike, over HTTP and gRPC; the
    // healthy one answers, and the process lives.
    let mut served: Vec<(String, String)> = vec![("good".into(), good.clone())];
    served.extend(DAMAGES.iter().zip(&bad).map(|(d, p)| (d.name.to_string(), p.clone())));
    served.push(("unmatched".into(), unmatched.clone()));
    let pairs: Vec<(&str, &str)> = served.iter().map(|(n, p)| (n.as_str(), p.as_str())).collect();
    let mut serve = ServeProcess::serving(&pairs, &["--sqlite-mode", "memory", "--grpc-listen", "127.0.0.1:0"]);
    serve.wait_ready().await;
    let body = json!({ "vector": rows.vectors[3], "top_k": 5 });
    let mut g = serve.grpc_client().await;
    let request = |snapshot: &str| sf_server::grpc::proto::SearchRequest {
        snapshot: snapshot.into(),
        queries: vec![sf_server::grpc::proto::Query {
            vector: rows.vectors[3].clone(),
        }],
        top_k: 5,
        ..Default::default()
    };
    let want: Vec<Value> = rows
        .exact(Metric::L2, &rows.vectors[3], 5)
        .iter()
        .map(|(id, _)| json!(id))
        .collect();
    for (name, _) in &served[1..] {
        let path = format!("/v1/snapshots/{name}/search");
        let (st, _, answer) = call(serve.post_json(&path, &body)).await;
        assert!(st >= 500, "{name}: {st} {answer}");
        assert_eq!(kind(&answer), "shard_unavailable", "{name}: {answer}");
        let (st2, _, again) = call(serve.post_json(&path, &body)).await;
        assert_eq!((st2, kind(&again)), (st, kind(&answer)), "{name}: the same error again");
        let e = g.search(request(name)).await.expect_err("a damaged snapshot");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{name}: {e:?}");

        let (st, _, answer) = call(serve.post_json("/v1/snapshots/good/search", &body)).await;
        assert_eq!(st, 200, "{answer}");
        let ids: Vec<Value> = answer["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["id"].clone())
            .collect();
        assert_eq!(ids, want);
        let answer = g.search(request("good")).await.expect("good search").into_inner();
        assert_eq!(answer.results[0].hits.len(), 5);
    }
    // A get of a damaged-vector snapshot still answers.
    let (st, _, value) = call(serve.get(&format!("/v1/snapshots/{}/keys/{}", DAMAGES[1].name, rows.ids[3]))).await;
    assert_eq!(st, 200, "{value}");
    assert_eq!(serve.get("/livez").send().await.expect("livez").status(), 200);
    assert!(serve.running(), "the process is alive");
    let log = serve.stderr();
    for d in &DAMAGES {
        assert!(log.contains(d.says), "the log says why ({:?}):\n{log}", d.says);
    }
    assert!(serve.terminate().success());
}
