//! The objects of an upload, hashed as they are written: what verification
//! checks a SlateDB shard against, instead of reading every row back.
//!
//! [`DigestStore`] wraps the store an upload hands SlateDB (its writer,
//! compactor and admin). Every object it writes is hashed (`xxh3_128` of
//! its bytes) while it passes, and forgotten when it is deleted; what is
//! left when the upload ends is the attempt folder's content, and
//! [`DigestStore::checksum`] sums it up as one `xxh3_128-objects:<hex>`
//! over every object's name (relative to the attempt folder), size and
//! hash, in name order. [`objects_checksum`] computes the same from what a
//! store holds now, reading each object once: a byte changed, an object
//! missing, replaced or added (a later write, a WAL) changes it. The claim
//! marker is not SlateDB's and is left out.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult, Result, UploadPart,
};
use sf_manifest::format::layout::CLAIM_FILE;
use sf_manifest::sync::lock;
use xxhash_rust::xxh3::Xxh3;

/// The algorithm tag of an objects checksum.
pub const OBJECTS_ALGORITHM: &str = "xxh3_128-objects";

/// An object's size and content hash.
type Digest = (u64, u128);

/// A store that hashes what it writes; see the [module docs](self).
pub(super) struct DigestStore {
    inner: Arc<dyn ObjectStore>,
    written: Arc<Mutex<BTreeMap<String, Digest>>>,
}

impl DigestStore {
    pub(super) fn new(inner: Arc<dyn ObjectStore>) -> Self {
        DigestStore {
            inner,
            written: Arc::default(),
        }
    }

    /// The checksum of the objects written under `root` and still there
    /// (as far as this store saw).
    pub(super) fn checksum(&self, root: &Path) -> String {
        let written = lock(&self.written);
        let objects = written.iter().filter_map(|(path, d)| Some((relative(root, path)?, *d)));
        sum(objects)
    }
}

impl fmt::Debug for DigestStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestStore").field("inner", &self.inner).finish()
    }
}

impl fmt::Display for DigestStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DigestStore({})", self.inner)
    }
}

/// `path` relative to `root`, or `None` outside it and for the claim
/// marker.
fn relative(root: &Path, path: &str) -> Option<String> {
    let root = root.as_ref();
    let rel = if root.is_empty() {
        path
    } else {
        path.strip_prefix(root)?.strip_prefix('/')?
    };
    (rel != CLAIM_FILE).then(|| rel.to_string())
}

/// One checksum over `(name, (size, hash))` pairs in name order.
fn sum(objects: impl Iterator<Item = (String, Digest)>) -> String {
    let mut h = Xxh3::new();
    for (name, (size, hash)) in objects {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&size.to_le_bytes());
        h.update(&hash.to_le_bytes());
    }
    format!("{OBJECTS_ALGORITHM}:{:032x}", h.digest128())
}

fn digest(payload: &PutPayload) -> Digest {
    let mut h = Xxh3::new();
    let mut size = 0u64;
    for chunk in payload.iter() {
        h.update(chunk);
        size += chunk.len() as u64;
    }
    (size, h.digest128())
}

/// The objects checksum of what the store holds under `root` now, every
/// object read once (in large pieces); `(checksum, objects read)`.
pub(super) async fn objects_checksum(store: &Arc<dyn ObjectStore>, root: &Path) -> Result<(String, usize)> {
    let mut found = BTreeMap::new();
    let mut listing = store.list(Some(root));
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        let Some(rel) = relative(root, meta.location.as_ref()) else {
            continue;
        };
        let res = store.get(&meta.location).await?;
        let mut h = Xxh3::new();
        let mut size = 0u64;
        let mut body = sf_manifest::storage::body::body_chunks(res);
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            h.update(&chunk);
            size += chunk.len() as u64;
        }
        found.insert(rel, (size, h.digest128()));
    }
    let n = found.len();
    Ok((sum(found.into_iter()), n))
}

#[async_trait]
impl ObjectStore for DigestStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let d = digest(&payload);
        let put = self.inner.put_opts(location, payload, opts).await?;
        lock(&self.written).insert(location.to_string(), d);
        Ok(put)
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DigestUpload {
            inner,
            hasher: Xxh3::new(),
            size: 0,
            location: location.to_string(),
            written: Arc::clone(&self.written),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> Result<Bytes> {
        self.inner.get_range(location, range).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        let deleted = self.inner.delete(location).await;
        // Gone, or in doubt: either way not part of what was written.
        lock(&self.written).remove(location.as_ref());
        deleted
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy(from, to).await?;
        self.copied(from, to, false);
        Ok(())
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.rename(from, to).await?;
        self.copied(from, to, true);
        Ok(())
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy_if_not_exists(from, to).await?;
        self.copied(from, to, false);
        Ok(())
    }

    async fn rename_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.rename_if_not_exists(from, to).await?;
        self.copied(from, to, true);
        Ok(())
    }
}

impl DigestStore {
    /// `to` now holds what `from` held. An object this store did not write
    /// has no digest, and neither has its copy: verification then finds
    /// the copy and fails, rather than trusting bytes nobody hashed.
    fn copied(&self, from: &Path, to: &Path, moved: bool) {
        let mut written = lock(&self.written);
        let d = if moved {
            written.remove(from.as_ref())
        } else {
            written.get(from.as_ref()).copied()
        };
        match d {
            Some(d) => written.insert(to.to_string(), d),
            None => written.remove(to.as_ref()),
        };
    }
}

/// A multipart upload hashed part by part, in the order the parts are
/// handed in (their order in the object).
struct DigestUpload {
    inner: Box<dyn MultipartUpload>,
    hasher: Xxh3,
    size: u64,
    location: String,
    written: Arc<Mutex<BTreeMap<String, Digest>>>,
}

impl fmt::Debug for DigestUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestUpload")
            .field("location", &self.location)
            .field("size", &self.size)
            .finish()
    }
}

#[async_trait]
impl MultipartUpload for DigestUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        for chunk in data.iter() {
            self.hasher.update(chunk);
            self.size += chunk.len() as u64;
        }
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let done = self.inner.complete().await?;
        lock(&self.written).insert(self.location.clone(), (self.size, self.hasher.digest128()));
        Ok(done)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}
