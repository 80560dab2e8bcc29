//! Vector snapshots built by the real `sf-write` (docs/vectors.md): a
//! unified job (`[vector]` on a key-value job) from Parquet and CSV, on
//! files and on S3, searched with the real reader in every read mode and
//! with `sf-read search`, against an exhaustive search computed here over
//! the input; gets on the same snapshot; the shard files in the
//! reference's layout (tables, rowids, id-map JSON, `custom.vector`); and
//! every refusal: invalid vectors (exit 3, or skipped and counted),
//! `dot`, SlateDB shards, unknown columns (exit 2).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeListArray, Int64Array, ListArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema};
use serde_json::{Value, json};
use sf_manifest::format::vector::{Metric, VectorId};
use sf_manifest::{Key, ManifestStore};
use sf_reader::SearchOptions;
use sf_tests::readers::{SQLITE_MODES, read_in_every_mode};
use sf_tests::writer_support::{binary, write_csv, write_parquet};
use sf_tests::{manifest_store, s3_prefix};

pub(crate) const DIM: usize = 8;

/// Deterministic pseudo-random numbers (xorshift), so a failure repeats.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// The input rows: id, name, tag, vector.
pub(crate) struct Rows {
    pub(crate) ids: Vec<i64>,
    pub(crate) vectors: Vec<Vec<f32>>,
}

impl Rows {
    pub(crate) fn new(n: usize, seed: u64) -> Rows {
        let mut rng = Rng(seed);
        Rows {
            ids: (0..n as i64).map(|i| i * 7 + 3).collect(),
            vectors: (0..n).map(|_| (0..DIM).map(|_| rng.next()).collect()).collect(),
        }
    }

    fn name(id: i64) -> String {
        format!("user-{id}")
    }

    pub(crate) fn tag(id: i64) -> String {
        ["red", "green", "blue"][(id % 3) as usize].to_string()
    }

    /// With the vector as a list of f32 (Parquet).
    pub(crate) fn batch(&self) -> RecordBatch {
        let emb = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
            self.vectors
                .iter()
                .map(|v| Some(v.iter().map(|x| Some(*x)).collect::<Vec<_>>())),
            DIM as i32,
        );
        self.with_vector(Arc::new(emb))
    }

    /// With the vector as JSON text (CSV has no lists).
    fn text_batch(&self) -> RecordBatch {
        let emb = StringArray::from_iter_values(self.vectors.iter().map(|v| {
            let parts: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
            format!("[{}]", parts.join(", "))
        }));
        self.with_vector(Arc::new(emb))
    }

    fn with_vector(&self, emb: ArrayRef) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("name", DataType::Utf8, false),
                Field::new("tag", DataType::Utf8, false),
                Field::new("emb", emb.data_type().clone(), true),
            ])),
            vec![
                Arc::new(Int64Array::from(self.ids.clone())),
                Arc::new(StringArray::from_iter_values(self.ids.iter().map(|i| Rows::name(*i)))),
                Arc::new(StringArray::from_iter_values(self.ids.iter().map(|i| Rows::tag(*i)))),
                emb,
            ],
        )
        .expect("batch")
    }

    /// The exhaustive search: every vector's distance, nearest first.
    pub(crate) fn exact(&self, metric: Metric, q: &[f32], k: usize) -> Vec<(i64, f64)> {
        let mut all: Vec<(i64, f64)> = self
            .ids
            .iter()
            .zip(&self.vectors)
            .map(|(id, v)| (*id, sf_router::vector::distance(metric, q, v)))
            .collect();
        all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }
}

fn sf_write(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary("sf-write"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sf-write")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// Writes `job` as job.toml in `dir` and builds it; returns the JSON
/// report, the exit code and stderr.
pub(crate) fn build(dir: &Path, job: &str) -> (Value, Option<i32>, String) {
    std::fs::write(dir.join("job.toml"), job).expect("job file");
    let out = sf_write(dir, &["--config", "job.toml", "--json", "--progress", "off"]);
    let report = text(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or(Value::Null);
    (report, out.status.code(), text(&out.stderr))
}

pub(crate) fn unified_job(input: &str, format: &str, prefix: &str, metric: &str, extra: &str) -> String {
    format!(
        r#"
key_col = "id"
[input]
format = "{format}"
path = "{input}"
[value]
json_cols = ["name"]
[routing]
num_dbs = 3
[output]
prefix = "{prefix}"
[vector]
column = "emb"
dim = {DIM}
metric = "{metric}"
payload_columns = ["tag"]
{extra}
"#
    )
}

/// Searches the snapshot under `prefix` in every read mode and with
/// `sf-read search`, and reads its keys back.
async fn check_unified(prefix: &str, rows: &Rows, metric: Metric) {
    let mut rng = Rng(99);
    let queries: Vec<Vec<f32>> = (0..4)
        .map(|i| {
            if i == 0 {
                rows.vectors[17].clone()
            } else {
                (0..DIM).map(|_| rng.next()).collect()
            }
        })
        .collect();
    let top_k = 10;
    read_in_every_mode(prefix, &SQLITE_MODES, async |reader| {
        for q in &queries {
            let found = reader
                .search(
                    q,
                    &SearchOptions {
                        top_k,
                        ..SearchOptions::default()
                    },
                )
                .await
                .expect("search");
            let want = rows.exact(metric, q, top_k);
            let got: Vec<VectorId> = found.hits.iter().map(|h| h.id.clone()).collect();
            let want_ids: Vec<VectorId> = want.iter().map(|(id, _)| VectorId::Int(*id)).collect();
            assert_eq!(got, want_ids, "ids, nearest first");
            for (hit, (id, score)) in found.hits.iter().zip(&want) {
                assert!((hit.score - score).abs() < 1e-5, "{id}: {} vs {score}", hit.score);
                assert_eq!(hit.payload, Some(json!({ "tag": Rows::tag(*id) })), "{id}");
            }
            assert_eq!(found.shards.len(), 3, "a unified search asks every shard");
        }
        // The self-match is first, at distance ~0.
        let me = reader
            .search(&rows.vectors[17], &SearchOptions::default())
            .await
            .expect("search");
        assert_eq!(me.hits[0].id, VectorId::Int(rows.ids[17]));
        assert!(me.hits[0].score.abs() < 1e-5);
        // Gets keep working.
        for id in rows.ids.iter().step_by(37) {
            let v = reader.get(&Key::Int(*id)).await.expect("get").expect("present");
            let v: Value = serde_json::from_slice(&v).expect("json value");
            assert_eq!(v, json!({ "name": Rows::name(*id) }));
        }
        assert_eq!(reader.get(&Key::Int(1_000_000)).await.expect("get"), None);
    })
    .await;

    // sf-read search, one line per query on stdin.
    let cache = tempfile::tempdir().expect("cache");
    let mut cmd = std::process::Command::new(binary("sf-read"));
    cmd.arg("--current-url")
        .arg(prefix)
        .args(["search", "--vector", "-", "--top-k", "5"])
        .env("SF_CACHE_DIR", cache.path())
        .env_remove("SF_CURRENT_URL");
    let input: String = queries
        .iter()
        .map(|q| format!("{}\n", serde_json::to_string(q).expect("json")))
        .collect();
    let out = sf_tests::writer_support::output_with_input(&mut cmd, Some(&input));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), queries.len(), "{stdout}");
    for (line, q) in lines.iter().zip(&queries) {
        let got: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let ids: Vec<Value> = got["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["id"].clone())
            .collect();
        let want: Vec<Value> = rows.exact(metric, q, 5).iter().map(|(id, _)| json!(id)).collect();
        assert_eq!(ids, want, "{line}");
    }
}

/// The published manifest's `custom.vector`, and each shard file's tables
/// as the reference lays them out.
async fn check_layout(prefix: &str, rows: &Rows, metric: &str, local: Option<&Path>) {
    let store = manifest_store(prefix);
    let current = store.load_current().await.expect("current").expect("published");
    let manifest = store
        .load_manifest(&current.pointer.manifest_ref)
        .await
        .expect("manifest");
    assert_eq!(
        manifest.build.custom["vector"],
        json!({"backend": "sqlite-vec", "dim": DIM, "index_type": "hnsw", "kv_backend": "sqlite-vec",
               "metric": metric, "quantization": null, "unified": true})
    );
    let Some(local) = local else {
        return;
    };
    let mut seen = 0;
    for shard in &manifest.shards {
        let url = shard.db_url.as_deref().expect("written shard");
        let rel = url.split_once("/shards/").map(|(_, r)| r).expect("under the prefix");
        let path = local.join("shards").join(rel).join("shard.db");
        let conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open shard");
        let tables: Vec<String> = conn
            .prepare("SELECT sql FROM sqlite_master WHERE type = 'table' AND name IN ('kv', 'vec_index', 'vec_payloads', 'vec_id_map') ORDER BY rowid")
            .expect("schema")
            .query_map([], |r| r.get(0))
            .expect("schema rows")
            .collect::<Result<_, _>>()
            .expect("schema rows");
        assert_eq!(
            tables,
            vec![
                "CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID".to_string(),
                format!("CREATE VIRTUAL TABLE vec_index USING vec0(embedding float[{DIM}] distance_metric={metric})"),
                "CREATE TABLE vec_payloads (rowid INTEGER PRIMARY KEY, payload TEXT NOT NULL)".to_string(),
                "CREATE TABLE vec_id_map (internal_id INTEGER PRIMARY KEY, original_id TEXT NOT NULL)".to_string(),
            ]
        );
        let version: String = conn
            .query_row(
                "SELECT value FROM vec_index_info WHERE key = 'CREATE_VERSION'",
                [],
                |r| r.get(0),
            )
            .expect("vec0 version");
        assert_eq!(version, "v0.1.9");
        let ids: Vec<(i64, String)> = conn
            .prepare("SELECT internal_id, original_id FROM vec_id_map ORDER BY internal_id")
            .expect("ids")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("id rows")
            .collect::<Result<_, _>>()
            .expect("id rows");
        let n = ids.len() as i64;
        assert_eq!(n as u64, shard.row_count, "one vector per kv row");
        assert_eq!(
            ids.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            (0..n).collect::<Vec<_>>()
        );
        for (_, text) in &ids {
            let id = text
                .strip_prefix("{\"v\": ")
                .and_then(|t| t.strip_suffix(", \"t\": \"int\"}"))
                .unwrap_or_else(|| panic!("{text} is not the reference's id JSON"));
            assert!(rows.ids.contains(&id.parse().expect("int id")));
        }
        let payloads: i64 = conn
            .query_row(
                "SELECT count(*) FROM vec_payloads WHERE rowid BETWEEN 0 AND ?1",
                [n - 1],
                |r| r.get(0),
            )
            .expect("payloads");
        assert_eq!(payloads, n);
        let size = std::fs::metadata(&path).expect("size").len();
        assert_eq!(size, shard.db_bytes, "the manifest's size is the final file's");
        seen += n;
    }
    assert_eq!(seen as usize, rows.ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unified_from_parquet_on_files_searches_like_an_exhaustive_scan() {
    let dir = tempfile::tempdir().expect("tmp");
    let rows = Rows::new(300, 7);
    write_parquet(&dir.path().join("in.parquet"), &[rows.batch()]);
    let out = dir.path().join("out");
    let prefix = out.display().to_string();
    let (report, code, err) = build(dir.path(), &unified_job("in.parquet", "parquet", &prefix, "cosine", ""));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(report["rows"], 300, "{report}");
    assert_eq!(report["vectors_skipped"], 0, "{report}");
    check_layout(&prefix, &rows, "cosine", Some(&out)).await;
    check_unified(&prefix, &rows, Metric::Cosine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unified_from_csv_on_s3_under_l2() {
    let dir = tempfile::tempdir().expect("tmp");
    let rows = Rows::new(250, 11);
    write_csv(&dir.path().join("in.csv"), &[rows.text_batch()]);
    let prefix = s3_prefix("vector-unified-csv");
    let (report, code, err) = build(dir.path(), &unified_job("in.csv", "csv", &prefix, "l2", ""));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(report["rows"], 250, "{report}");
    check_layout(&prefix, &rows, "l2", None).await;
    check_unified(&prefix, &rows, Metric::L2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unified_from_parquet_on_s3_with_text_ids() {
    // Ids from a text column other than the key; Float64 lists coerced.
    let dir = tempfile::tempdir().expect("tmp");
    let rows = Rows::new(120, 5);
    let b = rows.batch();
    let emb = ListArray::from_iter_primitive::<Float64Type, _, _>(
        rows.vectors
            .iter()
            .map(|v| Some(v.iter().map(|x| Some(f64::from(*x))).collect::<Vec<_>>())),
    );
    let doc = StringArray::from_iter_values(rows.ids.iter().map(|i| format!("doc-{i}")));
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            b.schema().field(0).clone(),
            b.schema().field(1).clone(),
            Field::new("doc", DataType::Utf8, false),
            Field::new("emb", emb.data_type().clone(), true),
        ])),
        vec![
            Arc::clone(b.column(0)),
            Arc::clone(b.column(1)),
            Arc::new(doc),
            Arc::new(emb),
        ],
    )
    .expect("batch");
    write_parquet(&dir.path().join("in.parquet"), &[batch]);
    let prefix = s3_prefix("vector-unified-ids");
    let job = format!(
        r#"
key_col = "id"
[input]
format = "parquet"
path = "in.parquet"
[routing]
num_dbs = 2
[output]
prefix = "{prefix}"
[vector]
column = "emb"
dim = {DIM}
metric = "cosine"
id_column = "doc"
"#
    );
    let (_, code, err) = build(dir.path(), &job);
    assert_eq!(code, Some(0), "{err}");
    read_in_every_mode(&prefix, &SQLITE_MODES, async |reader| {
        let q = &rows.vectors[3];
        let found = reader.search(q, &SearchOptions::default()).await.expect("search");
        let want: Vec<VectorId> = rows
            .exact(Metric::Cosine, q, 10)
            .iter()
            .map(|(id, _)| VectorId::Str(format!("doc-{id}")))
            .collect();
        assert_eq!(found.hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>(), want);
        assert!(
            found.hits.iter().all(|h| h.payload.is_none()),
            "no payload columns, no payloads"
        );
        // The default value leaves the vector out: it is in the index.
        let v = reader.get(&Key::Int(rows.ids[3])).await.expect("get").expect("present");
        let v: Value = serde_json::from_slice(&v).expect("json");
        assert_eq!(
            v,
            json!({"doc": format!("doc-{}", rows.ids[3]), "name": Rows::name(rows.ids[3])})
        );
    })
    .await;
}

/// A Parquet input whose row `bad` (key `bad * 7 + 3`) has `vector`.
fn with_bad_row(dir: &Path, bad: usize, vector: Option<Vec<f64>>) {
    let rows = Rows::new(40, 3);
    let mut vectors: Vec<Option<Vec<Option<f64>>>> = rows
        .vectors
        .iter()
        .map(|v| Some(v.iter().map(|x| Some(f64::from(*x))).collect()))
        .collect();
    vectors[bad] = vector.map(|v| v.into_iter().map(Some).collect());
    let emb = ListArray::from_iter_primitive::<Float64Type, _, _>(vectors);
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("tag", DataType::Utf8, false),
            Field::new("emb", emb.data_type().clone(), true),
        ])),
        vec![
            Arc::new(Int64Array::from(rows.ids.clone())),
            Arc::new(StringArray::from_iter_values(rows.ids.iter().map(|i| Rows::name(*i)))),
            Arc::new(StringArray::from_iter_values(rows.ids.iter().map(|i| Rows::tag(*i)))),
            Arc::new(emb),
        ],
    )
    .expect("batch");
    write_parquet(&dir.join("in.parquet"), &[batch]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_vectors_are_refused_naming_the_key_or_skipped_and_counted() {
    let cases: Vec<(Option<Vec<f64>>, &str)> = vec![
        (
            Some(vec![0.5; DIM - 1]),
            "has 7 components, the snapshot's dimension is 8",
        ),
        (
            Some([vec![f64::NAN], vec![0.5; DIM - 1]].concat()),
            "component 0 is NaN",
        ),
        (
            Some([vec![0.5; DIM - 1], vec![f64::INFINITY]].concat()),
            "component 7 is inf",
        ),
        (Some(vec![0.0; DIM]), "is zero, which has no cosine distance"),
        (None, "is null"),
    ];
    for (vector, why) in cases {
        let dir = tempfile::tempdir().expect("tmp");
        with_bad_row(dir.path(), 5, vector.clone());
        let out = dir.path().join("out");
        let prefix = out.display().to_string();
        let (_, code, err) = build(dir.path(), &unified_job("in.parquet", "parquet", &prefix, "cosine", ""));
        assert_eq!(code, Some(3), "{why}: {err}");
        assert!(
            err.contains("row with key 38") && err.contains("column \"emb\"") && err.contains(why),
            "{why}: {err}"
        );
        assert!(!out.join("_CURRENT").exists(), "{why}: nothing published");

        let (report, code, err) = build(
            dir.path(),
            &unified_job("in.parquet", "parquet", &prefix, "cosine", "on_invalid = \"skip\""),
        );
        assert_eq!(code, Some(0), "{why}: {err}");
        assert_eq!(report["vectors_skipped"], 1, "{why}: {report}");
        assert_eq!(report["rows"], 40, "{why}: the row stays");
        read_in_every_mode(&prefix, &SQLITE_MODES[..1], async |reader| {
            assert!(reader.get(&Key::Int(38)).await.expect("get").is_some(), "{why}");
            let found = reader
                .search(
                    &[0.5; DIM],
                    &SearchOptions {
                        top_k: 40,
                        ..SearchOptions::default()
                    },
                )
                .await
                .expect("search");
            assert_eq!(found.hits.len(), 39, "{why}");
            assert!(!found.hits.iter().any(|h| h.id == VectorId::Int(38)), "{why}");
        })
        .await;
    }
    // Under l2 a zero vector is a vector like any other.
    let dir = tempfile::tempdir().expect("tmp");
    with_bad_row(dir.path(), 5, Some(vec![0.0; DIM]));
    let prefix = dir.path().join("out").display().to_string();
    let (_, code, err) = build(dir.path(), &unified_job("in.parquet", "parquet", &prefix, "l2", ""));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn bad_vector_jobs_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tmp");
    let rows = Rows::new(20, 1);
    write_parquet(&dir.path().join("in.parquet"), &[rows.batch()]);
    let out = dir.path().join("out");
    let prefix = out.display().to_string();
    let cases: Vec<(String, &str)> = vec![
        (
            unified_job("in.parquet", "parquet", &prefix, "dot", ""),
            "vector.metric: \"dot\": sqlite-vec shards cannot store a dot-product index",
        ),
        (
            unified_job("in.parquet", "parquet", &prefix, "dot_product", ""),
            "cannot store a dot-product index",
        ),
        (
            unified_job("in.parquet", "parquet", &prefix, "cosine", "")
                .replace("[output]\n", "[output]\nbackend = \"slatedb\"\n"),
            "vector: vector snapshots are SQLite shards holding a sqlite-vec index; the slatedb backend cannot store one",
        ),
        (
            unified_job("in.parquet", "parquet", &prefix, "cosine", "").replace("dim = 8", "dim = 0"),
            "vector.dim: 0 is not a dimension from 1 to 8192",
        ),
        (
            unified_job("in.parquet", "parquet", &prefix, "cosine", "")
                .replace("column = \"emb\"", "column = \"nope\""),
            "vector.column: \"nope\" is not a column of the input",
        ),
        (
            unified_job("in.parquet", "parquet", &prefix, "cosine", "").replace("column = \"emb\"", "column = \"id\""),
            "vector.column: \"id\" has type Int64; it must be a list of floats",
        ),
        (
            unified_job("in.parquet", "parquet", &prefix, "cosine", "id_column = \"missing\""),
            "vector.id_column: \"missing\" is not a column of the input",
        ),
        (
            unified_job("in.parquet", "parquet", &prefix, "cosine", "").replace("[\"tag\"]", "[\"tag\", \"zzz\"]"),
            "vector.payload_columns: \"zzz\" is not a column of the input",
        ),
        (
            unified_job("in.parquet", "parquet", &prefix, "cosine", "on_invalid = \"ignore\""),
            "on_invalid",
        ),
        (
            unified_job("in.parquet", "parquet", &prefix, "cosine", "") + "[write]\nsort_within_shard = false\n",
            "write.sort_within_shard: a job with [vector] writes each shard's rows in key order",
        ),
    ];
    for (job, want) in cases {
        let (_, code, err) = build(dir.path(), &job);
        assert_eq!(code, Some(2), "{want}: {err}");
        assert!(err.contains(want), "{want}: {err}");
        assert!(!out.exists(), "{want}: nothing written");
    }
    // An environment override reaches the section like any other.
    std::fs::write(
        dir.path().join("job.toml"),
        unified_job("in.parquet", "parquet", &prefix, "cosine", ""),
    )
    .expect("job");
    let o = std::process::Command::new(binary("sf-write"))
        .args(["--config", "job.toml", "--progress", "off"])
        .current_dir(dir.path())
        .env("SF_VECTOR__METRIC", "dot")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("vector.metric"), "{}", text(&o.stderr));
    let o = std::process::Command::new(binary("sf-write"))
        .args(["--config", "job.toml", "--progress", "off"])
        .current_dir(dir.path())
        .env("SF_VECTOR__METRIC", "l2")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

// ---------------------------------------------------------------------
// Vector-only snapshots.

/// 4 Gaussian-ish blobs around distinct centres: clusters worth finding.
fn blobs(n: usize, seed: u64) -> Rows {
    let mut rng = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..4)
        .map(|c| (0..DIM).map(|d| if d % 4 == c { 4.0 } else { -1.0 }).collect())
        .collect();
    Rows {
        ids: (0..n as i64).collect(),
        vectors: (0..n)
            .map(|i| centres[i % 4].iter().map(|x| x + rng.next() * 0.8).collect())
            .collect(),
    }
}

/// The vector-only job of `strategy` (its own keys in `extra`).
fn vector_only_job(input: &str, format: &str, prefix: &str, metric: &str, extra: &str) -> String {
    format!(
        r#"
[input]
format = "{format}"
path = "{input}"
[routing]
num_dbs = 4
[output]
prefix = "{prefix}"
[vector]
column = "emb"
dim = {DIM}
metric = "{metric}"
id_column = "id"
payload_columns = ["tag"]
{extra}
"#
    )
}

fn all_shards(n: u32) -> SearchOptions {
    SearchOptions {
        top_k: 10,
        shard_ids: Some((0..n).map(sf_manifest::DbId).collect()),
        ..SearchOptions::default()
    }
}

/// Searches a vector-only snapshot: every shard asked, the results are the
/// exhaustive search's; each stored vector is found first in its own
/// shard (the first probe); the manifest is the reference's.
async fn check_vector_only(
    prefix: &str,
    rows: &Rows,
    metric: Metric,
    strategy: &str,
    probes: u32,
) -> serde_json::Map<String, Value> {
    let store = manifest_store(prefix);
    let current = store.load_current().await.expect("current").expect("published");
    let manifest = store
        .load_manifest(&current.pointer.manifest_ref)
        .await
        .expect("manifest");
    let custom = manifest.build.custom["vector"]
        .as_object()
        .expect("custom.vector")
        .clone();
    assert_eq!(custom["sharding_strategy"], strategy);
    assert_eq!(custom["dim"], DIM);
    assert_eq!(custom["metric"], metric.as_str());
    assert_eq!(custom["num_probes"], probes);
    assert_eq!(custom["index_type"], "hnsw");
    assert_eq!(custom["quantization"], Value::Null);
    assert_eq!(custom["total_vectors"], rows.ids.len());
    assert!(
        !custom.contains_key("unified") && !custom.contains_key("backend"),
        "{custom:?}"
    );
    assert_eq!(manifest.build.key_col, "_vector_id");
    assert_eq!(manifest.build.key_encoding, sf_manifest::KeyEncoding::Raw);
    assert!(manifest.shards.iter().all(|s| s.row_count > 0 && s.min_key.is_none()));
    assert_eq!(
        manifest.shards.iter().map(|s| s.row_count).sum::<u64>(),
        rows.ids.len() as u64
    );

    let mut rng = Rng(1234);
    read_in_every_mode(prefix, &SQLITE_MODES, async |reader| {
        for i in 0..4 {
            let q: Vec<f32> = if i == 0 {
                rows.vectors[9].clone()
            } else {
                (0..DIM).map(|_| rng.next() * 3.0).collect()
            };
            let found = reader.search(&q, &all_shards(4)).await.expect("search");
            let want = rows.exact(metric, &q, 10);
            let got: Vec<VectorId> = found.hits.iter().map(|h| h.id.clone()).collect();
            assert_eq!(got, want.iter().map(|(id, _)| VectorId::Int(*id)).collect::<Vec<_>>());
            for (hit, (id, score)) in found.hits.iter().zip(&want) {
                assert!((hit.score - score).abs() < 1e-5, "{id}: {} vs {score}", hit.score);
                assert_eq!(hit.payload, Some(json!({ "tag": Rows::tag(*id) })));
            }
        }
        if strategy != "explicit" {
            // A stored vector is in the first shard its own search probes.
            for i in (0..rows.ids.len()).step_by(23) {
                let found = reader
                    .search(
                        &rows.vectors[i],
                        &SearchOptions {
                            top_k: 1,
                            num_probes: Some(1),
                            ..SearchOptions::default()
                        },
                    )
                    .await
                    .expect("search");
                assert_eq!(
                    found.hits[0].id,
                    VectorId::Int(rows.ids[i]),
                    "vector {i} in its routed shard"
                );
            }
        }
    })
    .await;
    custom
}

/// The routing artifact a manifest names, read back.
async fn artifact(url: &str) -> sf_manifest::format::npy::Matrix {
    let loc = sf_manifest::resolve(url, &Default::default()).expect("artifact url");
    let bytes = loc
        .store
        .get(&loc.path)
        .await
        .expect("artifact")
        .bytes()
        .await
        .expect("bytes");
    sf_manifest::format::npy::read(&bytes, url).expect("npy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_only_cluster_trained_from_parquet_on_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let rows = blobs(400, 21);
    write_parquet(&dir.path().join("in.parquet"), &[rows.batch()]);
    let prefix = dir.path().join("out").display().to_string();
    let job = vector_only_job(
        "in.parquet",
        "parquet",
        &prefix,
        "l2",
        "sharding = \"cluster\"\nnum_probes = 2\ntrain_sample = 200\n",
    );
    let (report, code, err) = build(dir.path(), &job);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(report["rows"], 400, "{report}");
    let custom = check_vector_only(&prefix, &rows, Metric::L2, "cluster", 2).await;
    let url = custom["centroids_ref"].as_str().expect("centroids_ref");
    let run = report["run_id"].as_str().expect("run id");
    assert!(
        url.ends_with(&format!("/vector_meta/run_id={run}/centroids.npy")),
        "{url}"
    );
    let m = artifact(url).await;
    assert_eq!((m.rows, m.cols), (4, DIM));
    // Trained again with the same seed and input: the same centroids.
    let again = dir.path().join("again").display().to_string();
    let (report, code, err) = build(dir.path(), &job.replace(&prefix, &again));
    assert_eq!(code, Some(0), "{err}");
    let store = manifest_store(&again);
    let current = store.load_current().await.expect("current").expect("published");
    let manifest = store
        .load_manifest(&current.pointer.manifest_ref)
        .await
        .expect("manifest");
    let url2 = manifest.build.custom["vector"]["centroids_ref"]
        .as_str()
        .expect("ref")
        .to_string();
    assert!(url2.contains(report["run_id"].as_str().expect("run")));
    assert_eq!(artifact(&url2).await, m, "deterministic training");
    // Every shard holds an empty kv table beside the vector tables.
    for shard in &manifest.shards {
        let url = shard.db_url.as_deref().expect("url");
        let rel = url.split_once("/shards/").map(|(_, r)| r).expect("under shards");
        let path = dir.path().join("again/shards").join(rel).join("shard.db");
        let conn =
            rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
        let kv: i64 = conn.query_row("SELECT count(*) FROM kv", [], |r| r.get(0)).expect("kv");
        let ids: i64 = conn
            .query_row("SELECT count(*) FROM vec_id_map", [], |r| r.get(0))
            .expect("ids");
        assert_eq!((kv, ids as u64), (0, shard.row_count));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_only_cluster_with_given_centroids_on_s3() {
    let dir = tempfile::tempdir().expect("tmp");
    let rows = blobs(300, 8);
    write_parquet(&dir.path().join("in.parquet"), &[rows.batch()]);
    let centroids = sf_manifest::format::npy::Matrix {
        rows: 4,
        cols: DIM,
        values: (0..4)
            .flat_map(|c| (0..DIM).map(move |d| if d % 4 == c { 4.0 } else { -1.0 }))
            .collect(),
    };
    std::fs::write(
        dir.path().join("centroids.npy"),
        sf_manifest::format::npy::write_f32(&centroids),
    )
    .expect("npy");
    let prefix = s3_prefix("vector-cluster-given");
    // num_dbs comes from the centroids.
    let job = vector_only_job(
        "in.parquet",
        "parquet",
        &prefix,
        "cosine",
        "sharding = \"cluster\"\ncentroids = \"centroids.npy\"\n",
    )
    .replace("[routing]\nnum_dbs = 4\n", "");
    let (_, code, err) = build(dir.path(), &job);
    assert_eq!(code, Some(0), "{err}");
    let custom = check_vector_only(&prefix, &rows, Metric::Cosine, "cluster", 1).await;
    assert_eq!(
        artifact(custom["centroids_ref"].as_str().expect("ref")).await,
        centroids
    );
    // Centroids that do not match the job are refused before anything is written.
    let bad = vector_only_job(
        "in.parquet",
        "parquet",
        &prefix,
        "cosine",
        "sharding = \"cluster\"\ncentroids = \"centroids.npy\"\n",
    )
    .replace("num_dbs = 4", "num_dbs = 3");
    let (_, code, err) = build(dir.path(), &bad);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("vector.centroids") && err.contains("holds 4 centroids"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_only_lsh_from_csv_on_s3() {
    let dir = tempfile::tempdir().expect("tmp");
    let rows = Rows::new(300, 17);
    write_csv(&dir.path().join("in.csv"), &[rows.text_batch()]);
    let prefix = s3_prefix("vector-lsh-csv");
    let job = vector_only_job(
        "in.csv",
        "csv",
        &prefix,
        "cosine",
        "sharding = \"lsh\"\nnum_hash_bits = 4\nnum_probes = 2\nseed = 7\n",
    );
    let (_, code, err) = build(dir.path(), &job);
    assert_eq!(code, Some(0), "{err}");
    let custom = check_vector_only(&prefix, &rows, Metric::Cosine, "lsh", 2).await;
    assert_eq!(custom["num_hash_bits"], 4);
    let m = artifact(custom["hyperplanes_ref"].as_str().expect("hyperplanes_ref")).await;
    assert_eq!(
        m,
        sf_router::vector::random_hyperplanes(4, DIM, 7),
        "seeded hyperplanes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_only_explicit_lists_only_its_non_empty_shards() {
    let dir = tempfile::tempdir().expect("tmp");
    let rows = Rows::new(200, 4);
    let b = rows.batch();
    // Shards 0..3 of 4: shard 3 stays empty.
    let shard = Int64Array::from_iter_values(rows.ids.iter().map(|i| i % 3));
    let mut fields: Vec<Field> = b.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("shard", DataType::Int64, false));
    let mut cols = b.columns().to_vec();
    cols.push(Arc::new(shard));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("batch");
    write_parquet(&dir.path().join("in.parquet"), &[batch]);
    let prefix = dir.path().join("out").display().to_string();
    let job = vector_only_job(
        "in.parquet",
        "parquet",
        &prefix,
        "l2",
        "sharding = \"explicit\"\nshard_id_column = \"shard\"\n",
    );
    let (_, code, err) = build(dir.path(), &job);
    assert_eq!(code, Some(0), "{err}");
    let custom = check_vector_only(&prefix, &rows, Metric::L2, "explicit", 1).await;
    assert!(!custom.contains_key("centroids_ref") && !custom.contains_key("hyperplanes_ref"));
    let store = manifest_store(&prefix);
    let current = store.load_current().await.expect("current").expect("published");
    let manifest = store
        .load_manifest(&current.pointer.manifest_ref)
        .await
        .expect("manifest");
    assert_eq!(manifest.build.num_dbs, 4);
    assert_eq!(
        manifest.shards.iter().map(|s| s.db_id.0).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    // One shard asked: the exhaustive search of that shard's vectors.
    let reader = sf_tests::readers::open(
        &prefix,
        sf_tests::readers::settings(sf_reader::SqliteMode::Download, dir.path()),
    )
    .await;
    let q = rows.vectors[0].clone();
    let found = reader
        .search(
            &q,
            &SearchOptions {
                top_k: 5,
                shard_ids: Some(vec![sf_manifest::DbId(1)]),
                ..SearchOptions::default()
            },
        )
        .await
        .expect("search");
    let one = Rows {
        ids: rows.ids.iter().copied().filter(|i| i % 3 == 1).collect(),
        vectors: rows
            .ids
            .iter()
            .zip(&rows.vectors)
            .filter(|(i, _)| *i % 3 == 1)
            .map(|(_, v)| v.clone())
            .collect(),
    };
    let want: Vec<VectorId> = one
        .exact(Metric::L2, &q, 5)
        .iter()
        .map(|(id, _)| VectorId::Int(*id))
        .collect();
    assert_eq!(found.hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>(), want);
    reader.close();

    // A shard id outside 0..num_dbs is bad data: exit 3, nothing published.
    let out = dir.path().join("bad").display().to_string();
    let (_, code, err) = build(
        dir.path(),
        &job.replace(&prefix, &out).replace("num_dbs = 4", "num_dbs = 2"),
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("shard id 2, not one of 0..2"), "{err}");
    assert!(!dir.path().join("bad/_CURRENT").exists());
}

#[test]
fn bad_vector_only_jobs_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let rows = Rows::new(20, 1);
    write_parquet(&dir.path().join("in.parquet"), &[rows.batch()]);
    let out = dir.path().join("out");
    let prefix = out.display().to_string();
    let job = |extra: &str| vector_only_job("in.parquet", "parquet", &prefix, "cosine", extra);
    let cases: Vec<(String, &str)> = vec![
        (
            job("sharding = \"cel\""),
            "routing.strategy: vector.sharding = \"cel\" places each vector by the job's CEL routing",
        ),
        (
            job("sharding = \"cel\"\nnum_probes = 2").replace(
                "[routing]\nnum_dbs = 4\n",
                "[routing]\nstrategy = \"cel\"\nexpr = \"tag\"\ncolumns = { tag = \"string\" }\n",
            ),
            "vector.num_probes: must be 1 for cel sharding",
        ),
        (
            job("sharding = \"cluster\"").replace(
                "[routing]\nnum_dbs = 4\n",
                "[routing]\nstrategy = \"cel\"\nexpr = \"tag\"\ncolumns = { tag = \"string\" }\n",
            ),
            "routing: a vector-only job places vectors by vector.sharding",
        ),
        (
            job("sharding = \"explicit\""),
            "vector.shard_id_column: vector.sharding = \"explicit\" needs the column",
        ),
        (
            job("sharding = \"explicit\"\nshard_id_column = \"id\"\nnum_probes = 2"),
            "vector.num_probes: must be 1 for explicit sharding",
        ),
        (
            job("sharding = \"lsh\"\ncentroids = \"c.npy\""),
            "vector.centroids: is for vector.sharding = \"cluster\"",
        ),
        (
            job("sharding = \"lsh\"\nnum_hash_bits = 64"),
            "vector.num_hash_bits: 64 is not from 1 to 63",
        ),
        (
            job("sharding = \"cluster\"\nnum_probes = 5"),
            "vector.num_probes: is 5 but the snapshot has 4 shards",
        ),
        (
            job("sharding = \"cluster\"") + "[value]\njson_cols = [\"name\"]\n",
            "value: a vector-only job stores no values",
        ),
        (
            job("sharding = \"cluster\"\ncentroids = \"missing.npy\""),
            "vector.centroids: cannot read",
        ),
        (
            format!("key_col = \"id\"\n{}", job("num_probes = 2")),
            "vector.num_probes: is for a vector-only job",
        ),
        (
            job("sharding = \"cluster\"").replace("id_column = \"id\"\n", ""),
            "vector.id_column: a vector-only job needs the id column",
        ),
    ];
    for (job, want) in cases {
        let (_, code, err) = build(dir.path(), &job);
        assert_eq!(code, Some(2), "{want}: {err}");
        assert!(err.contains(want), "{want}: {err}");
        assert!(!out.exists(), "{want}: nothing written");
    }
}

/// On a Ballista cluster: the driver trains the centroids, the executors
/// route every vector in the kernel and build the shards; the snapshot is
/// the one the embedded engine builds (an exhaustive search over the
/// input, every stored vector in its first probe). A unified job runs
/// there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_jobs_run_on_a_cluster() {
    use sf_tests::cluster::{ClusterOptions, LocalCluster, upload};
    let dir = tempfile::tempdir().expect("tmp");
    let rows = blobs(400, 33);
    let local = dir.path().join("in.parquet");
    write_parquet(&local, &[rows.batch()]);
    let input = format!("{}/in.parquet", s3_prefix("vector-cluster-input"));
    upload(&local, &input).await;
    let cluster = LocalCluster::start(&ClusterOptions::default());

    let prefix = s3_prefix("vector-cluster-only");
    let job = dir.path().join("only.toml");
    std::fs::write(
        &job,
        vector_only_job(
            &input,
            "parquet",
            &prefix,
            "l2",
            "sharding = \"cluster\"\nnum_probes = 2\n",
        ),
    )
    .expect("job");
    let report = cluster.sf_write_json(&job, std::time::Duration::from_secs(300));
    assert_eq!(report["rows"], 400, "{report}");
    check_vector_only(&prefix, &rows, Metric::L2, "cluster", 2).await;

    let prefix = s3_prefix("vector-cluster-unified");
    let job = dir.path().join("unified.toml");
    std::fs::write(&job, unified_job(&input, "parquet", &prefix, "l2", "")).expect("job");
    let report = cluster.sf_write_json(&job, std::time::Duration::from_secs(300));
    assert_eq!(report["rows"], 400, "{report}");
    let flat = Rows {
        ids: rows.ids.clone(),
        vectors: rows.vectors.clone(),
    };
    check_unified(&prefix, &flat, Metric::L2).await;
}

/// A unified job routed by CEL: each vector sits in its row's CEL shard,
/// a search of every shard is the exhaustive one, and a search with a
/// routing context asks that shard alone; gets with the context work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unified_with_cel_routing_keeps_each_vector_in_its_rows_shard() {
    let dir = tempfile::tempdir().expect("tmp");
    let rows = Rows::new(150, 13);
    write_parquet(&dir.path().join("in.parquet"), &[rows.batch()]);
    let prefix = dir.path().join("out").display().to_string();
    let job = unified_job("in.parquet", "parquet", &prefix, "cosine", "").replace(
        "[routing]\nnum_dbs = 3\n",
        "[routing]\nstrategy = \"cel\"\nexpr = \"tag\"\ncolumns = { tag = \"string\" }\n",
    );
    let (_, code, err) = build(dir.path(), &job);
    assert_eq!(code, Some(0), "{err}");
    read_in_every_mode(&prefix, &SQLITE_MODES, async |reader| {
        let q = rows.vectors[4].clone();
        let found = reader
            .search(
                &q,
                &SearchOptions {
                    top_k: 10,
                    ..SearchOptions::default()
                },
            )
            .await
            .expect("search");
        let want: Vec<VectorId> = rows
            .exact(Metric::Cosine, &q, 10)
            .iter()
            .map(|(id, _)| VectorId::Int(*id))
            .collect();
        assert_eq!(found.hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>(), want);
        let ctx = reader.parse_context(["tag=red"]).expect("context");
        let red = reader
            .search(
                &q,
                &SearchOptions {
                    top_k: 10,
                    routing_context: Some(ctx.clone()),
                    ..SearchOptions::default()
                },
            )
            .await
            .expect("search");
        assert_eq!(red.shards.len(), 1);
        let only = Rows {
            ids: rows.ids.iter().copied().filter(|i| Rows::tag(*i) == "red").collect(),
            vectors: rows
                .ids
                .iter()
                .zip(&rows.vectors)
                .filter(|(i, _)| Rows::tag(**i) == "red")
                .map(|(_, v)| v.clone())
                .collect(),
        };
        let want: Vec<VectorId> = only
            .exact(Metric::Cosine, &q, 10)
            .iter()
            .map(|(id, _)| VectorId::Int(*id))
            .collect();
        assert_eq!(red.hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>(), want);
        let id = only.ids[0];
        let v = reader
            .get_with_context(&Key::Int(id), &ctx)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(
            serde_json::from_slice::<Value>(&v).expect("json"),
            json!({ "name": Rows::name(id) })
        );
    })
    .await;
}

impl Rows {
    /// The rows whose id `keep` says yes to.
    fn only(&self, keep: impl Fn(i64) -> bool) -> Rows {
        let (ids, vectors) = self
            .ids
            .iter()
            .zip(&self.vectors)
            .filter(|(id, _)| keep(**id))
            .map(|(id, v)| (*id, v.clone()))
            .unzip();
        Rows { ids, vectors }
    }
}

/// A vector-only `cel` snapshot: its manifest as the reference writes one
/// (`cel_expr`, `cel_columns`, `routing_values`, the filler `required`);
/// searched in every read mode and with `sf-read search --ctx`, each
/// routing context asks its one shard and gets the exhaustive search over
/// that shard's rows; without a context a search is refused, naming the
/// columns it needs; `shard_ids` still search any shards.
async fn check_vector_only_cel(
    prefix: &str,
    rows: &Rows,
    metric: Metric,
    num_dbs: u32,
    contexts: &[(String, u32)],
    shard_of: impl Fn(i64) -> u32,
) -> serde_json::Map<String, Value> {
    let store = manifest_store(prefix);
    let current = store.load_current().await.expect("current").expect("published");
    let manifest = store
        .load_manifest(&current.pointer.manifest_ref)
        .await
        .expect("manifest");
    let custom = manifest.build.custom["vector"]
        .as_object()
        .expect("custom.vector")
        .clone();
    assert_eq!(custom["sharding_strategy"], "cel");
    assert_eq!(custom["num_probes"], 1);
    assert_eq!(custom["metric"], metric.as_str());
    assert_eq!(custom["total_vectors"], rows.ids.len());
    for absent in ["unified", "backend", "centroids_ref", "hyperplanes_ref"] {
        assert!(!custom.contains_key(absent), "{absent}: {custom:?}");
    }
    assert_eq!(manifest.build.key_col, "_vector_id");
    assert_eq!(manifest.build.sharding, sf_manifest::ShardingSpec::hash(), "the filler");
    assert_eq!(manifest.build.num_dbs, num_dbs);
    for s in &manifest.shards {
        let want = rows.ids.iter().filter(|i| shard_of(**i) == s.db_id.0).count();
        assert_eq!(s.row_count, want as u64, "shard {}", s.db_id);
    }

    let mut rng = Rng(4321);
    let queries: Vec<Vec<f32>> = (0..3)
        .map(|i| {
            if i == 0 {
                rows.vectors[5].clone()
            } else {
                (0..DIM).map(|_| rng.next()).collect()
            }
        })
        .collect();
    read_in_every_mode(prefix, &SQLITE_MODES, async |reader| {
        for (ctx, db) in contexts {
            let only = rows.only(|id| shard_of(id) == *db);
            assert!(!only.ids.is_empty(), "shard {db} holds rows");
            let opts = SearchOptions {
                top_k: 10,
                routing_context: Some(reader.parse_context([ctx.as_str()]).expect("context")),
                ..SearchOptions::default()
            };
            for q in &queries {
                let found = reader.search(q, &opts).await.expect("search");
                assert_eq!(found.shards, vec![sf_manifest::DbId(*db)], "{ctx}");
                let want = only.exact(metric, q, 10);
                assert_eq!(
                    found.hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>(),
                    want.iter().map(|(id, _)| VectorId::Int(*id)).collect::<Vec<_>>(),
                    "{ctx}"
                );
                for (hit, (id, score)) in found.hits.iter().zip(&want) {
                    assert!((hit.score - score).abs() < 1e-5, "{id}: {} vs {score}", hit.score);
                    assert_eq!(hit.payload, Some(json!({ "tag": Rows::tag(*id) })));
                }
            }
        }
        let e = reader
            .search(&queries[1], &SearchOptions::default())
            .await
            .expect_err("no routing context");
        let columns: Vec<&String> = custom["cel_columns"].as_object().expect("columns").keys().collect();
        assert!(
            e.to_string().contains("routing context") && e.to_string().contains(columns[0].as_str()),
            "{e}"
        );
        let everywhere = reader.search(&queries[1], &all_shards(num_dbs)).await.expect("search");
        assert_eq!(
            everywhere.hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>(),
            rows.exact(metric, &queries[1], 10)
                .iter()
                .map(|(id, _)| VectorId::Int(*id))
                .collect::<Vec<_>>()
        );
    })
    .await;

    // sf-read search: with the context, that shard's nearest; without, a
    // usage error naming what is missing.
    let (ctx, db) = &contexts[0];
    let only = rows.only(|id| shard_of(id) == *db);
    let sf_read = |extra: &[&str]| {
        let cache = tempfile::tempdir().expect("cache");
        let q = serde_json::to_string(&queries[1]).expect("json");
        std::process::Command::new(binary("sf-read"))
            .arg("--current-url")
            .arg(prefix)
            .args(["search", "--vector", &q, "--top-k", "5"])
            .args(extra)
            .env("SF_CACHE_DIR", cache.path())
            .env_remove("SF_CURRENT_URL")
            .output()
            .expect("sf-read")
    };
    let out = sf_read(&["--routing-context", ctx]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: Value = serde_json::from_str(text(&out.stdout).trim()).expect("json line");
    let ids: Vec<Value> = got["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    let want: Vec<Value> = only
        .exact(metric, &queries[1], 5)
        .iter()
        .map(|(id, _)| json!(id))
        .collect();
    assert_eq!(ids, want);
    let out = sf_read(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("routing context"), "{}", text(&out.stderr));

    // sf-serve, HTTP and gRPC: the context names the shard searched; a
    // search without one is a 400 saying what is missing.
    let (column, token) = ctx.split_once('=').expect("column=value");
    let serve = sf_tests::serve::ServeProcess::serving(&[("cel", prefix)], &["--grpc-listen", "127.0.0.1:0"]);
    serve.wait_ready().await;
    let body = json!({ "vector": queries[1], "top_k": 5, "context": { column: token } });
    let (status, _, answer) = sf_tests::serve::call(serve.post_json("/v1/snapshots/cel/search", &body)).await;
    assert_eq!(status, 200, "{answer}");
    let ids: Vec<Value> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, want, "{answer}");
    assert_eq!(answer["shards"], json!([db]), "{answer}");
    let (status, _, refused) = sf_tests::serve::call(
        serve.post_json("/v1/snapshots/cel/search", &json!({ "vector": queries[1], "top_k": 5 })),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["kind"], "bad_request", "{refused}");
    let message = refused["error"]["message"].as_str().expect("message");
    assert!(message.contains("routing context"), "{message}");

    use sf_server::grpc::proto::{Context, Query, SearchRequest, search_hit};
    let mut g = serve.grpc_client().await;
    let answer = g
        .search(SearchRequest {
            snapshot: "cel".into(),
            queries: vec![Query {
                vector: queries[1].clone(),
            }],
            top_k: 5,
            context: Some(Context {
                values: [(column.to_string(), token.to_string())].into(),
            }),
            ..Default::default()
        })
        .await
        .expect("grpc search")
        .into_inner();
    let grpc_ids: Vec<Value> = answer.results[0]
        .hits
        .iter()
        .map(|h| match h.id.clone().expect("an id") {
            search_hit::Id::IntId(i) => json!(i),
            search_hit::Id::StrId(s) => json!(s),
        })
        .collect();
    assert_eq!(grpc_ids, want);
    assert_eq!(answer.results[0].shards, vec![*db]);
    custom
}

/// `sharding = "cel"` with categorical routing values over a bytes column
/// (Parquet, files): the tokens go to `custom.vector` as the reference
/// writes bytes, `{"__bytes_hex__": ...}`, a context token the snapshot
/// does not know searches no shard, and a row whose token is not one of
/// `routing_values` fails the build (exit 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_only_cel_categorical_from_parquet_on_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let rows = Rows::new(240, 31);
    let b = rows.batch();
    let mut fields: Vec<Field> = b.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("btag", DataType::Binary, false));
    let mut cols = b.columns().to_vec();
    cols.push(Arc::new(arrow::array::BinaryArray::from_iter_values(
        rows.ids.iter().map(|i| Rows::tag(*i).into_bytes()),
    )));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("batch");
    write_parquet(&dir.path().join("in.parquet"), &[batch]);
    let prefix = dir.path().join("out").display().to_string();
    let job = vector_only_job("in.parquet", "parquet", &prefix, "cosine", "sharding = \"cel\"\n").replace(
        "[routing]\nnum_dbs = 4\n",
        "[routing]\nstrategy = \"cel\"\nexpr = \"btag\"\ncolumns = { btag = \"bytes\" }\nrouting_values = [\"red\", \"green\", \"blue\"]\n",
    );
    let (report, code, err) = build(dir.path(), &job);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(report["rows"], 240, "{report}");
    let order = ["red", "green", "blue"];
    let shard_of = |id: i64| order.iter().position(|t| *t == Rows::tag(id)).expect("a tag") as u32;
    let contexts: Vec<(String, u32)> = order
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("btag={t}"), i as u32))
        .collect();
    let custom = check_vector_only_cel(&prefix, &rows, Metric::Cosine, 3, &contexts, shard_of).await;
    assert_eq!(custom["cel_expr"], "btag");
    assert_eq!(custom["cel_columns"], json!({ "btag": "bytes" }));
    assert_eq!(
        custom["routing_values"],
        json!([{"__bytes_hex__": "726564"}, {"__bytes_hex__": "677265656e"}, {"__bytes_hex__": "626c7565"}])
    );
    let reader = sf_tests::readers::open(
        &prefix,
        sf_tests::readers::settings(sf_reader::SqliteMode::Memory, dir.path()),
    )
    .await;
    let unknown = reader
        .search(
            &rows.vectors[0],
            &SearchOptions {
                routing_context: Some(reader.parse_context(["btag=purple"]).expect("context")),
                ..SearchOptions::default()
            },
        )
        .await
        .expect("search");
    assert!(unknown.hits.is_empty() && unknown.shards.is_empty(), "{unknown:?}");
    reader.close();

    // A row whose token is not one of routing_values is bad data: exit 3,
    // nothing published.
    let out = dir.path().join("two").display().to_string();
    let (_, code, err) = build(
        dir.path(),
        &job.replace(&prefix, &out)
            .replace(r#"["red", "green", "blue"]"#, r#"["red", "green"]"#),
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("is not one of the snapshot's routing_values"), "{err}");
    assert!(!dir.path().join("two/_CURRENT").exists());
}

/// `sharding = "cel"` with a direct expression over the id column (CSV on
/// S3): the expression's value is the shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_only_cel_direct_from_csv_on_s3() {
    let dir = tempfile::tempdir().expect("tmp");
    let rows = Rows::new(200, 37);
    write_csv(&dir.path().join("in.csv"), &[rows.text_batch()]);
    let prefix = s3_prefix("vector-only-cel-direct");
    let expr = "shard_hash(id) % 3u";
    let job = vector_only_job("in.csv", "csv", &prefix, "l2", "sharding = \"cel\"\nnum_probes = 1\n").replace(
        "[routing]\nnum_dbs = 4\n",
        &format!("[routing]\nstrategy = \"cel\"\nnum_dbs = 3\nexpr = \"{expr}\"\ncolumns = {{ id = \"int\" }}\n"),
    );
    let (_, code, err) = build(dir.path(), &job);
    assert_eq!(code, Some(0), "{err}");
    let router = sf_router::Router::new(
        &sf_manifest::ShardingSpec::cel(
            expr,
            std::collections::BTreeMap::from([("id".to_string(), sf_manifest::CelType::Int)]),
            None,
        ),
        3,
        sf_manifest::KeyEncoding::Raw,
    )
    .expect("router");
    let shard_of = |id: i64| {
        let ctx = std::collections::BTreeMap::from([("id".to_string(), sf_router::ContextValue::Int(id))]);
        match router.route_context(&ctx).expect("route") {
            sf_router::Routed::Db(d) => d,
            other => panic!("{other:?}"),
        }
    };
    let contexts: Vec<(String, u32)> = (0..3)
        .map(|db| {
            let id = *rows
                .ids
                .iter()
                .find(|i| shard_of(**i) == db)
                .expect("an id in every shard");
            (format!("id={id}"), db)
        })
        .collect();
    let custom = check_vector_only_cel(&prefix, &rows, Metric::L2, 3, &contexts, shard_of).await;
    assert_eq!(custom["cel_expr"], expr);
    assert_eq!(custom["cel_columns"], json!({ "id": "int" }));
    assert!(!custom.contains_key("routing_values"), "direct: {custom:?}");
}
