//! A copy-on-write view of an object store: reads fall through, writes
//! and deletes stay in memory.
//!
//! `slatedb::DbReader` keeps the data it reads alive by writing a checkpoint
//! into the database's manifest (and deleting it on close); reading from an
//! explicit checkpoint instead would skip the WAL. Neither is acceptable
//! for a published snapshot, which must not change under its readers, and
//! which readers may not even be allowed to write. So whoever reads a
//! SlateDB shard (the online reader, the writer checking what it
//! uploaded) sees it through this store: reads go to the real store, every
//! write lands in a private in-memory layer that shadows it, and deletes
//! only hide objects. The shard's prefix is never written; the layer dies
//! with the view.
//!
//! Conditional writes behave as on a real store over the combined view:
//! create-if-absent fails when the object exists below, and an update
//! checks the ETag of the version it would replace, so SlateDB's manifest
//! protocol works unchanged on top.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result,
};

/// See the module docs.
#[derive(Debug)]
pub struct CopyOnWriteStore {
    base: Arc<dyn ObjectStore>,
    layer: InMemory,
    hidden: Mutex<HashSet<Path>>,
}

impl CopyOnWriteStore {
    /// A view of `base` that never writes to it.
    pub fn new(base: Arc<dyn ObjectStore>) -> Self {
        CopyOnWriteStore {
            base,
            layer: InMemory::new(),
            hidden: Mutex::new(HashSet::new()),
        }
    }

    fn hidden(&self) -> std::sync::MutexGuard<'_, HashSet<Path>> {
        crate::sync::lock(&self.hidden)
    }

    fn is_hidden(&self, p: &Path) -> bool {
        self.hidden().contains(p)
    }

    async fn exists(&self, p: &Path) -> Result<bool> {
        if self.layer.head(p).await.is_ok() {
            return Ok(true);
        }
        if self.is_hidden(p) {
            return Ok(false);
        }
        match self.base.head(p).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl fmt::Display for CopyOnWriteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CopyOnWrite({})", self.base)
    }
}

fn not_found(p: &Path) -> object_store::Error {
    object_store::Error::NotFound {
        path: p.to_string(),
        source: "deleted in the copy-on-write view".into(),
    }
}

#[async_trait]
impl ObjectStore for CopyOnWriteStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let mode = opts.mode.clone();
        let result = match mode {
            PutMode::Create => {
                if self.exists(location).await? {
                    return Err(object_store::Error::AlreadyExists {
                        path: location.to_string(),
                        source: "object exists".into(),
                    });
                }
                let opts = PutOptions {
                    mode: PutMode::Overwrite,
                    ..opts
                };
                self.layer.put_opts(location, payload, opts).await
            }
            PutMode::Overwrite => self.layer.put_opts(location, payload, opts).await,
            PutMode::Update(v) => {
                if self.layer.head(location).await.is_ok() {
                    self.layer.put_opts(location, payload, opts).await
                } else {
                    let meta = if self.is_hidden(location) {
                        Err(not_found(location))
                    } else {
                        self.base.head(location).await
                    };
                    match meta {
                        Ok(m) if m.e_tag.is_some() && m.e_tag == v.e_tag => {
                            let opts = PutOptions {
                                mode: PutMode::Overwrite,
                                ..opts
                            };
                            self.layer.put_opts(location, payload, opts).await
                        }
                        _ => Err(object_store::Error::Precondition {
                            path: location.to_string(),
                            source: "version changed".into(),
                        }),
                    }
                }
            }
        };
        if result.is_ok() {
            self.hidden().remove(location);
        }
        result
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.hidden().remove(location);
        self.layer.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        match self.layer.get_opts(location, options.clone()).await {
            Err(object_store::Error::NotFound { .. }) => {}
            other => return other,
        }
        if self.is_hidden(location) {
            return Err(not_found(location));
        }
        self.base.get_opts(location, options).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        match self.layer.delete(location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        self.hidden().insert(location.clone());
        Ok(())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let base = self.base.list(prefix);
        let layer = self.layer.list(prefix);
        let hidden = self.hidden().clone();
        futures::stream::once(async move {
            let layer_items: Vec<Result<ObjectMeta>> = layer.collect().await;
            let shadowed: HashSet<Path> = layer_items
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .map(|m| m.location.clone())
                .collect();
            let base = base.try_filter(move |m| {
                futures::future::ready(!shadowed.contains(&m.location) && !hidden.contains(&m.location))
            });
            futures::stream::iter(layer_items).chain(base)
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let base = self.base.list_with_delimiter(prefix).await?;
        let layer = self.layer.list_with_delimiter(prefix).await?;
        let hidden = self.hidden().clone();
        let shadowed: HashSet<Path> = layer.objects.iter().map(|m| m.location.clone()).collect();
        let mut objects = layer.objects;
        objects.extend(
            base.objects
                .into_iter()
                .filter(|m| !shadowed.contains(&m.location) && !hidden.contains(&m.location)),
        );
        let mut common_prefixes = base.common_prefixes;
        for p in layer.common_prefixes {
            if !common_prefixes.contains(&p) {
                common_prefixes.push(p);
            }
        }
        Ok(ListResult {
            common_prefixes,
            objects,
        })
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        let bytes = self.get(from).await?.bytes().await?;
        self.put(to, PutPayload::from(bytes)).await.map(|_| ())
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        let bytes = self.get(from).await?.bytes().await?;
        self.put_opts(to, PutPayload::from(bytes), PutOptions::from(PutMode::Create))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The base store of these tests: refuses every write.
    #[derive(Debug)]
    struct NoWrites(InMemory);

    impl fmt::Display for NoWrites {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("NoWrites")
        }
    }

    fn refused() -> object_store::Error {
        object_store::Error::NotSupported {
            source: "a write reached the base store".into(),
        }
    }

    #[async_trait]
    impl ObjectStore for NoWrites {
        async fn put_opts(&self, _: &Path, _: PutPayload, _: PutOptions) -> Result<PutResult> {
            Err(refused())
        }
        async fn put_multipart_opts(&self, _: &Path, _: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
            Err(refused())
        }
        async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
            self.0.get_opts(location, options).await
        }
        async fn delete(&self, _: &Path) -> Result<()> {
            Err(refused())
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy(&self, _: &Path, _: &Path) -> Result<()> {
            Err(refused())
        }
        async fn copy_if_not_exists(&self, _: &Path, _: &Path) -> Result<()> {
            Err(refused())
        }
    }

    #[tokio::test]
    async fn writes_shadow_the_base_and_never_reach_it() {
        let inner = InMemory::new();
        inner
            .put(&Path::from("db/a"), PutPayload::from_static(b"base-a"))
            .await
            .expect("seed");
        inner
            .put(&Path::from("db/b"), PutPayload::from_static(b"base-b"))
            .await
            .expect("seed");
        let o = CopyOnWriteStore::new(Arc::new(NoWrites(inner)));
        let a = Path::from("db/a");
        let c = Path::from("db/c");
        let create = PutOptions::from(PutMode::Create);
        assert!(matches!(
            o.put_opts(&a, PutPayload::from_static(b"x"), create.clone()).await,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        o.put_opts(&c, PutPayload::from_static(b"layer-c"), create.clone())
            .await
            .expect("create in the layer");
        assert!(o.put_opts(&c, PutPayload::from_static(b"x"), create).await.is_err());
        o.put(&a, PutPayload::from_static(b"layer-a")).await.expect("overwrite");
        assert_eq!(
            o.get(&a).await.expect("get").bytes().await.expect("bytes").as_ref(),
            b"layer-a"
        );
        o.delete(&Path::from("db/b")).await.expect("delete hides");
        assert!(o.get(&Path::from("db/b")).await.is_err());
        let mut listed: Vec<String> = o
            .list(Some(&Path::from("db")))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .expect("list");
        listed.sort();
        assert_eq!(listed, vec!["db/a", "db/c"]);
        let by_delim = o.list_with_delimiter(Some(&Path::from("db"))).await.expect("delimited");
        assert_eq!(by_delim.objects.len(), 2);
    }

    /// A real SlateDB reader over a database in a store that refuses
    /// writes: it opens, reads, polls and closes through the overlay.
    #[tokio::test]
    async fn slatedb_reads_through_the_overlay_without_writing() {
        let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let db = slatedb::Db::open("shard", Arc::clone(&mem)).await.expect("open db");
        db.put(b"k1", b"v1").await.expect("put");
        db.put(b"k2", b"v2").await.expect("put");
        db.flush().await.expect("flush");
        db.close().await.expect("close");
        let copy = InMemory::new();
        let all: Vec<ObjectMeta> = mem.list(None).try_collect().await.expect("list");
        for m in all {
            let bytes = mem.get(&m.location).await.expect("get").bytes().await.expect("bytes");
            copy.put(&m.location, PutPayload::from(bytes)).await.expect("copy");
        }
        let base: Arc<dyn ObjectStore> = Arc::new(NoWrites(copy));
        let overlay = Arc::new(CopyOnWriteStore::new(base));
        let reader = slatedb::DbReader::builder("shard", overlay)
            .build()
            .await
            .expect("reader opens without writing");
        assert_eq!(reader.get(b"k1").await.expect("get").as_deref(), Some(&b"v1"[..]));
        assert_eq!(reader.get(b"nope").await.expect("get"), None);
        reader.close().await.expect("close without writing");
    }
}
