//! A store wrapper that remembers why it failed and can be cut off.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult,
};

/// A store for one piece of work (an upload, a verification, a read).
///
/// It remembers the last failure, so that a step that timed out can say
/// what the store answered, and it can be tripped: from then on every call
/// fails with `NotSupported`, which no retry loop retries (SlateDB's
/// included), so background tasks stop instead of writing on into an
/// abandoned attempt.
#[derive(Debug)]
pub struct GuardedStore {
    inner: Arc<dyn ObjectStore>,
    tripped: AtomicBool,
    last_error: Arc<Mutex<Option<String>>>,
}

impl GuardedStore {
    /// A guard around `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(GuardedStore {
            inner,
            tripped: AtomicBool::new(false),
            last_error: Arc::new(Mutex::new(None)),
        })
    }

    /// Cuts the store off: every later call fails with `NotSupported`.
    pub fn trip(&self) {
        self.tripped.store(true, Ordering::SeqCst);
    }

    /// The last real failure the store answered (a missing object or a
    /// lost create race are answers, not failures).
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    fn check(&self) -> object_store::Result<()> {
        if self.tripped.load(Ordering::SeqCst) {
            Err(object_store::Error::NotSupported {
                source: "the shard operation using this store has ended".into(),
            })
        } else {
            Ok(())
        }
    }

    fn note<T>(&self, result: object_store::Result<T>) -> object_store::Result<T> {
        if let Err(e) = &result {
            note_error(&self.last_error, e);
        }
        result
    }
}

fn note_error(slot: &Mutex<Option<String>>, e: &object_store::Error) {
    // Expected answers (a missing object, a lost create race) are how
    // SlateDB probes the store; only real failures explain a stall.
    if !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
    ) {
        *lock(slot) = Some(e.to_string());
    }
}

impl fmt::Display for GuardedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guarded({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for GuardedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check()?;
        self.note(self.inner.put_opts(location, payload, opts).await)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check()?;
        self.note(self.inner.put_multipart_opts(location, opts).await)
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.check()?;
        self.note(self.inner.get_opts(location, options).await)
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        self.check()?;
        self.note(self.inner.get_range(location, range).await)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.check()?;
        self.note(self.inner.get_ranges(location, ranges).await)
    }

    async fn head(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        self.check()?;
        self.note(self.inner.head(location).await)
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.check()?;
        self.note(self.inner.delete(location).await)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Err(e) = self.check() {
            return stream::once(async { Err(e) }).boxed();
        }
        let slot = Arc::clone(&self.last_error);
        self.inner
            .list(prefix)
            .inspect(move |r| {
                if let Err(e) = r {
                    note_error(&slot, e);
                }
            })
            .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Err(e) = self.check() {
            return stream::once(async { Err(e) }).boxed();
        }
        let slot = Arc::clone(&self.last_error);
        self.inner
            .list_with_offset(prefix, offset)
            .inspect(move |r| {
                if let Err(e) = r {
                    note_error(&slot, e);
                }
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.check()?;
        self.note(self.inner.list_with_delimiter(prefix).await)
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.check()?;
        self.note(self.inner.copy(from, to).await)
    }

    async fn rename(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.check()?;
        self.note(self.inner.rename(from, to).await)
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.check()?;
        self.note(self.inner.copy_if_not_exists(from, to).await)
    }

    async fn rename_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.check()?;
        self.note(self.inner.rename_if_not_exists(from, to).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn it_remembers_failures_not_answers_and_trips() {
        let store = GuardedStore::new(Arc::new(InMemory::new()));
        let p = Path::from("a/b");
        assert!(store.get(&p).await.is_err(), "missing");
        assert_eq!(store.last_error(), None, "a missing object is an answer");
        store.put(&p, PutPayload::from_static(b"x")).await.expect("put");
        store.trip();
        let e = store.get(&p).await.expect_err("tripped");
        assert!(matches!(e, object_store::Error::NotSupported { .. }), "{e}");
        let listed: Vec<_> = store.list(None).collect().await;
        assert!(listed.iter().all(|r| r.is_err()), "listing fails too");
    }
}
