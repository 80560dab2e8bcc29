//! The fault matrix of a build: at every crash window, an injected error
//! and a crash (the real `sf-write` stopped at a fail point and killed),
//! on the local file system and on S3.
//!
//! For every cell it checks what the operations docs promise:
//! `_CURRENT` is unchanged or fully switched to the new, complete
//! snapshot; every manifest in the history still reads every key; a
//! reader refreshing during the window serves the old or the new snapshot,
//! never an error or a mix; re-running the job afterwards publishes (or is
//! a no-op where it had published); and `sf-read cleanup
//! --include-abandoned` leaves exactly what the manifests reference.

use sf_manifest::Key;
use sf_reader::SqliteMode;
use sf_tests::readers::{open, settings};
use sf_tests::s3_prefix;
use sf_tests::scenario::{
    JobDir, assert_history_reads, attempt_folders, current_run, referenced_folders, sf_read, text, wait_for_leases,
};

const ROWS: u64 = 30;

/// What one cell must come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expect {
    /// Exit code of the build with an injected error.
    error_exit: i32,
    /// Where the build with an injected error says what happened to it.
    error_said: Said,
    /// Whether `_CURRENT` names the new run once the faulty build is over.
    switched: bool,
    /// What re-running the job says (`published`, `already_published`,
    /// `completed_publish`), after an error and after a crash.
    rerun_after_error: &'static str,
    rerun_after_crash: &'static str,
}

/// How a build with an injected error reports it (besides the fail
/// point's own `sf-failpoint: hit <point>` line, which every cell checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    /// It failed: the report's outcome is `failed`, its error of kind
    /// `unavailable` names the fail point.
    Failed,
    /// It published; the swap's error is logged as a warning on stderr
    /// (the swap was made, as `_CURRENT` shows).
    SwapWarning,
    /// It published; the report's warnings say the losers were not
    /// deleted, naming the fail point.
    LosersWarning,
    /// It published; the report's retention holds the error naming the
    /// fail point.
    RetentionError,
}

/// The windows, in build order, with the outcomes docs/operations.md
/// states for them.
const WINDOWS: [(&str, Expect); 7] = [
    (
        "claim",
        Expect {
            error_exit: 5,
            error_said: Said::Failed,
            switched: false,
            rerun_after_error: "published",
            rerun_after_crash: "published",
        },
    ),
    (
        "upload",
        Expect {
            error_exit: 5,
            error_said: Said::Failed,
            switched: false,
            rerun_after_error: "published",
            rerun_after_crash: "published",
        },
    ),
    (
        "verify",
        Expect {
            error_exit: 5,
            error_said: Said::Failed,
            switched: false,
            rerun_after_error: "published",
            rerun_after_crash: "published",
        },
    ),
    (
        "manifest",
        Expect {
            error_exit: 5,
            error_said: Said::Failed,
            switched: false,
            rerun_after_error: "completed_publish",
            rerun_after_crash: "completed_publish",
        },
    ),
    (
        "swap",
        Expect {
            error_exit: 0,
            error_said: Said::SwapWarning,
            switched: true,
            rerun_after_error: "already_published",
            rerun_after_crash: "already_published",
        },
    ),
    (
        "delete-losers",
        Expect {
            error_exit: 0,
            error_said: Said::LosersWarning,
            switched: true,
            rerun_after_error: "already_published",
            rerun_after_crash: "already_published",
        },
    ),
    (
        "cleanup",
        Expect {
            error_exit: 0,
            error_said: Said::RetentionError,
            switched: true,
            rerun_after_error: "already_published",
            rerun_after_crash: "already_published",
        },
    ),
];

/// Retention with something to remove, so the `cleanup` window is reached.
const RETENTION: &str = "[retention]\nkeep_last = 1\n";

/// While a build is stopped at a window: a reader that refreshes and
/// reads every key again and again serves the old or the new snapshot,
/// whole, never an error.
async fn readers_see_old_or_new(prefix: &str) {
    let cache = tempfile::tempdir().expect("cache");
    let reader = open(prefix, settings(SqliteMode::Auto, cache.path())).await;
    let keys: Vec<Key> = (0..ROWS).map(|k| Key::Int(k as i64)).collect();
    for round in 0..10 {
        reader.refresh().await.expect("refresh during the window");
        let values = reader.multi_get(&keys).await.expect("reads during the window");
        let runs: std::collections::BTreeSet<String> = values
            .iter()
            .map(|v| {
                let v = String::from_utf8_lossy(v.as_deref().expect("every key is there")).into_owned();
                v.split(':').next().unwrap_or_default().to_string()
            })
            .collect();
        assert_eq!(runs.len(), 1, "round {round}: one snapshot per call, got {runs:?}");
        assert!(
            runs.contains("old") || runs.contains("new"),
            "round {round}: the old or the new snapshot, got {runs:?}"
        );
    }
    reader.close();
}

async fn after_the_fault(prefix: &str, job: &JobDir, expect: Expect, crashed: bool, cell: &str) {
    let now = current_run(prefix).await;
    let want = if expect.switched { "new" } else { "old" };
    assert_eq!(now.as_deref(), Some(want), "{cell}: _CURRENT names {now:?}");
    assert_history_reads(prefix, ROWS).await;

    if crashed {
        wait_for_leases(prefix, "new").await;
    }
    let again = job.sf_write(&["--json"], &[]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "{cell}: the re-run: {}",
        text(&again.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&again.stdout).expect("report");
    let want_rerun = if crashed {
        expect.rerun_after_crash
    } else {
        expect.rerun_after_error
    };
    assert_eq!(doc["outcome"], want_rerun, "{cell}: {doc}");
    assert_eq!(current_run(prefix).await.as_deref(), Some("new"), "{cell}");
    assert_history_reads(prefix, ROWS).await;

    let cleanup = sf_read(prefix, &["cleanup", "--include-abandoned"]);
    assert_eq!(cleanup.status.code(), Some(0), "{cell}: {}", text(&cleanup.stderr));
    assert_eq!(
        attempt_folders(prefix).await,
        referenced_folders(prefix).await,
        "{cell}: cleanup leaves exactly what the manifests reference"
    );
    assert_history_reads(prefix, ROWS).await;
}

/// The build with an error injected at `point` ran into it and exited
/// and reported as the cell expects.
fn injected_error_said(point: &str, expect: Expect, out: &std::process::Output, cell: &str) {
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("sf-failpoint: hit {point}\n")),
        "{cell}: the error was injected: {err}"
    );
    assert_eq!(out.status.code(), Some(expect.error_exit), "{cell}: {err}");
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{cell}: a JSON report ({e}): {err}"));
    assert_eq!(doc["exit_code"], expect.error_exit, "{cell}: {doc}");
    let injected = format!("injected failure at fail point {point}");
    let published = || {
        assert_eq!(doc["outcome"], "published", "{cell}: {doc}");
        assert_eq!(doc["run_id"], "new", "{cell}: {doc}");
    };
    let warnings: Vec<&str> = doc["warnings"]
        .as_array()
        .map(|w| w.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    match expect.error_said {
        Said::Failed => {
            assert_eq!(doc["outcome"], "failed", "{cell}: {doc}");
            assert_eq!(doc["error"]["kind"], "unavailable", "{cell}: {doc}");
            assert!(
                doc["error"]["message"].as_str().is_some_and(|m| m.contains(&injected)),
                "{cell}: the error names the cause: {doc}"
            );
        }
        Said::SwapWarning => {
            published();
            assert!(
                err.lines().any(|l| l.contains("WARN")
                    && l.contains("the swap of _CURRENT answered with an error but was made")
                    && l.contains(&injected)),
                "{cell}: a warning names the swap's error: {err}"
            );
            assert!(warnings.is_empty(), "{cell}: {doc}");
            assert!(doc["retention"]["manifests"].is_u64(), "{cell}: retention ran: {doc}");
        }
        Said::LosersWarning => {
            published();
            assert_eq!(warnings.len(), 1, "{cell}: {doc}");
            assert!(
                warnings[0].contains("losing attempts were not deleted") && warnings[0].contains(&injected),
                "{cell}: the warning names the fail point: {doc}"
            );
            assert!(doc["retention"]["manifests"].is_u64(), "{cell}: retention ran: {doc}");
        }
        Said::RetentionError => {
            published();
            assert!(warnings.is_empty(), "{cell}: {doc}");
            assert!(
                doc["retention"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(&injected)),
                "{cell}: the retention's error names the fail point: {doc}"
            );
        }
    }
}

/// One window, error then crash, on the prefixes `make_prefix` hands out.
async fn window(name: &str, expect: Expect, make_prefix: &dyn Fn(&str) -> String) {
    for crash in [false, true] {
        let cell = format!("{name} × {}", if crash { "crash" } else { "error" });
        let prefix = make_prefix(&format!("{name}-{}", if crash { "crash" } else { "error" }));
        let job = JobDir::new(&prefix);
        job.input(ROWS, "old");
        job.job("old", "");
        let first = job.sf_write(&[], &[]);
        assert_eq!(first.status.code(), Some(0), "{cell}: {}", text(&first.stderr));

        job.input(ROWS, "new");
        job.job("new", RETENTION);
        if crash {
            let paused = job.sf_write_paused_at(name, &[]);
            readers_see_old_or_new(&prefix).await;
            paused.kill();
        } else {
            let out = job.sf_write(
                &["--json"],
                &[(sf_manifest::publish::failpoint::ENV, &format!("{name}=error"))],
            );
            injected_error_said(name, expect, &out, &cell);
        }
        after_the_fault(&prefix, &job, expect, crash, &cell).await;
    }
}

async fn matrix(make_prefix: &dyn Fn(&str) -> String) {
    for (name, expect) in WINDOWS {
        window(name, expect, make_prefix).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_window_on_the_file_system() {
    let root = tempfile::tempdir().expect("root");
    let base = root.path().to_path_buf();
    matrix(&|cell| format!("file://{}/{cell}", base.display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_window_on_s3() {
    matrix(&|cell| s3_prefix(&format!("matrix-{cell}"))).await;
}
