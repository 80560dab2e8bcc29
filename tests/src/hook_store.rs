//! An object-store wrapper that runs a test's hook before chosen calls, so
//! that a test can put an event exactly between two steps of the code
//! under test: hold one shard read until a swap has happened, move
//! `_CURRENT` between a plan and its commit, or panic inside a refresh.
//!
//! The hook sees each call's operation (`get`, `head`, `put`, `delete`,
//! `list`) and path, and returns a future to await before the call goes
//! on, or `None` to let it through at once.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use object_store::path::Path as ObjPath;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult,
};
use tokio::sync::Notify;

/// What a [`HookStore`] runs before each call: `Some(future)` to await
/// first, `None` to let the call through.
pub type Hook = Arc<dyn Fn(&'static str, &ObjPath) -> Option<BoxFuture<'static, ()>> + Send + Sync>;

/// See the module docs.
pub struct HookStore {
    inner: Arc<dyn ObjectStore>,
    hook: Mutex<Option<Hook>>,
}

impl HookStore {
    /// Wraps `inner`, with no hook yet.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(HookStore {
            inner,
            hook: Mutex::new(None),
        })
    }

    /// Wraps the store `url` resolves to (with default options).
    pub fn over(url: &str) -> Arc<Self> {
        let location = sf_manifest::resolve(url, &sf_manifest::StorageOptions::new()).expect("resolve the prefix");
        Self::new(location.store)
    }

    /// Replaces the hook.
    pub fn set_hook(
        &self,
        hook: impl Fn(&'static str, &ObjPath) -> Option<BoxFuture<'static, ()>> + Send + Sync + 'static,
    ) {
        *sf_manifest::sync::lock(&self.hook) = Some(Arc::new(hook));
    }

    /// Removes the hook.
    pub fn clear_hook(&self) {
        *sf_manifest::sync::lock(&self.hook) = None;
    }

    fn before(&self, op: &'static str, path: &ObjPath) -> Option<BoxFuture<'static, ()>> {
        // The hook runs outside the lock: it may panic on purpose.
        let hook = sf_manifest::sync::lock(&self.hook).clone();
        hook.and_then(|h| h(op, path))
    }

    async fn wait(&self, op: &'static str, path: &ObjPath) {
        if let Some(f) = self.before(op, path) {
            f.await;
        }
    }
}

/// Holds the first call a hook selects until the test releases it: the
/// call announces itself through [`entered`](Self::entered) and waits for
/// [`release`](Self::release).
#[derive(Debug, Default)]
pub struct Gate {
    armed: AtomicBool,
    entered: Notify,
    release: Notify,
}

impl Gate {
    /// An armed gate.
    pub fn new() -> Arc<Self> {
        Arc::new(Gate {
            armed: AtomicBool::new(true),
            entered: Notify::new(),
            release: Notify::new(),
        })
    }

    /// For a hook: the future that holds the first selected call, `None`
    /// for every later one.
    pub fn hold(self: &Arc<Self>) -> Option<BoxFuture<'static, ()>> {
        if !self.armed.swap(false, Ordering::SeqCst) {
            return None;
        }
        let gate = Arc::clone(self);
        Some(Box::pin(async move {
            gate.entered.notify_one();
            gate.release.notified().await;
        }))
    }

    /// Waits (at most a minute) until a call is held.
    pub async fn entered(&self) {
        tokio::time::timeout(std::time::Duration::from_secs(60), self.entered.notified())
            .await
            .expect("the gated call never came");
    }

    /// Lets the held call go on.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

impl fmt::Debug for HookStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HookStore({})", self.inner)
    }
}

impl fmt::Display for HookStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HookStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for HookStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.wait("put", location).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.wait("put", location).await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &ObjPath, options: GetOptions) -> object_store::Result<GetResult> {
        let op = if options.head { "head" } else { "get" };
        self.wait(op, location).await;
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &ObjPath, range: Range<u64>) -> object_store::Result<Bytes> {
        self.wait("get", location).await;
        self.inner.get_range(location, range).await
    }

    async fn head(&self, location: &ObjPath) -> object_store::Result<ObjectMeta> {
        self.wait("head", location).await;
        self.inner.head(location).await
    }

    async fn delete(&self, location: &ObjPath) -> object_store::Result<()> {
        self.wait("delete", location).await;
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&ObjPath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = self.inner.list(prefix);
        match self.before("list", prefix.unwrap_or(&ObjPath::default())) {
            None => inner,
            Some(f) => futures::stream::once(async move {
                f.await;
                inner
            })
            .flatten()
            .boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjPath>) -> object_store::Result<ListResult> {
        self.wait("list", prefix.unwrap_or(&ObjPath::default())).await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &ObjPath, to: &ObjPath) -> object_store::Result<()> {
        self.wait("put", to).await;
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &ObjPath, to: &ObjPath) -> object_store::Result<()> {
        self.wait("put", to).await;
        self.inner.copy_if_not_exists(from, to).await
    }
}
