//! An object store that fails chosen calls with the errors the world
//! produces, or runs a hook at a chosen call, for tests of the writer and
//! the reader against faults they did not choose.
//!
//! Each [`Fault`] is one error class `object_store` returns (and the form
//! it takes there: a timeout and a 5xx answer arrive as `Generic` with
//! the cause inside, as the HTTP client reports them). A rule selects an
//! operation, a path predicate and which of the matching calls (the
//! `from`-th onwards, `count` of them) fail; a hook rule runs an async
//! closure before the selected call goes through, which makes a race
//! (another publisher moving `_CURRENT` while a build writes) exact.
//!
//! [`FaultStore::register`] puts the store under a fresh URL base of its
//! own (`fault<hex>://t`), so a test's job and reader reach it through
//! the normal URL resolution while every other test is untouched.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use object_store::path::Path as ObjPath;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult,
};
use sf_manifest::ErrorKind;

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
    /// `get_opts` and `get_range`.
    Get,
    /// `head`.
    Head,
    /// `delete`.
    Delete,
    /// `list` and `list_with_delimiter`.
    List,
    /// `copy` and `copy_if_not_exists`.
    Copy,
}

/// Code a hook rule runs before the call it selected goes through; it
/// gets the call's path.
pub type Hook = Arc<dyn Fn(ObjPath) -> BoxFuture<'static, ()> + Send + Sync>;

type PathMatch = Box<dyn Fn(&ObjPath) -> bool + Send + Sync>;

enum Action {
    Fail(Fault),
    /// The call goes through, then fails: its answer is lost.
    FailAfter(Fault),
    Run(Hook),
}

struct Rule {
    op: Op,
    matches: PathMatch,
    /// Matching calls to let through before the first selected one.
    skip: usize,
    /// Selected calls (`usize::MAX`: every one after `skip`).
    count: usize,
    seen: AtomicUsize,
    fired: AtomicUsize,
    action: Action,
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

    fn add(&self, op: Op, matches: PathMatch, skip: usize, count: usize, action: Action) {
        sf_manifest::sync::lock(&self.rules).push(Arc::new(Rule {
            op,
            matches,
            skip,
            count,
            seen: AtomicUsize::new(0),
            fired: AtomicUsize::new(0),
            action,
        }));
    }

    /// Fails `count` calls of `op` on paths ending with `suffix` with
    /// `fault`, after letting the first `skip` of them through
    /// (`usize::MAX` fails every one after that).
    pub fn fail(&self, op: Op, suffix: &str, skip: usize, count: usize, fault: Fault) {
        let suffix = suffix.to_string();
        self.add(
            op,
            Box::new(move |p| p.as_ref().ends_with(&suffix)),
            skip,
            count,
            Action::Fail(fault),
        );
    }

    /// The store under the faults, for hooks that change what it holds.
    pub fn inner(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.inner)
    }

    /// Lets the first put on a path ending with `suffix` through and then
    /// fails it with `fault`: the store wrote it, the answer was lost (a
    /// timeout after the write landed).
    pub fn fail_after_first_put(&self, suffix: &str, fault: Fault) {
        let suffix = suffix.to_string();
        self.add(
            Op::Put,
            Box::new(move |p| p.as_ref().ends_with(&suffix)),
            0,
            1,
            Action::FailAfter(fault),
        );
    }

    /// Runs `hook` once, before the first call of `op` on a path ending
    /// with `suffix` goes through.
    pub fn before_first(&self, op: Op, suffix: &str, hook: Hook) {
        let suffix = suffix.to_string();
        self.add(
            op,
            Box::new(move |p| p.as_ref().ends_with(&suffix)),
            0,
            1,
            Action::Run(hook),
        );
    }

    /// Removes every rule: calls go through from now on.
    pub fn clear(&self) {
        sf_manifest::sync::lock(&self.rules).clear();
    }

    /// How many calls the rules failed or ran a hook for.
    pub fn fired(&self) -> usize {
        sf_manifest::sync::lock(&self.rules)
            .iter()
            .map(|r| r.fired.load(Ordering::SeqCst))
            .sum()
    }

    /// The calls of `op` seen on paths ending with `suffix`.
    pub fn calls(&self, op: Op, suffix: &str) -> usize {
        sf_manifest::sync::lock(&self.calls)
            .iter()
            .filter(|(o, p)| *o == op && p.ends_with(suffix))
            .count()
    }

    /// Registers the store under a fresh URL base and returns it
    /// (`fault<hex>://t`); paths under it are paths of the inner store.
    pub fn register(self: &Arc<Self>) -> Registered {
        let base = format!("fault{}://t", sf_manifest::format::ids::unique_hex());
        sf_manifest::storage::location::register_store(&base, Arc::clone(self) as Arc<dyn ObjectStore>);
        Registered { base }
    }

    async fn before(&self, op: Op, path: &ObjPath) -> object_store::Result<Option<Fault>> {
        sf_manifest::sync::lock(&self.calls).push((op, path.to_string()));
        let rules: Vec<Arc<Rule>> = sf_manifest::sync::lock(&self.rules).clone();
        for rule in rules {
            if rule.op != op || !(rule.matches)(path) {
                continue;
            }
            let n = rule.seen.fetch_add(1, Ordering::SeqCst);
            if n < rule.skip || n - rule.skip >= rule.count {
                continue;
            }
            rule.fired.fetch_add(1, Ordering::SeqCst);
            match &rule.action {
                Action::Fail(fault) => return Err(fault.error(op, path)),
                Action::FailAfter(fault) => return Ok(Some(*fault)),
                Action::Run(hook) => hook(path.clone()).await,
            }
        }
        Ok(None)
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
        let after = self.before(Op::Put, location).await?;
        let done = self.inner.put_opts(location, payload, opts).await?;
        match after {
            Some(fault) => Err(fault.error(Op::Put, location)),
            None => Ok(done),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.before(Op::Put, location).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &ObjPath, options: GetOptions) -> object_store::Result<GetResult> {
        self.before(Op::Get, location).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &ObjPath, range: Range<u64>) -> object_store::Result<Bytes> {
        self.before(Op::Get, location).await?;
        self.inner.get_range(location, range).await
    }

    async fn head(&self, location: &ObjPath) -> object_store::Result<ObjectMeta> {
        self.before(Op::Head, location).await?;
        self.inner.head(location).await
    }

    async fn delete(&self, location: &ObjPath) -> object_store::Result<()> {
        self.before(Op::Delete, location).await?;
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&ObjPath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        sf_manifest::sync::lock(&self.calls).push((Op::List, prefix.map(ToString::to_string).unwrap_or_default()));
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjPath>) -> object_store::Result<ListResult> {
        let at = prefix.cloned().unwrap_or_default();
        self.before(Op::List, &at).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &ObjPath, to: &ObjPath) -> object_store::Result<()> {
        self.before(Op::Copy, to).await?;
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &ObjPath, to: &ObjPath) -> object_store::Result<()> {
        self.before(Op::Copy, to).await?;
        self.inner.copy_if_not_exists(from, to).await
    }
}
