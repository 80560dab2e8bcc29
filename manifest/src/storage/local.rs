//! The local file system as an object store, with compare-and-swap.
//!
//! object_store's `LocalFileSystem` creates objects if absent (a hard link
//! fails on an existing name) but does not implement `PutMode::Update`. The
//! publish protocol needs that for `_CURRENT`, so [`LocalStore`] adds it: an
//! update takes an exclusive `flock` on the object's folder, compares the
//! object's ETag with the expected one, and writes through a rename (atomic
//! on POSIX), all while holding the lock. Every ShardForge process on the
//! host takes the same lock, so two publishers cannot both win. (Network
//! file systems without working `flock` do not give this guarantee; use an
//! object store there.)

use std::fmt;
use std::fs::File;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result,
};

/// Local file system store with conditional updates; see the module docs.
#[derive(Debug)]
pub struct LocalStore {
    inner: LocalFileSystem,
}

impl LocalStore {
    /// A store rooted at `/`.
    pub fn new() -> Self {
        LocalStore {
            inner: LocalFileSystem::new().with_automatic_cleanup(true),
        }
    }

    /// The file-system path of an object.
    pub fn path_to_filesystem(&self, location: &Path) -> Result<std::path::PathBuf> {
        self.inner.path_to_filesystem(location)
    }

    async fn update(&self, location: &Path, payload: PutPayload, mut opts: PutOptions) -> Result<PutResult> {
        let PutMode::Update(expected) = &opts.mode else {
            unreachable!("update() is only called for PutMode::Update")
        };
        let expected = expected.e_tag.clone().ok_or_else(|| object_store::Error::Generic {
            store: "LocalStore",
            source: "a conditional update needs the expected ETag".into(),
        })?;
        let file = self.inner.path_to_filesystem(location)?;
        let dir = file
            .parent()
            .map(std::path::Path::to_path_buf)
            .ok_or_else(|| object_store::Error::Generic {
                store: "LocalStore",
                source: format!("{} has no parent folder", file.display()).into(),
            })?;
        let lock = tokio::task::spawn_blocking(move || -> std::io::Result<File> {
            let f = File::open(&dir)?;
            f.lock()?;
            Ok(f)
        })
        .await
        .map_err(|e| object_store::Error::Generic {
            store: "LocalStore",
            source: e.into(),
        })?
        .map_err(|e| object_store::Error::Generic {
            store: "LocalStore",
            source: format!("locking the folder of {location}: {e}").into(),
        })?;

        let precondition = |found: &str| object_store::Error::Precondition {
            path: location.to_string(),
            source: format!("expected ETag {expected}, found {found}").into(),
        };
        let result = match self.inner.head(location).await {
            Ok(meta) if meta.e_tag.as_deref() == Some(expected.as_str()) => {
                opts.mode = PutMode::Overwrite;
                self.inner.put_opts(location, payload, opts).await
            }
            Ok(meta) => Err(precondition(meta.e_tag.as_deref().unwrap_or("none"))),
            Err(object_store::Error::NotFound { .. }) => Err(precondition("no object")),
            Err(e) => Err(e),
        };
        drop(lock);
        result
    }
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalStore")
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        if matches!(opts.mode, PutMode::Update(_)) {
            self.update(location, payload, opts).await
        } else {
            self.inner.put_opts(location, payload, opts).await
        }
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
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
        self.inner.delete(location).await
    }

    fn delete_stream<'a>(&'a self, locations: BoxStream<'a, Result<Path>>) -> BoxStream<'a, Result<Path>> {
        self.inner.delete_stream(locations)
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
        self.inner.copy(from, to).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.rename(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }

    async fn rename_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.rename_if_not_exists(from, to).await
    }
}
