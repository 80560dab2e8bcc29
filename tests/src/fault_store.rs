//! An object store that does to chosen calls what the world or another
//! process would: fails them with the errors object_store returns, runs a
//! test's hook before them, or holds them at a [`Gate`] until the test lets
//! them go. The writer and the reader meet faults they did not choose, and
//! a race (another publisher moving `_CURRENT` while a build writes, a swap
//! landing while one shard read of a `multi_get` is held) happens exactly
//! between the two steps a test names.
//!
//! Every rule is said the same way: at which calls of which operation on a
//! key matching what, do what.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use sf_tests::fault_store::{Fault, FaultStore, Gate, Op, containing, ending};
//! # let store = FaultStore::new(Arc::new(object_store::memory::InMemory::new()));
//! // The first two shard uploads fail as a dropped connection would.
//! store.at(Op::Put, ending("shard.db")).times(2).fail(Fault::Generic);
//! // The first read of shard 2 waits until the test releases it.
//! let gate = Gate::new();
//! store.at(Op::Get, containing("db=00002/")).wait(&gate);
//! // Before the first claim marker is written, something else happens.
//! store.at(Op::Put, ending("_claim.json")).run(|_path| async { /* ... */ });
//! ```
//!
//! Each [`Fault`] is one error class `object_store` returns (and the form
//! it takes there: a timeout and a 5xx answer arrive as `Generic` with
//! the cause inside, as the HTTP client reports them).
//!
//! [`FaultStore::register`] puts the store under a fresh URL base of its
//! own (`fault<hex>://t`), so a test's job and reader reach it through
//! the normal URL resolution while every other test is untouched; a reader
//! or an admin can also be given the store itself.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path as ObjPath;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult,
};
use sf_manifest::ErrorKind;
use tokio::sync::Notify;

/// One class of object-store failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A dropped connection (`Generic`).
    Generic,
    /// A request that timed out (`Generic` around an I/O timeout).
    Timeout,
    /// A 5xx answer after the client's own retries (`Generic` with the
    /// status in the text, as object_store reports it).
    ServerError,
    /// The object is not there (`NotFound`): a read-after-write miss.
    NotFound,
    /// A conditional request lost (`Precondition`).
    Precondition,
    /// The credentials may not do this (`PermissionDenied`).
    PermissionDenied,
}

impl Fault {
    /// Every class.
    pub const ALL: [Fault; 6] = [
        Fault::Generic,
        Fault::Timeout,
        Fault::ServerError,
        Fault::NotFound,
        Fault::Precondition,
        Fault::PermissionDenied,
    ];

    /// The error this fault makes for `op` on `path`.
    pub fn error(self, op: Op, path: &ObjPath) -> object_store::Error {
        let what = format!("injected {self:?} on {op:?} {path}");
        match self {
            Fault::Generic => object_store::Error::Generic {
                store: "FaultStore",
                source: format!("{what}: connection reset by peer").into(),
            },
            Fault::Timeout => object_store::Error::Generic {
                store: "FaultStore",
                source: Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{what}: operation timed out"),
                )),
            },
            Fault::ServerError => object_store::Error::Generic {
                store: "FaultStore",
                source: format!("{what}: Server returned non-2xx status code: 503 Service Unavailable: SlowDown")
                    .into(),
            },
            Fault::NotFound => object_store::Error::NotFound {
                path: path.to_string(),
                source: what.into(),
            },
            Fault::Precondition => object_store::Error::Precondition {
                path: path.to_string(),
                source: what.into(),
            },
            Fault::PermissionDenied => object_store::Error::PermissionDenied {
                path: path.to_string(),
                source: what.into(),
            },
        }
    }

    /// The class the docs promise for it: what decides retries and the
    /// exit code.
    pub fn kind(self) -> ErrorKind {
        match self {
            Fault::Generic | Fault::Timeout | Fault::ServerError => ErrorKind::Unavailable,
            Fault::NotFound => ErrorKind::Data,
            Fault::Precondition => ErrorKind::Conflict,
            Fault::PermissionDenied => ErrorKind::Config,
        }
    }
}

/// An object-store operation a rule selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `put_opts` and `put_multipart_opts`.
    Put,
    /// `get_opts` (unless it asks for the head only) and `get_range`.
    Get,
    /// `head`, and `get_opts` asking for the head only.
    Head,
    /// `delete`.
    Delete,
    /// `list` and `list_with_delimiter`.
    List,
    /// `copy` and `copy_if_not_exists` (matched on the target).
    Copy,
}

/// Which object paths a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMatch {
    /// Paths ending with this text.
    Ending(String),
    /// Paths holding this text anywhere.
    Containing(String),
}

impl KeyMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            KeyMatch::Ending(s) => path.ends_with(s.as_str()),
            KeyMatch::Containing(s) => path.contains(s.as_str()),
        }
    }
}

/// Paths ending with `suffix` (`"shard.db"`, `"_CURRENT"`).
pub fn ending(suffix: &str) -> KeyMatch {
    KeyMatch::Ending(suffix.to_string())
}

/// Paths holding `part` anywhere (`"run_id=old/db=00002/"`).
pub fn containing(part: &str) -> KeyMatch {
    KeyMatch::Containing(part.to_string())
}

/// Holds the calls a rule sends to it until the test releases them: a
/// held call announces itself through [`entered`](Self::entered) and waits
/// for [`release`](Self::release) (one release per held call).
#[derive(Debug, Default)]
pub struct Gate {
    entered: Notify,
    release: Notify,
}

impl Gate {
    /// A gate no call has reached yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Gate::default())
    }

    /// Waits (at most a minute) until a call is held.
    pub async fn entered(&self) {
        tokio::time::timeout(std::time::Duration::from_secs(60), self.entered.notified())
            .await
            .expect("the gated call never came");
    }

    /// Lets a held call go on.
    pub fn release(&self) {
        self.release.notify_one();
    }

    async fn hold(&self) {
        self.entered.notify_one();
        self.release.notified().await;
    }
}

type Hook = Arc<dyn Fn(ObjPath) -> BoxFuture<'static, ()> + Send + Sync>;

#[derive(Clone)]
enum Action {
    Fail(Fault),
    /// The call goes through, then fails: its answer is lost.
    FailAfter(Fault),
    Run(Hook),
    Wait(Arc<Gate>),
}

struct Rule {
    op: Op,
    key: KeyMatch,
    /// Matching calls to let through before the first selected one.
    skip: usize,
    /// Selected calls (`usize::MAX`: every one after `skip`).
    count: usize,
    seen: AtomicUsize,
    fired: AtomicUsize,
    action: Action,
}

/// Which calls a rule will select: made by [`FaultStore::at`], finished
/// (and added to the store) by the action it is given.
#[derive(Debug)]
#[must_use = "a rule is added only when it is given its action"]
pub struct At<'a> {
    store: &'a FaultStore,
    op: Op,
    key: KeyMatch,
    skip: usize,
    count: usize,
}

impl At<'_> {
    /// Lets the first `calls` matching calls through untouched.
    pub fn after(mut self, calls: usize) -> Self {
        self.skip = calls;
        self
    }

    /// Selects `calls` matching calls (one unless said otherwise).
    pub fn times(mut self, calls: usize) -> Self {
        self.count = calls;
        self
    }

    /// Selects every matching call from then on.
    pub fn every(self) -> Self {
        self.times(usize::MAX)
    }

    /// Fails the selected calls with `fault` before they reach the store.
    pub fn fail(self, fault: Fault) {
        self.then(Action::Fail(fault));
    }

    /// Lets the selected calls reach the store and then fails them with
    /// `fault`: the store did the work and the answer was lost (a timeout
    /// after the write landed).
    pub fn fail_after(self, fault: Fault) {
        self.then(Action::FailAfter(fault));
    }

    /// Runs `hook`, given the call's path, before each selected call goes on.
    pub fn run<F, Fut>(self, hook: F)
    where
        F: Fn(ObjPath) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.then(Action::Run(Arc::new(move |path| hook(path).boxed())));
    }

    /// Holds each selected call at `gate` until the test releases it.
    pub fn wait(self, gate: &Arc<Gate>) {
        self.then(Action::Wait(Arc::clone(gate)));
    }

    fn then(self, action: Action) {
        sf_manifest::sync::lock(&self.store.rules).push(Arc::new(Rule {
            op: self.op,
            key: self.key,
            skip: self.skip,
            count: self.count,
            seen: AtomicUsize::new(0),
            fired: AtomicUsize::new(0),
            action,
        }));
    }
}

/// The store (see the module docs).
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    rules: Mutex<Vec<Arc<Rule>>>,
    calls: Mutex<Vec<(Op, String)>>,
}

impl FaultStore {
    /// A store passing every call to `inner` until rules are added.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(FaultStore {
            inner,
            rules: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        })
    }

    /// Wraps the store `url` resolves to (with default options); paths
    /// are the ones that store sees.
    pub fn over(url: &str) -> Arc<Self> {
        let location = sf_manifest::resolve(url, &sf_manifest::StorageOptions::new()).expect("resolve the prefix");
        Self::new(location.store)
    }

    /// A rule for calls of `op` on paths matching `key`: by default the
    /// first such call; [`At::after`], [`At::times`] and [`At::every`]
    /// choose others, and the action ends the sentence.
    pub fn at(&self, op: Op, key: KeyMatch) -> At<'_> {
        At {
            store: self,
            op,
            key,
            skip: 0,
            count: 1,
        }
    }

    /// The store under the rules, for hooks that change what it holds.
    pub fn inner(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.inner)
    }

    /// Removes every rule: calls go through from now on.
    pub fn clear(&self) {
        sf_manifest::sync::lock(&self.rules).clear();
    }

    /// How many calls the rules failed, ran a hook for or held.
    pub fn fired(&self) -> usize {
        sf_manifest::sync::lock(&self.rules)
            .iter()
            .map(|r| r.fired.load(Ordering::SeqCst))
            .sum()
    }

    /// How many calls of `op` on paths matching `key` were made, whether
    /// a rule selected them or not.
    pub fn calls(&self, op: Op, key: &KeyMatch) -> usize {
        sf_manifest::sync::lock(&self.calls)
            .iter()
            .filter(|(o, p)| *o == op && key.matches(p))
            .count()
    }

    /// Registers the store under a fresh URL base and returns it
    /// (`fault<hex>://t`); paths under it are paths of the inner store.
    pub fn register(self: &Arc<Self>) -> Registered {
        let base = format!("fault{}://t", sf_manifest::format::ids::unique_hex());
        sf_manifest::storage::location::register_store(&base, Arc::clone(self) as Arc<dyn ObjectStore>);
        Registered { base }
    }

    /// Notes the call and picks what the rules do to it, in the order
    /// they were added, up to the first that fails it. Hooks run outside
    /// the locks: they may panic on purpose, or take their time.
    fn select(&self, op: Op, path: &ObjPath) -> Vec<Action> {
        sf_manifest::sync::lock(&self.calls).push((op, path.to_string()));
        let rules: Vec<Arc<Rule>> = sf_manifest::sync::lock(&self.rules).clone();
        let mut actions = Vec::new();
        for rule in rules {
            if rule.op != op || !rule.key.matches(path.as_ref()) {
                continue;
            }
            let n = rule.seen.fetch_add(1, Ordering::SeqCst);
            if n < rule.skip || n - rule.skip >= rule.count {
                continue;
            }
            rule.fired.fetch_add(1, Ordering::SeqCst);
            actions.push(rule.action.clone());
            if matches!(rule.action, Action::Fail(_) | Action::FailAfter(_)) {
                break;
            }
        }
        actions
    }

    /// Runs the hooks and gates the rules picked for the call; an error
    /// fails it at once, a fault returned fails it after it went through.
    async fn before(&self, op: Op, path: &ObjPath) -> object_store::Result<Option<Fault>> {
        for action in self.select(op, path) {
            match action {
                Action::Fail(fault) => return Err(fault.error(op, path)),
                Action::FailAfter(fault) => return Ok(Some(fault)),
                Action::Run(hook) => hook(path.clone()).await,
                Action::Wait(gate) => gate.hold().await,
            }
        }
        Ok(None)
    }

    /// One call of `op` on `path` through the rules, then `call` on the
    /// inner store.
    async fn through<T, Fut>(&self, op: Op, path: &ObjPath, call: impl FnOnce() -> Fut) -> object_store::Result<T>
    where
        Fut: Future<Output = object_store::Result<T>>,
    {
        let after = self.before(op, path).await?;
        let done = call().await?;
        match after {
            Some(fault) => Err(fault.error(op, path)),
            None => Ok(done),
        }
    }
}

/// A [`FaultStore`] registered under its own URL base, unregistered on drop.
#[derive(Debug)]
pub struct Registered {
    base: String,
}

impl Registered {
    /// The URL base, `fault<hex>://t`.
    pub fn base(&self) -> &str {
        &self.base
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        sf_manifest::storage::location::unregister_store(&self.base);
    }
}

impl fmt::Debug for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.through(Op::Put, location, || self.inner.put_opts(location, payload, opts))
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.through(Op::Put, location, || self.inner.put_multipart_opts(location, opts))
            .await
    }

    async fn get_opts(&self, location: &ObjPath, options: GetOptions) -> object_store::Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        self.through(op, location, || self.inner.get_opts(location, options))
            .await
    }

    async fn get_range(&self, location: &ObjPath, range: Range<u64>) -> object_store::Result<Bytes> {
        self.through(Op::Get, location, || self.inner.get_range(location, range))
            .await
    }

    async fn head(&self, location: &ObjPath) -> object_store::Result<ObjectMeta> {
        self.through(Op::Head, location, || self.inner.head(location)).await
    }

    async fn delete(&self, location: &ObjPath) -> object_store::Result<()> {
        self.through(Op::Delete, location, || self.inner.delete(location)).await
    }

    fn list(&self, prefix: Option<&ObjPath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let at = prefix.cloned().unwrap_or_default();
        let actions = self.select(Op::List, &at);
        let inner = self.inner.list(prefix);
        if actions.is_empty() {
            return inner;
        }
        // The listing is a stream: the hooks and gates run when it is
        // first polled, as a call would meet them.
        futures::stream::once(async move {
            for action in actions {
                match action {
                    Action::Fail(fault) => {
                        return futures::stream::once(async move { Err(fault.error(Op::List, &at)) }).boxed();
                    }
                    Action::FailAfter(fault) => {
                        return inner
                            .chain(futures::stream::once(async move { Err(fault.error(Op::List, &at)) }))
                            .boxed();
                    }
                    Action::Run(hook) => hook(at.clone()).await,
                    Action::Wait(gate) => gate.hold().await,
                }
            }
            inner
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjPath>) -> object_store::Result<ListResult> {
        let at = prefix.cloned().unwrap_or_default();
        self.through(Op::List, &at, || self.inner.list_with_delimiter(prefix))
            .await
    }

    async fn copy(&self, from: &ObjPath, to: &ObjPath) -> object_store::Result<()> {
        self.through(Op::Copy, to, || self.inner.copy(from, to)).await
    }

    async fn copy_if_not_exists(&self, from: &ObjPath, to: &ObjPath) -> object_store::Result<()> {
        self.through(Op::Copy, to, || self.inner.copy_if_not_exists(from, to))
            .await
    }
}
