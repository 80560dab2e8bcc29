//! The job file's documented defaults, overrides and refusals.

use std::path::Path;

use sf_manifest::Classified;

use super::*;
use crate::build::backend::{DuplicatePolicy, SqliteSettings};
use crate::error::Result;

const MINIMAL: &str = r#"
key_col = "id"
[input]
format = "parquet"
path = "data/users.parquet"
[routing]
num_dbs = 8
[output]
prefix = "out/snap"
"#;

fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<JobConfig> {
    parse(
        text,
        "job.toml",
        Path::new("/jobs"),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn minimal_job_gets_documented_defaults() {
    let c = parse_env(MINIMAL, &[]).expect("parse");
    assert_eq!(c.shard_id_col, "_shard_id");
    assert_eq!(
        c.input.as_ref().and_then(|i| i.path.as_deref()),
        Some("/jobs/data/users.parquet")
    );
    assert_eq!(c.output.prefix, "/jobs/out/snap");
    assert_eq!(c.output.backend, Backend::Sqlite);
    assert!(c.routing.verify_routing);
    assert_eq!(c.routing.verify_sample_size, 10_000);
    assert_eq!(c.write.batch_size, 8192);
    assert!(c.write.sort_within_shard);
    assert_eq!(c.write.on_duplicate, DuplicatePolicy::LastWins);
    assert_eq!(c.write.shard_retries, 3);
    assert_eq!(c.output.sqlite, SqliteSettings::default());
}

#[test]
fn cel_over_the_key_column_must_call_it_key() {
    let cel = |columns: &str, expr: &str| {
        MINIMAL.replace(
            "[routing]\nnum_dbs = 8",
            &format!("[routing]\nstrategy = \"cel\"\nnum_dbs = 8\nexpr = \"{expr}\"\ncolumns = {columns}"),
        )
    };
    let e = parse_env(&cel("{ id = \"int\" }", "id % 8"), &[]).expect_err("key column by its name");
    let m = e.to_string();
    assert!(m.starts_with("routing.columns.id:"), "{m}");
    assert!(m.contains("name it \"key\"") && m.contains("key = \"int\""), "{m}");
    assert_eq!(e.kind(), sf_manifest::ErrorKind::Config);
    parse_env(&cel("{ key = \"int\" }", "key % 8"), &[]).expect("the key by its routing name");
    parse_env(&cel("{ region = \"string\" }", "region"), &[]).expect("another column");
}

#[test]
fn any_shard_count_fits_any_memory_limit() {
    assert!(default_memory_limit_mib() >= 1024);
    // Sort memory is shared on demand, not set aside per shard: 100,000
    // sorting shards are as welcome in 16 MiB as 8 are.
    let c = parse_env(
        MINIMAL,
        &[("SF_WRITE__MEMORY_LIMIT_MIB", "16"), ("SF_ROUTING__NUM_DBS", "100000")],
    )
    .expect("any shard count");
    assert_eq!((c.write.memory_limit_mib, c.routing.num_dbs), (16, Some(100_000)));
    let e = parse_env(MINIMAL, &[("SF_WRITE__MEMORY_LIMIT_MIB", "15")]).expect_err("too small");
    let m = e.to_string();
    assert!(m.contains("write.memory_limit_mib") && m.contains("at least 16"), "{m}");
}

#[test]
fn num_dbs_above_what_readers_accept_is_refused() {
    let max = sf_manifest::format::manifest::MAX_NUM_DBS;
    parse_env(MINIMAL, &[("SF_ROUTING__NUM_DBS", &max.to_string())]).expect("the maximum");
    let e = parse_env(MINIMAL, &[("SF_ROUTING__NUM_DBS", &(max + 1).to_string())]).expect_err("above it");
    let m = e.to_string();
    assert!(m.contains("routing.num_dbs") && m.contains(&max.to_string()), "{m}");
}

#[test]
fn unknown_keys_are_errors_with_their_place() {
    let e = parse_env(&format!("{MINIMAL}\n[write]\nbatchsize = 3\n"), &[]).expect_err("unknown");
    let m = e.to_string();
    assert!(m.contains("job.toml") && m.contains("batchsize"), "{m}");
    assert!(m.contains("line"), "mentions where: {m}");
    let e = parse_env(MINIMAL, &[("SF_ROUTING__NUMDBS", "4")]).expect_err("unknown override");
    assert!(e.to_string().contains("SF_ROUTING__NUMDBS"), "{e}");
}

#[test]
fn environment_overrides_keys() {
    let c = parse_env(
        MINIMAL,
        &[
            ("SF_ROUTING__NUM_DBS", "16"),
            ("SF_OUTPUT__PREFIX", "s3://bucket/other"),
            ("SF_WRITE__SORT_WITHIN_SHARD", "false"),
            ("SF_OUTPUT__SQLITE__CACHE_MIB", "32"),
            ("OTHER", "ignored"),
        ],
    )
    .expect("parse");
    assert_eq!(c.routing.num_dbs, Some(16));
    assert_eq!(c.output.prefix, "s3://bucket/other");
    assert!(!c.write.sort_within_shard);
    assert_eq!(c.output.sqlite.cache_mib, 32);
}

#[test]
fn variables_without_a_separator_belong_to_other_programs() {
    // Other programs' variables, a deployment's own, and a name that looks
    // like a top-level key: none is an override, none is an error.
    let c = parse_env(
        MINIMAL,
        &[
            ("SF_CURRENT_URL", "s3://bucket/other/_CURRENT"),
            ("SF_CACHE_DIR", "/var/cache/sf"),
            ("SF_LOG_FORMAT", "json"),
            ("SF_CLUSTER_URL", "df://sched:50050"),
            ("SF_S3_ACCESS_KEY", "key"),
            ("SF_KEY_COL", "user_id"),
        ],
    )
    .expect("parse");
    assert_eq!(c.key_col, "id");
    assert_eq!(c, parse_env(MINIMAL, &[]).expect("parse"));
    assert!(is_override("SF_OUTPUT__RUN_ID"));
    assert!(!is_override("SF_CURRENT_URL"));
    assert!(!is_override("OUTPUT__RUN_ID"));
}

#[test]
fn an_override_is_typed_by_its_key() {
    let c = parse_env(
        MINIMAL,
        &[
            ("SF_OUTPUT__RUN_ID", "20261207"),
            ("SF_OUTPUT__PREFIX", "true"),
            ("SF_ROUTING__NUM_DBS", "16"),
        ],
    )
    .expect("parse");
    assert_eq!(c.output.run_id.as_deref(), Some("20261207"));
    assert_eq!(c.output.prefix, "/jobs/true");
    assert_eq!(c.routing.num_dbs, Some(16));
    let text = |p: &[&str]| key_is_text::<JobConfig>(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(text(&["output", "run_id"]), Some(true));
    assert_eq!(text(&["key_col"]), Some(true));
    assert_eq!(text(&["input", "tables", "users", "path"]), Some(true));
    assert_eq!(text(&["routing", "num_dbs"]), Some(false));
    assert_eq!(text(&["output", "sqlite", "cache_mib"]), Some(false));
    assert_eq!(text(&["routing", "num_dbz"]), None);
    // A number where a number belongs stays a number, and a wrong type is
    // still an error naming the variable.
    let e = parse_env(MINIMAL, &[("SF_ROUTING__NUM_DBS", "many")]).expect_err("not a number");
    assert!(e.to_string().contains("SF_ROUTING__NUM_DBS"), "{e}");
}

#[test]
fn contradictions_are_config_errors() {
    let cases = [
        ("[value]\nbinary_col = \"a\"\njson_cols = [\"b\"]\n", "not both"),
        ("[write]\nbatch_size = 0\n", "write.batch_size"),
        ("[write]\nmax_writes_per_second = -1.0\n", "positive rate"),
        ("shard_id_col = \"id\"\n", "must differ"),
    ];
    for (extra, want) in cases {
        let text = if extra.starts_with('[') {
            format!("{MINIMAL}\n{extra}")
        } else {
            format!("{extra}{MINIMAL}")
        };
        let e = parse_env(&text, &[]).expect_err(want);
        assert!(e.to_string().contains(want), "{want}: {e}");
        assert_eq!(e.kind(), sf_manifest::ErrorKind::Config);
    }
    let both = MINIMAL.replace("num_dbs = 8", "num_dbs = 8\nmax_keys_per_shard = 10");
    assert!(
        parse_env(&both, &[])
            .expect_err("both")
            .to_string()
            .contains("exactly one")
    );
    let cel = MINIMAL.replace("num_dbs = 8", "strategy = \"cel\"\nexpr = \"region\"");
    assert!(
        parse_env(&cel, &[])
            .expect_err("cel columns")
            .to_string()
            .contains("routing.columns")
    );
    let slate = format!("{MINIMAL}\n[write]\nsort_within_shard = false\n")
        .replace("[output]", "[output]\nbackend = \"slatedb\"");
    assert!(
        parse_env(&slate, &[])
            .expect_err("slatedb unsorted")
            .to_string()
            .contains("slatedb")
    );
    let sql = MINIMAL.replace("format = \"parquet\"", "format = \"sql\"");
    assert!(parse_env(&sql, &[]).expect_err("sql").to_string().contains("input.sql"));
    let bad_run = MINIMAL.replace("[output]", "[output]\nrun_id = \"a/b\"");
    assert!(
        parse_env(&bad_run, &[])
            .expect_err("run id")
            .to_string()
            .contains("output.run_id")
    );
}

#[test]
fn retry_backoff_doubles_up_to_the_cap() {
    let p = RetryPolicy {
        retries: 5,
        backoff_ms: 100,
        max_backoff_ms: 350,
    };
    let waits: Vec<u64> = (1..=4).map(|n| p.backoff(n).as_millis() as u64).collect();
    assert_eq!(waits, vec![100, 200, 350, 350]);
}
