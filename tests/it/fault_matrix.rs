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
    /// Whether `_CURRENT` names the new run once the faulty build is over.
    switched: bool,
    /// What re-running the job says (`published`, `already_published`,
    /// `completed_publish`), after an error and after a crash.
    rerun_after_error: &'static str,
    rerun_after_crash: &'static str,
}

/// The windows, in build order, with the outcomes docs/operations.md
/// states for them.
const WINDOWS: [(&str, Expect); 7] = [
    (
        "claim",
        Expect {
            error_exit: 5,
            switched: false,
            rerun_after_error: "published",
            rerun_after_crash: "published",
        },
    ),
    (
        "upload",
        Expect {
            error_exit: 5,
            switched: false,
            rerun_after_error: "published",
            rerun_after_crash: "published",
        },
    ),
    (
        "verify",
        Expect {
            error_exit: 5,
            switched: false,
            rerun_after_error: "published",
            rerun_after_crash: "published",
        },
    ),
    (
        "manifest",
        Expect {
            error_exit: 5,
            switched: false,
            rerun_after_error: "completed_publish",
            rerun_after_crash: "completed_publish",
        },
    ),
    (
        "swap",
        Expect {
            error_exit: 0,
            switched: true,
            rerun_after_error: "already_published",
            rerun_after_crash: "already_published",
        },
    ),
    (
        "delete-losers",
        Expect {
            error_exit: 0,
            switched: true,
            rerun_after_error: "already_published",
            rerun_after_crash: "already_published",
        },
    ),
    (
        "cleanup",
        Expect {
            error_exit: 0,
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
            let out = job.sf_write(&[], &[(sf_manifest::publish::failpoint::ENV, &format!("{name}=error"))]);
            assert_eq!(
                out.status.code(),
                Some(expect.error_exit),
                "{cell}: {}",
                text(&out.stderr)
            );
            if expect.error_exit != 0 {
                assert!(
                    text(&out.stderr).contains(&format!("injected failure at fail point {name}")),
                    "{cell}: the error names the cause: {}",
                    text(&out.stderr)
                );
            }
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
