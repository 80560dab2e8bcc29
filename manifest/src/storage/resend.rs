//! Reads sent again when the request never reached the server.
//!
//! object_store retries the transport errors it recognises, but a request
//! that fails with an error it cannot classify (hyper's "error sending
//! request" on a pooled connection the server has just closed, for
//! instance) is reported at once, after no retry: a listing at the start
//! of a build then fails the whole build. Reads are idempotent, so this
//! wrapper sends a read (get, head, a listing) again, a few times with a
//! short pause, when it failed that way. Writes pass through untouched:
//! whether a conditional write that failed mid-flight was applied is the
//! publish protocol's to find out, not a transport's.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult,
};

/// Extra sends of a read whose request was never answered.
pub const RESENDS: u32 = 3;

/// Whether `e` is a request that failed before any answer came back.
pub fn never_answered(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::Generic { .. }) && e.to_string().contains("error sending request")
}

fn pause(attempt: u32) -> Duration {
    Duration::from_millis(50 << attempt.min(4))
}

/// A store that sends reads again when their request never reached the
/// server (see the module docs).
#[derive(Debug)]
pub struct ResendReads {
    inner: Arc<dyn ObjectStore>,
}

impl ResendReads {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(ResendReads { inner })
    }
}

impl fmt::Display for ResendReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

async fn resend<T, F, Fut>(mut call: F) -> object_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = object_store::Result<T>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if attempt < RESENDS && never_answered(&e) => {
                tracing::debug!(error = %e, attempt, "read never answered; sending it again");
                tokio::time::sleep(pause(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[async_trait]
impl ObjectStore for ResendReads {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        resend(|| self.inner.get_opts(location, options.clone())).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        resend(|| self.inner.get_range(location, range.clone())).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        resend(|| self.inner.get_ranges(location, ranges)).await
    }

    async fn head(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        resend(|| self.inner.head(location)).await
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.inner.delete(location).await
    }

    fn delete_stream<'a>(
        &'a self,
        locations: BoxStream<'a, object_store::Result<Path>>,
    ) -> BoxStream<'a, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        // A listing is sent again only before it yielded anything: its
        // first page failing unanswered.
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.cloned();
        stream::once(async move {
            let mut attempt = 0;
            loop {
                let mut listing = inner.list(prefix.as_ref());
                match listing.next().await {
                    Some(Err(e)) if attempt < RESENDS && never_answered(&e) => {
                        tracing::debug!(error = %e, attempt, "listing never answered; sending it again");
                        tokio::time::sleep(pause(attempt)).await;
                        attempt += 1;
                    }
                    // An ended listing is not polled again.
                    None => return stream::empty().boxed(),
                    Some(first) => return stream::once(async move { first }).chain(listing).boxed(),
                }
            }
        })
        .flatten()
        .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        resend(|| self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.rename(from, to).await
    }

    async fn rename_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.rename_if_not_exists(from, to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails the first `fails` gets and listings as a request never sent.
    #[derive(Debug)]
    struct Unsent {
        inner: object_store::memory::InMemory,
        fails: AtomicU32,
    }

    impl fmt::Display for Unsent {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Unsent")
        }
    }

    impl Unsent {
        fn trip(&self) -> object_store::Result<()> {
            if self
                .fails
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(object_store::Error::Generic {
                    store: "Unsent",
                    source: "Error performing GET http://127.0.0.1/x - HTTP error: error sending request".into(),
                });
            }
            Ok(())
        }
    }

    #[async_trait]
    impl ObjectStore for Unsent {
        async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> object_store::Result<PutResult> {
            self.trip()?;
            self.inner.put_opts(l, p, o).await
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, l: &Path, o: GetOptions) -> object_store::Result<GetResult> {
            self.trip()?;
            self.inner.get_opts(l, o).await
        }
        async fn delete(&self, l: &Path) -> object_store::Result<()> {
            self.inner.delete(l).await
        }
        fn list(&self, p: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            match self.trip() {
                Err(e) => stream::once(async move { Err(e) }).boxed(),
                Ok(()) => self.inner.list(p),
            }
        }
        async fn list_with_delimiter(&self, p: Option<&Path>) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(p).await
        }
        async fn copy(&self, f: &Path, t: &Path) -> object_store::Result<()> {
            self.inner.copy(f, t).await
        }
        async fn copy_if_not_exists(&self, f: &Path, t: &Path) -> object_store::Result<()> {
            self.inner.copy_if_not_exists(f, t).await
        }
    }

    #[tokio::test]
    async fn unanswered_reads_are_sent_again_and_writes_are_not() {
        let unsent = Arc::new(Unsent {
            inner: object_store::memory::InMemory::new(),
            fails: AtomicU32::new(0),
        });
        let store = ResendReads::new(Arc::clone(&unsent) as Arc<dyn ObjectStore>);
        let p = Path::from("a/b");
        store.put(&p, Bytes::from_static(b"x").into()).await.expect("put");

        unsent.fails.store(RESENDS, Ordering::SeqCst);
        let got = store.get(&p).await.expect("sent again").bytes().await.expect("bytes");
        assert_eq!(&got[..], b"x");
        unsent.fails.store(RESENDS, Ordering::SeqCst);
        let listed: Vec<ObjectMeta> = store
            .list(None)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("listed");
        assert_eq!(listed.len(), 1);

        let none: Vec<_> = store.list(Some(&Path::from("empty"))).collect().await;
        assert!(none.is_empty(), "an empty listing ends");

        // Past the resends the failure is reported; a write is never resent.
        unsent.fails.store(RESENDS + 1, Ordering::SeqCst);
        assert!(never_answered(&store.get(&p).await.expect_err("gives up")));
        unsent.fails.store(1, Ordering::SeqCst);
        assert!(never_answered(
            &store
                .put(&p, Bytes::from_static(b"y").into())
                .await
                .expect_err("not resent")
        ));
        // Other failures are not resent either.
        unsent.fails.store(0, Ordering::SeqCst);
        assert!(matches!(
            store.get(&Path::from("none")).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }
}
