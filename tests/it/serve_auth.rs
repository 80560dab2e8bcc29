//! `sf-serve`'s roles and tokens, with the real binary on 127.0.0.1: a
//! read token cannot roll back and an admin token can, the audit line
//! names the token by its fingerprint only, tokens reload on SIGHUP and on
//! a changed file (a bad file keeps the old ones), `--no-admin-routes`
//! turns rollback off, and an unauthenticated listener beyond loopback is
//! refused before anything is bound.

use std::future::Future;
use std::time::Duration;

use serde_json::json;
use sf_tests::serve::{LocalSnapshot, ServeProcess, call, kind, metric, run_serve, write_token_file};
use sha2::{Digest, Sha256};

/// How the server's logs name `token`: `sha256:` and the first 12 hex
/// digits of its SHA-256.
fn fingerprint(token: &str) -> String {
    format!("sha256:{}", &hex::encode(Sha256::digest(token.as_bytes()))[..12])
}

/// Polls `check` every 100 ms until it holds, at most 60 s.
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 60 s");
}

/// The status of a get of key 1 of `users` with `token`.
async fn read_status(s: &ServeProcess, token: &str) -> u16 {
    call(s.get("/v1/snapshots/users/keys/1").bearer_auth(token)).await.0
}

/// The lines of the server's log that contain `word`.
fn log_lines(s: &ServeProcess, word: &str) -> Vec<String> {
    s.stderr()
        .lines()
        .filter(|l| l.contains(word))
        .map(str::to_string)
        .collect()
}

/// A read token reads but gets 403 `forbidden` on rollback, no token 401,
/// an admin token reads and rolls back; every admin action, refused or
/// done, is an audit line naming the snapshot, the action, the outcome and
/// the token's fingerprint, never a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_cannot_roll_back_and_admin_actions_are_audited() {
    let snap = LocalSnapshot::with_runs(&["run1", "run2"]).await;
    let read = write_token_file(snap.folder(), "read-tokens", &["reader-secret-1"]);
    let admin = write_token_file(snap.folder(), "admin-tokens", &["admin-secret-1"]);
    let mut s = ServeProcess::serving(
        &[("users", &snap.current_url())],
        &[
            "--auth-token-file",
            &read,
            "--admin-token-file",
            &admin,
            // The audit lines have a target of their own.
            "--log",
            "warn,sf_server::audit=info",
        ],
    );
    s.wait_ready().await;
    assert_eq!(read_status(&s, "reader-secret-1").await, 200);
    assert_eq!(read_status(&s, "admin-secret-1").await, 200, "an admin token reads too");

    let rollback = || s.post_json("/v1/snapshots/users/rollback", &json!({"run_id": "run1"}));
    let (st, _, body) = call(rollback()).await;
    assert_eq!((st, kind(&body)), (401, "unauthenticated"));
    let (st, _, body) = call(rollback().bearer_auth("reader-secret-1")).await;
    assert_eq!((st, kind(&body)), (403, "forbidden"), "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("--admin-token-file"), "{message}");
    // Nothing moved.
    let (_, run, _) = call(s.get("/v1/snapshots/users/keys/1").bearer_auth("reader-secret-1")).await;
    assert_eq!(run.as_deref(), Some("run2"));
    let (st, run, body) = call(rollback().bearer_auth("admin-secret-1")).await;
    assert_eq!((st, run.as_deref()), (200, Some("run1")), "{body}");
    assert_eq!(body["serving_run_id"], "run1");

    let m = s.metrics(Some("admin-secret-1")).await;
    assert_eq!(
        metric(&m, "sf_serve_requests_rejected_total", &[("reason", "forbidden")]),
        1.0
    );
    assert!(s.terminate().success());
    let log = s.stderr();
    for token in ["reader-secret-1", "admin-secret-1"] {
        assert!(!log.contains(token), "a token was logged:\n{log}");
    }
    let audit = log_lines(&s, "admin action");
    assert_eq!(audit.len(), 2, "one line per admin action:\n{log}");
    assert!(
        !log.contains("rolled back _CURRENT"),
        "only the audit target logs at info:\n{log}"
    );
    let refused = &audit[0];
    for want in [
        format!("token={}", fingerprint("reader-secret-1")).as_str(),
        "action=rollback",
        "snapshot=users",
        "outcome=forbidden",
    ] {
        assert!(refused.contains(want), "the refusal should say {want}: {refused}");
    }
    let done = &audit[1];
    for want in [
        format!("token={}", fingerprint("admin-secret-1")).as_str(),
        "action=rollback",
        "snapshot=users",
        "outcome=ok",
    ] {
        assert!(done.contains(want), "the rollback should say {want}: {done}");
    }
}

/// A rewritten token file takes effect on SIGHUP (new token in, old one
/// out) and, without a signal, when its content changes; a reload to a
/// file without tokens keeps the tokens in place, logs an error naming
/// the file and counts a failed reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reload_on_sighup_and_on_change_and_a_bad_file_keeps_them() {
    let snap = LocalSnapshot::with_runs(&["run1", "run2"]).await;
    let read = write_token_file(snap.folder(), "read-tokens", &["first-secret"]);
    let admin = write_token_file(snap.folder(), "admin-tokens", &["admin-secret"]);
    let mut s = ServeProcess::serving(
        &[("users", &snap.current_url())],
        &["--auth-token-file", &read, "--admin-token-file", &admin],
    );
    s.wait_ready().await;
    assert_eq!(read_status(&s, "first-secret").await, 200);
    assert_eq!(read_status(&s, "second-secret").await, 401);

    // SIGHUP: the process lives on and reloads.
    write_token_file(snap.folder(), "read-tokens", &["second-secret"]);
    s.signal_hup();
    let sr = &s;
    wait_until("a reload on SIGHUP", || async move {
        log_lines(sr, "reloaded tokens").iter().any(|l| l.contains("SIGHUP"))
    })
    .await;
    assert!(s.running(), "SIGHUP ended the server:\n{}", s.stderr());
    assert_eq!(read_status(&s, "second-secret").await, 200);
    assert_eq!(read_status(&s, "first-secret").await, 401);

    // A file without tokens: the old ones stay, the failure is said and counted.
    let failed = |m: &std::collections::BTreeMap<String, f64>| {
        metric(
            m,
            "sf_serve_reloads_total",
            &[("what", "tokens"), ("outcome", "failed")],
        )
    };
    let failed_before = failed(&s.metrics(Some("second-secret")).await);
    write_token_file(snap.folder(), "read-tokens", &[]);
    s.signal_hup();
    let sr = &s;
    wait_until("a failed reload", || async move {
        failed(&sr.metrics(Some("second-secret")).await) > failed_before
    })
    .await;
    assert_eq!(read_status(&s, "second-secret").await, 200);
    assert_eq!(read_status(&s, "admin-secret").await, 200);
    let errors = log_lines(&s, "cannot reload tokens");
    assert!(
        errors.iter().any(|l| l.contains(&read) && l.contains("no token")),
        "the error should name the file: {errors:?}"
    );

    // No signal: a changed file is seen by itself (read and admin alike).
    write_token_file(snap.folder(), "read-tokens", &["third-secret"]);
    let sr = &s;
    wait_until("the new token accepted without a signal", || async move {
        read_status(sr, "third-secret").await == 200
    })
    .await;
    assert_eq!(read_status(&s, "second-secret").await, 401);
    write_token_file(snap.folder(), "admin-tokens", &["admin-secret-2"]);
    let sr = &s;
    wait_until("the new admin token accepted", || async move {
        read_status(sr, "admin-secret-2").await == 200
    })
    .await;
    assert_eq!(read_status(&s, "admin-secret").await, 401);
    let (st, _, body) = call(
        s.post_json("/v1/snapshots/users/rollback", &json!({"run_id": "run1"}))
            .bearer_auth("admin-secret-2"),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let m = s.metrics(Some("third-secret")).await;
    assert!(metric(&m, "sf_serve_reloads_total", &[("what", "tokens"), ("outcome", "ok")]) >= 3.0);

    assert!(s.terminate().success());
    let log = s.stderr();
    for token in ["first-secret", "second-secret", "third-secret", "admin-secret"] {
        assert!(!log.contains(token), "a token was logged:\n{log}");
    }
}

/// `--no-admin-routes`: rollback answers 403 `admin_disabled` saying so,
/// even to an admin token, which still reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_admin_routes_turns_rollback_off() {
    let snap = LocalSnapshot::with_runs(&["run1", "run2"]).await;
    let admin = write_token_file(snap.folder(), "admin-tokens", &["admin-secret"]);
    let mut s = ServeProcess::serving(
        &[("users", &snap.current_url())],
        &["--admin-token-file", &admin, "--no-admin-routes"],
    );
    s.wait_ready().await;
    assert_eq!(read_status(&s, "admin-secret").await, 200);
    let (st, _, body) = call(
        s.post_json("/v1/snapshots/users/rollback", &json!({"offset": 1}))
            .bearer_auth("admin-secret"),
    )
    .await;
    assert_eq!((st, kind(&body)), (403, "admin_disabled"));
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("--no-admin-routes"), "{message}");
    let (_, run, _) = call(s.get("/v1/snapshots/users/keys/1").bearer_auth("admin-secret")).await;
    assert_eq!(run.as_deref(), Some("run2"), "nothing rolled back");
    assert!(s.terminate().success());
}

/// Listening beyond loopback (HTTP or gRPC) without a token exits 2 before
/// binding, naming the address and both ways out.
#[test]
fn an_unauthenticated_listener_beyond_loopback_is_refused() {
    for (args, addr, field) in [
        (&["--listen", "0.0.0.0:0"][..], "0.0.0.0:0", "listen"),
        (
            &["--listen", "127.0.0.1:0", "--grpc-listen", "0.0.0.0:0"][..],
            "0.0.0.0:0",
            "grpc_listen",
        ),
    ] {
        let out = run_serve(["--snapshot", "a=/nothing"].iter().chain(args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for want in [addr, field, "--auth-token-file", "--allow-unauthenticated"] {
            assert!(err.contains(want), "{args:?} should say {want}: {err}");
        }
        assert!(out.stdout.is_empty(), "{args:?} printed a listening line");
    }
}
