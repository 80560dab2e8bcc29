//! TLS on both listeners of the real `sf-serve`: a client that checks the
//! certificate reads over HTTPS and gRPC; one that does not trust it, or
//! speaks clear text, gets nothing; the certificate is replaced without a
//! restart (SIGHUP), and a bad replacement keeps the one in use.

use std::process::Command;
use std::time::Duration;

use sf_server::grpc::proto::GetRequest;
use sf_tests::serve::{LocalSnapshot, ServeProcess, grpc_tls_client, https_client, make_certificate};

fn hangup(s: &ServeProcess) {
    let status = Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

async fn get_over_grpc(addr: &str, ca: &[u8]) -> Result<Vec<u8>, String> {
    let mut client = grpc_tls_client(addr, ca).await?;
    let answer = client
        .get(GetRequest {
            snapshot: "users".into(),
            key: "7".into(),
            ..Default::default()
        })
        .await
        .map_err(|s| s.to_string())?;
    Ok(answer.into_inner().value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_grpc_over_tls_with_a_certificate_reloaded_on_sighup() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    let dir = tempfile::tempdir().expect("dir");
    let (ca1, cert, key) = make_certificate(dir.path(), "one");
    let cert_s = cert.display().to_string();
    let key_s = key.display().to_string();
    let mut s = ServeProcess::serving(
        &[("users", &snap.prefix)],
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert_s,
            "--tls-key",
            &key_s,
        ],
    );
    assert!(s.http.starts_with("https://"), "{}", s.http);
    let grpc_addr = s
        .grpc
        .clone()
        .expect("grpc")
        .split_once("://")
        .expect("url")
        .1
        .to_string();
    let trusting_one = https_client(&ca1);
    sf_tests::serve::wait_ready(&trusting_one, &s.http).await;
    let read = |client: reqwest::Client, base: String| async move {
        let resp = client.get(format!("{base}/v1/snapshots/users/keys/7")).send().await?;
        Ok::<_, reqwest::Error>((resp.status().as_u16(), resp.text().await?))
    };
    assert_eq!(
        read(trusting_one.clone(), s.http.clone()).await.expect("https"),
        (200, "run1:7".to_string())
    );
    assert_eq!(get_over_grpc(&grpc_addr, &ca1).await.expect("grpc over TLS"), b"run1:7");
    // Clear text on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/livez", s.addr()))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));
    // A client that does not trust the certificate refuses the server.
    let (other_ca, _, _) = make_certificate(dir.path(), "stranger");
    assert!(read(https_client(&other_ca), s.http.clone()).await.is_err());
    assert!(get_over_grpc(&grpc_addr, &other_ca).await.is_err());

    // A bad replacement (a key that is not the certificate's) keeps the
    // pair in use.
    let (_, _, wrong_key) = make_certificate(dir.path(), "wrong");
    std::fs::copy(&wrong_key, &key).expect("replace key");
    hangup(&s);
    let mut logged = false;
    for _ in 0..600 {
        if s.stderr()
            .contains("cannot reload certificates, keeping the previous ones")
        {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged, "no failed reload logged: {}", s.stderr());
    assert_eq!(
        read(https_client(&ca1), s.http.clone())
            .await
            .expect("the old pair serves on"),
        (200, "run1:7".to_string())
    );

    // A good replacement signed by another authority: after SIGHUP, new
    // connections get it.
    let (ca2, cert2, key2) = make_certificate(dir.path(), "two");
    std::fs::copy(&cert2, &cert).expect("replace cert");
    std::fs::copy(&key2, &key).expect("replace key");
    hangup(&s);
    let mut swapped = false;
    for _ in 0..600 {
        if read(https_client(&ca2), s.http.clone()).await.is_ok() {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(swapped, "the new certificate was never served: {}", s.stderr());
    assert!(read(https_client(&ca1), s.http.clone()).await.is_err());
    assert_eq!(
        get_over_grpc(&grpc_addr, &ca2).await.expect("grpc, new pair"),
        b"run1:7"
    );
    assert!(
        s.stderr()
            .contains("reloaded certificates: the TLS certificate and key")
    );
    s.signal_term();
    assert!(s.wait(Duration::from_secs(60)).success(), "{}", s.stderr());
}

/// A certificate or key that cannot be used stops the start (exit 2),
/// naming the file.
#[test]
fn a_bad_certificate_stops_the_start() {
    let dir = tempfile::tempdir().expect("dir");
    let (_, cert, _) = make_certificate(dir.path(), "one");
    let (_, _, other_key) = make_certificate(dir.path(), "two");
    let out = sf_tests::serve::run_serve([
        "--listen",
        "127.0.0.1:0",
        "--snapshot",
        "users=/nonexistent",
        "--tls-cert",
        &cert.display().to_string(),
        "--tls-key",
        &other_key.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("do not make a usable pair"), "{err}");
    let out = sf_tests::serve::run_serve([
        "--listen",
        "127.0.0.1:0",
        "--snapshot",
        "users=/nonexistent",
        "--tls-cert",
        &cert.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
