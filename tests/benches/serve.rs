//! Load generator for `sf-serve` on loopback: get and multiget(100)
//! throughput and latency through the release `sf-serve` binary, next to
//! the in-process reader on the same snapshot and a trivial endpoint of the
//! same HTTP stack (`GET /livez`: the same process, listener, router and
//! connection handling, no lookup) as the ceiling, in the same run.
//!
//! ```sh
//! cargo build --release -p sf-cli --bin sf-serve
//! cargo bench -p sf-tests --bench serve [-- --seconds 4 --connections 32 --rounds 3 --sqlite-mode download|memory]
//! ```
//!
//! Every phase is bounded in requests (`MAX_REQUESTS`) and time
//! (`--seconds`). Throughput phases are closed loops on `--connections`
//! keep-alive HTTP/1.1 connections; the latency phases send at half the
//! peak rate measured for the same request (an open loop: a pacing thread
//! releases requests at that rate, round robin over the connections) and
//! time each answer. The client is a small
//! hand-written HTTP/1.1 client, so that its own cost (it shares the two
//! cores with the server) stays small and the same for every phase. Best
//! of `--rounds`; ratios at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sf_manifest::{Key, KeyEncoding};
use sf_reader::{Reader, ReaderSettings, SqliteMode};
use sf_tests::serve::ServeProcess;
use sf_tests::snapshots::{Row, SnapshotSpec, build_sqlite_snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEYS: u64 = 500_000;
const SHARDS: u32 = 8;
const MAX_REQUESTS: usize = 2_000_000;
const MULTI: usize = 100;

struct Opts {
    seconds: f64,
    connections: usize,
    rounds: usize,
    /// How server and in-process reader hold the shards.
    sqlite_mode: SqliteMode,
}

fn opts() -> Opts {
    let mut o = Opts {
        seconds: 4.0,
        connections: 32,
        rounds: 3,
        sqlite_mode: SqliteMode::Download,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let next = || args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--seconds" => o.seconds = next().parse().expect("--seconds N"),
            "--connections" => o.connections = next().parse().expect("--connections N"),
            "--rounds" => o.rounds = next().parse().expect("--rounds N"),
            "--sqlite-mode" => {
                o.sqlite_mode = match next().as_str() {
                    "download" => SqliteMode::Download,
                    "memory" => SqliteMode::Memory,
                    other => panic!("--sqlite-mode download|memory, not {other:?}"),
                }
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// Deterministic keys without another dependency.
struct Lcg(u64);

impl Lcg {
    fn next_key(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 20) % KEYS
    }
}

fn value_of(k: u64) -> Vec<u8> {
    let mut v = format!("value-{k:012}-").into_bytes();
    v.resize(100, b'x');
    v
}

/// One keep-alive HTTP/1.1 connection: writes a request, reads the answer
/// (status and Content-Length body).
struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str) -> Conn {
        let sock = TcpStream::connect(addr).await.expect("connect");
        sock.set_nodelay(true).expect("nodelay");
        Conn {
            sock,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    /// Sends `req`, returns the status and the body length.
    async fn call(&mut self, req: &[u8]) -> (u16, usize) {
        self.sock.write_all(req).await.expect("write");
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = self.sock.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = std::str::from_utf8(&self.buf[..end]).expect("ascii head");
            let status: u16 = head[9..12].parse().expect("status");
            let len = head
                .split("\r\n")
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .expect("content-length");
            if self.buf.len() >= end + 4 + len {
                return (status, len);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Ceiling,
    Get,
    Multi,
}

fn request(kind: Kind, addr: &str, rng: &mut Lcg) -> Vec<u8> {
    match kind {
        Kind::Ceiling => format!("GET /livez HTTP/1.1\r\nhost: {addr}\r\n\r\n").into_bytes(),
        Kind::Get => format!(
            "GET /v1/snapshots/bench/keys/{} HTTP/1.1\r\nhost: {addr}\r\n\r\n",
            rng.next_key()
        )
        .into_bytes(),
        Kind::Multi => {
            let keys: Vec<String> = (0..MULTI).map(|_| rng.next_key().to_string()).collect();
            let body = format!("{{\"keys\":[{}]}}", keys.join(","));
            format!(
                "POST /v1/snapshots/bench/multiget HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
    }
}

struct Measured {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    requests: usize,
}

fn summarise(mut lat: Vec<Duration>, elapsed: Duration) -> Measured {
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Measured {
        per_second: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        requests: lat.len(),
    }
}

/// Closed loop over HTTP: `connections` clients, each sending its next
/// request when the last is answered; `rate` = Some(r): an open loop at r
/// requests/s in total instead, paced by [`pace`].
async fn http_load(addr: &str, kind: Kind, connections: usize, seconds: f64, rate: Option<f64>) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let per_conn = MAX_REQUESTS / connections;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut senders = Vec::new();
    for c in 0..connections {
        let addr = addr.to_string();
        let stop = Arc::clone(&stop);
        let mut go = rate.map(|_| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            senders.push(tx);
            rx
        });
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await;
            let mut rng = Lcg(0x9e37_79b9 + c as u64);
            let mut lat = Vec::with_capacity(4096);
            for _ in 0..per_conn {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = request(kind, &addr, &mut rng);
                if let Some(go) = &mut go
                    && go.recv().await.is_none()
                {
                    break;
                }
                let t = Instant::now();
                let (status, _) = conn.call(&req).await;
                lat.push(t.elapsed());
                assert_eq!(status, 200, "a request failed under load");
            }
            lat
        }));
    }
    let pacer = rate.map(|r| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || pace(r, &senders, &stop))
    });
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = pacer {
        p.join().expect("pacer");
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    summarise(all, started.elapsed())
}

/// Releases requests at `rate` per second, round robin over the
/// connections, until `stop` (then drops the senders, which ends the
/// connections' loops). A thread of its own, waking every 50 µs: tokio's
/// timers tick in milliseconds, so connections sleeping on them would
/// all wake on the same tick and send in bursts, and the burst's queue
/// would be measured instead of the server.
fn pace(rate: f64, senders: &[tokio::sync::mpsc::UnboundedSender<()>], stop: &AtomicBool) {
    let start = Instant::now();
    let total = MAX_REQUESTS as u64;
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) && sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
        while sent < due {
            let _ = senders[(sent % senders.len() as u64) as usize].send(());
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// The same loads on the reader in this process.
async fn reader_load(reader: &Reader, kind: Kind, tasks_n: usize, seconds: f64) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..tasks_n {
        let reader = reader.clone();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(0x9e37_79b9 + c as u64);
            let mut lat = Vec::with_capacity(4096);
            for _ in 0..MAX_REQUESTS / tasks_n {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let t = Instant::now();
                match kind {
                    Kind::Multi => {
                        let keys: Vec<Key> = (0..MULTI).map(|_| Key::Int(rng.next_key() as i64)).collect();
                        let v = reader.multi_get(&keys).await.expect("multi_get");
                        assert!(v.iter().all(Option::is_some));
                    }
                    _ => {
                        let v = reader.get(&Key::Int(rng.next_key() as i64)).await.expect("get");
                        assert!(v.is_some());
                    }
                }
                lat.push(t.elapsed());
                // Let the other tasks (and the timer) in, as a network
                // round trip would.
                tokio::task::yield_now().await;
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("reader task"));
    }
    summarise(all, started.elapsed())
}

fn best(runs: Vec<Measured>) -> Measured {
    runs.into_iter()
        .max_by(|a, b| a.per_second.total_cmp(&b.per_second))
        .expect("a round")
}

fn best_latency(runs: Vec<Measured>) -> Measured {
    runs.into_iter().min_by_key(|m| m.p99).expect("a round")
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let o = opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let work = tempfile::tempdir().expect("work dir");
    let prefix = format!("file://{}/snap", work.path().display());
    println!("building {KEYS} keys in {SHARDS} SQLite shards (100-byte values)...");
    let rows: Vec<Row> = (0..KEYS).map(|k| Row::new(Key::Int(k as i64), value_of(k))).collect();
    rt.block_on(build_sqlite_snapshot(
        &prefix,
        &SnapshotSpec::hash("bench", SHARDS, KeyEncoding::U64Be),
        &rows,
    ));
    drop(rows);

    let mode_name = match o.sqlite_mode {
        SqliteMode::Memory => "memory",
        _ => "download",
    };
    println!("shards in {mode_name} mode, in the server and in the in-process reader");
    let serve_cache = work.path().join("serve-cache");
    let cache_arg = serve_cache.display().to_string();
    let mut server = ServeProcess::start(&[
        "--snapshot",
        &format!("bench={prefix}/_CURRENT"),
        "--listen",
        "127.0.0.1:0",
        "--cache-dir",
        &cache_arg,
        "--sqlite-mode",
        mode_name,
        "--max-in-flight",
        "4096",
        "--log",
        "warn",
    ]);
    let addr = server.addr();
    let reader = rt
        .block_on(
            Reader::builder(format!("{prefix}/_CURRENT"))
                .with_settings(ReaderSettings {
                    cache_dir: Some(work.path().join("reader-cache")),
                    sqlite_mode: o.sqlite_mode,
                    ..ReaderSettings::default()
                })
                .build(),
        )
        .expect("reader");
    // Warm both: every shard downloaded and open, pages in the OS cache.
    rt.block_on(async {
        let client = reqwest::Client::new();
        sf_tests::serve::wait_ready(&client, &server.http).await;
        let all: Vec<Key> = (0..KEYS).step_by(7).map(|k| Key::Int(k as i64)).collect();
        reader.multi_get(&all).await.expect("warm reader");
        for chunk in (0..KEYS).step_by(7).collect::<Vec<_>>().chunks(5000) {
            let body = format!(
                "{{\"keys\":[{}]}}",
                chunk.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
            );
            let r = client
                .post(format!("{}/v1/snapshots/bench/multiget", server.http))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("warm server");
            assert_eq!(r.status(), 200);
        }
    });

    println!(
        "{} rounds, {} s per phase, {} connections (tasks in process), 2 cores shared by client and server",
        o.rounds, o.seconds, o.connections
    );
    let (mut ceiling, mut get, mut multi, mut rget, mut rmulti) = (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..o.rounds {
        rt.block_on(async {
            ceiling.push(http_load(&addr, Kind::Ceiling, o.connections, o.seconds, None).await);
            get.push(http_load(&addr, Kind::Get, o.connections, o.seconds, None).await);
            multi.push(http_load(&addr, Kind::Multi, o.connections, o.seconds, None).await);
            rget.push(reader_load(&reader, Kind::Get, o.connections, o.seconds).await);
            rmulti.push(reader_load(&reader, Kind::Multi, o.connections, o.seconds).await);
        });
        println!("  round {} done", round + 1);
    }
    let (ceiling, get, multi, rget, rmulti) = (best(ceiling), best(get), best(multi), best(rget), best(rmulti));
    // Half of the peak, open loop.
    let (mut half_get, mut half_multi) = (vec![], vec![]);
    for _ in 0..o.rounds {
        rt.block_on(async {
            half_get.push(http_load(&addr, Kind::Get, o.connections, o.seconds, Some(get.per_second / 2.0)).await);
            half_multi.push(
                http_load(
                    &addr,
                    Kind::Multi,
                    o.connections,
                    o.seconds,
                    Some(multi.per_second / 2.0),
                )
                .await,
            );
        });
    }
    let (half_get, half_multi) = (best_latency(half_get), best_latency(half_multi));

    println!();
    println!("| | requests/s | p50 | p99 | requests |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, m: &Measured| {
        println!(
            "| {name} | {:.0} | {} | {} | {} |",
            m.per_second,
            us(m.p50),
            us(m.p99),
            m.requests
        );
    };
    row("HTTP ceiling: `GET /livez`", &ceiling);
    row("sf-serve `get`", &get);
    row("sf-serve `multiget` of 100", &multi);
    row("in-process reader `get`", &rget);
    row("in-process reader `multi_get` of 100", &rmulti);
    row("sf-serve `get` at half its peak rate", &half_get);
    row("sf-serve `multiget(100)` at half its peak rate", &half_multi);
    println!();
    println!(
        "get through sf-serve / HTTP ceiling: {:.2} (target >= 0.70)",
        get.per_second / ceiling.per_second
    );
    println!(
        "get through sf-serve / in-process reader: {:.3}",
        get.per_second / rget.per_second
    );
    println!(
        "multiget(100) through sf-serve / in-process reader: {:.2}",
        multi.per_second / rmulti.per_second
    );
    println!(
        "keys/s: sf-serve get {:.0}, sf-serve multiget(100) {:.0}",
        get.per_second,
        multi.per_second * MULTI as f64
    );
    println!(
        "get p99 at half of peak ({:.0}/s): {} (target < 1 ms); multiget(100) p99 at half of peak ({:.0}/s): {}",
        get.per_second / 2.0,
        us(half_get.p99),
        multi.per_second / 2.0,
        us(half_multi.p99)
    );
    reader.close();
    let status = server.terminate();
    assert!(status.success(), "sf-serve exited with {status:?}");
}
