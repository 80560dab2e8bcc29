//! The connection layer in front of both front ends: a bound on open
//! connections, an idle timeout, and the HTTP accept loop with its header
//! timeout and HTTP/2 limits.
//!
//! Every accepted connection holds a place among [`Connections`] (HTTP and
//! gRPC share one bound, as they share the process's file descriptors).
//! At the bound, the connection idle the longest (no request running on
//! it) is closed to make room; when every connection is busy, the new one
//! is closed at once and counted. A connection is *busy* while a request
//! on it is being served (from its head being read to its answer being
//! handed to the connection), so a slow request is bounded by the request
//! deadline, an idle or half-sent one by the idle and header timeouts, and
//! neither can hold the process's descriptors.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;
use crate::metrics::{CONNECTIONS_CLOSED, CONNECTIONS_OPEN, CONNECTIONS_REFUSED};

/// How long a peer has to answer an HTTP/2 keep-alive ping.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes of one request's headers (HTTP/1 and HTTP/2).
pub(crate) const MAX_HEADER_BYTES: u32 = 64 * 1024;
/// How long an accept at the bound waits for an evicted idle connection
/// to give its place back.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// The process's soft limit on open files (`/proc/self/limits`), or 1024
/// when it cannot be read.
pub(crate) fn open_file_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(1024)
}

/// What one open connection is doing.
#[derive(Debug)]
pub(crate) struct Activity {
    id: u64,
    epoch: Instant,
    /// Requests being served on it now.
    busy: AtomicUsize,
    /// Milliseconds after `epoch` when `busy` last changed.
    last_change: AtomicU64,
    /// Set to close the connection to make room for another.
    evict: AtomicBool,
    /// The connection's reader, woken when `evict` is set.
    waker: AtomicWaker,
}

impl Activity {
    fn new(id: u64) -> Self {
        Activity {
            id,
            epoch: Instant::now(),
            busy: AtomicUsize::new(0),
            last_change: AtomicU64::new(0),
            evict: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_change.store(ms, Ordering::Release);
    }

    /// Marks a request as being served until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        let busy = self.busy.fetch_add(1, Ordering::AcqRel) + 1;
        self.touch();
        tracing::trace!(connection = self.id, busy, "request started");
        Busy(Arc::clone(self))
    }

    /// How long no request has run on the connection; `None` while one runs.
    fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.last_change.load(Ordering::Acquire));
        Some(self.epoch.elapsed().saturating_sub(since))
    }
}

/// A request being served on a connection ([`Activity::begin`]).
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
        // The idle timer of the connection restarts from now.
        self.0.waker.wake();
    }
}

/// The peer of a connection and what it is doing: in every request's
/// extensions (HTTP and gRPC).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    pub(crate) activity: Arc<Activity>,
}

/// The open connections of both listeners, and their bound.
#[derive(Debug)]
pub(crate) struct Connections {
    cap: usize,
    slots: Arc<Semaphore>,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
    idle_timeout: Duration,
}

impl Connections {
    pub(crate) fn new(limits: &Limits) -> Arc<Connections> {
        let cap = limits.connection_cap(open_file_limit());
        Arc::new(Connections {
            cap,
            slots: Arc::new(Semaphore::new(cap)),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            idle_timeout: limits.idle_timeout,
        })
    }

    /// The bound on open connections.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        // The map holds no invariant a panic elsewhere could break.
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next connection on `listener` that gets a place; connections
    /// refused at the bound are closed and counted. Errors of `accept`
    /// itself (out of file descriptors, a connection reset before it was
    /// taken) are logged and waited out, never returned.
    pub(crate) async fn accept(self: &Arc<Self>, listener: &TcpListener, which: &'static str) -> ConnIo<TcpStream> {
        let mut last_warning: Option<Instant> = None;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(listener = which, error = %e, "accepting a connection failed; retrying");
                        last_warning = Some(Instant::now());
                    }
                    // Out of descriptors: give closing connections a moment.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Some(slot) = self.place().await else {
                metrics::counter!(CONNECTIONS_REFUSED, "listener" => which).increment(1);
                tracing::debug!(listener = which, %peer, cap = self.cap, "connection refused: every connection is busy");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            return self.wrap(tcp, peer, slot, which);
        }
    }

    /// A place for a new connection: a free one, or the one the longest
    /// idle connection gives back when it is closed for it.
    async fn place(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = Arc::clone(&self.slots).try_acquire_owned() {
            return Some(p);
        }
        let victim = {
            let open = self.lock();
            open.values()
                .filter(|a| !a.evict.load(Ordering::Acquire))
                .filter_map(|a| a.idle_for().map(|idle| (idle, a)))
                .max_by_key(|(idle, a)| (*idle, std::cmp::Reverse(a.id)))
                .map(|(_, a)| Arc::clone(a))
        };
        if let Some(v) = victim {
            v.evict.store(true, Ordering::Release);
            v.waker.wake();
        }
        tokio::time::timeout(EVICTION_WAIT, Arc::clone(&self.slots).acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }

    fn wrap<T>(
        self: &Arc<Self>,
        io: T,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
        which: &'static str,
    ) -> ConnIo<T> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new(id));
        activity.touch();
        self.lock().insert(id, Arc::clone(&activity));
        metrics::gauge!(CONNECTIONS_OPEN, "listener" => which).increment(1.0);
        ConnIo {
            inner: io,
            info: ConnInfo { peer, activity },
            idle_timeout: self.idle_timeout,
            timer: Box::pin(tokio::time::sleep(self.idle_timeout)),
            owner: Arc::clone(self),
            which,
            closed_why: None,
            _slot: slot,
        }
    }
}

/// An accepted connection with its place: closed (its reads fail) once no
/// request has run on it for the idle timeout, or when evicted to make
/// room. Dropping it gives its place back.
#[derive(Debug)]
pub(crate) struct ConnIo<T> {
    inner: T,
    info: ConnInfo,
    idle_timeout: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    owner: Arc<Connections>,
    which: &'static str,
    closed_why: Option<&'static str>,
    _slot: OwnedSemaphorePermit,
}

impl<T> ConnIo<T> {
    pub(crate) fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// Whether the connection is to be closed now, and why; arms the idle
    /// timer otherwise.
    fn closing(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        let a = &self.info.activity;
        a.waker.register(cx.waker());
        if a.evict.load(Ordering::Acquire) {
            return Some("evicted");
        }
        // At most twice round: a timer found expired is re-armed from the
        // state it was found in.
        for _ in 0..2 {
            let wait = match a.idle_for() {
                Some(idle) if idle >= self.idle_timeout => return Some("idle_timeout"),
                Some(idle) => self.idle_timeout - idle,
                None => self.idle_timeout,
            };
            self.timer.as_mut().reset(tokio::time::Instant::now() + wait);
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
        None
    }
}

impl<T> Drop for ConnIo<T> {
    fn drop(&mut self) {
        self.owner.lock().remove(&self.info.activity.id);
        metrics::gauge!(CONNECTIONS_OPEN, "listener" => self.which).decrement(1.0);
        if let Some(why) = self.closed_why {
            metrics::counter!(CONNECTIONS_CLOSED, "listener" => self.which, "reason" => why).increment(1);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ConnIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(why) = this.closed_why {
            return Poll::Ready(Err(closed_error(why)));
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => {}
            ready => return ready,
        }
        match this.closing(cx) {
            None => Poll::Pending,
            Some(why) => {
                tracing::debug!(listener = this.which, peer = %this.info.peer, reason = why, "closing connection");
                this.closed_why = Some(why);
                Poll::Ready(Err(closed_error(why)))
            }
        }
    }
}

fn closed_error(why: &'static str) -> io::Error {
    match why {
        "evicted" => io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "closed to make room for a new connection",
        ),
        _ => io::Error::new(io::ErrorKind::TimedOut, "closed after its idle timeout"),
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ConnIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A served connection: in clear text, or in TLS over the same.
#[derive(Debug)]
pub(crate) enum Io {
    Plain(ConnIo<TcpStream>),
    Tls(Box<tokio_rustls::server::TlsStream<ConnIo<TcpStream>>>),
}

impl Io {
    /// `io`, after a TLS handshake when `tls` is given; `None` (the
    /// connection dropped, the reason logged) when the handshake fails or
    /// does not end within `timeout`.
    pub(crate) async fn start(io: ConnIo<TcpStream>, tls: Option<&crate::tls::Tls>, timeout: Duration) -> Option<Io> {
        let Some(tls) = tls else {
            return Some(Io::Plain(io));
        };
        let peer = io.info.peer;
        match tokio::time::timeout(timeout, tls.acceptor().accept(io)).await {
            Ok(Ok(s)) => Some(Io::Tls(Box::new(s))),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake not done within the header timeout");
                None
            }
        }
    }

    pub(crate) fn info(&self) -> &ConnInfo {
        match self {
            Io::Plain(io) => &io.info,
            Io::Tls(s) => &s.get_ref().0.info,
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Io {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info().clone()
    }
}

/// The gRPC listener's connections, each after its handshake (done in a
/// task of its own, so a slow client holds up no other), for tonic's
/// `serve_with_incoming`.
pub(crate) fn grpc_incoming(
    conns: Arc<Connections>,
    listener: TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    handshake_timeout: Duration,
) -> impl futures::Stream<Item = io::Result<Io>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Io>(64);
    // Ends when the server stops taking connections (the receiver is
    // dropped) at its next accepted connection, or with the runtime.
    tokio::spawn(async move {
        loop {
            let io = conns.accept(&listener, "grpc").await;
            let (tx, tls) = (tx.clone(), tls.clone());
            if tx.is_closed() {
                return;
            }
            tokio::spawn(async move {
                if let Some(io) = Io::start(io, tls.as_deref(), handshake_timeout).await {
                    let _ = tx.send(io).await;
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|io| (Ok(io), rx)) })
}

/// Returns once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// Serves HTTP on `listener` (`which`: its label in the connection
/// figures) until `stop` turns true: each connection in
/// a task of `tasks` with the header timeout and HTTP/2 limits of
/// `limits`, each request marked busy on its connection and given its
/// [`ConnInfo`]. Once stopped, it accepts no more and asks every open
/// connection to finish gracefully; the caller waits for `tasks`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_http(
    conns: Arc<Connections>,
    listener: TcpListener,
    which: &'static str,
    tls: Option<Arc<crate::tls::Tls>>,
    router: axum::Router,
    limits: &Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES as usize * 2)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_header_list_size(MAX_HEADER_BYTES);
    let builder = Arc::new(builder);
    loop {
        let io = tokio::select! {
            io = conns.accept(&listener, which) => io,
            () = stopped(&mut stop) => break,
        };
        // Reap the finished ones so the set stays the size of what is open.
        while tasks.try_join_next().is_some() {}
        let info = io.info().clone();
        let router = router.clone();
        let service = tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(info.clone());
            let busy = info.activity.begin();
            let answer = tower::ServiceExt::oneshot(router.clone(), req);
            async move {
                let resp = answer.await;
                drop(busy);
                resp
            }
        });
        let builder = Arc::clone(&builder);
        let mut stop = stop.clone();
        let (tls, handshake_timeout) = (tls.clone(), limits.header_read_timeout);
        tasks.spawn(async move {
            let Some(io) = Io::start(io, tls.as_deref(), handshake_timeout).await else {
                return;
            };
            let conn =
                builder.serve_connection(TokioIo::new(io), hyper_util::service::TowerToHyperService::new(service));
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_time_counts_from_the_last_request() {
        let a = Arc::new(Activity::new(0));
        a.touch();
        let busy = a.begin();
        assert_eq!(a.idle_for(), None, "busy while a request runs");
        let two = a.begin();
        drop(busy);
        assert_eq!(a.idle_for(), None, "busy while any request runs");
        drop(two);
        assert!(a.idle_for().expect("idle") < Duration::from_secs(1));
    }

    #[test]
    fn the_default_cap_follows_the_open_file_limit() {
        let l = Limits::default();
        assert_eq!(l.connection_cap(256), 128);
        assert_eq!(l.connection_cap(10), 16);
        assert_eq!(l.connection_cap(1 << 20), 10_000);
        let l = Limits {
            max_connections: Some(7),
            ..Limits::default()
        };
        assert_eq!(l.connection_cap(256), 7);
        assert!(open_file_limit() >= 16);
    }

    #[tokio::test]
    async fn at_the_bound_the_longest_idle_connection_makes_room() {
        let limits = Limits {
            max_connections: Some(2),
            ..Limits::default()
        };
        let conns = Connections::new(&limits);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _c1 = TcpStream::connect(addr).await.expect("c1");
        let first = conns.accept(&listener, "test").await;
        let _c2 = TcpStream::connect(addr).await.expect("c2");
        let second = conns.accept(&listener, "test").await;
        // The second is busy; the first is idle and is the one evicted.
        let _busy = second.info().activity.begin();
        let _c3 = TcpStream::connect(addr).await.expect("c3");
        let mut first = first;
        let accepting = tokio::spawn({
            let conns = Arc::clone(&conns);
            async move { conns.accept(&listener, "test").await }
        });
        // The evicted connection's next read fails, and dropping it gives
        // its place to the third.
        let mut buf = [0u8; 1];
        let err = tokio::io::AsyncReadExt::read(&mut first, &mut buf)
            .await
            .expect_err("evicted");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert!(second.info().activity.evict.load(Ordering::Acquire).eq(&false));
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(10), accepting)
            .await
            .expect("accepted in time")
            .expect("task");
        assert_eq!(conns.lock().len(), 2);
        drop(third);
        assert_eq!(conns.lock().len(), 1);
    }
}
