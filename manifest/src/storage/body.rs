//! Reading the body of a `get` answer in large pieces.
//!
//! `object_store` answers a `get` on the local file system with the open
//! file, and its own stream over it reads 8 KiB per task on the blocking
//! pool: a 600 MiB shard file costs some 77,000 hops between threads to
//! hash or copy. [`body_chunks`] reads such a file in pieces of
//! [`FILE_CHUNK`] bytes instead (one blocking task each), and passes any
//! other body (a network stream) through as it arrives.

use std::io::{Read, Seek, SeekFrom};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::{GetResult, GetResultPayload};

/// Bytes read from a local file per blocking task.
pub const FILE_CHUNK: usize = 4 << 20;

/// The body of `res` as a stream of chunks, in order: a local file in
/// pieces of [`FILE_CHUNK`] bytes, anything else as it arrives.
pub fn body_chunks(res: GetResult) -> BoxStream<'static, object_store::Result<Bytes>> {
    let range = res.range.clone();
    match res.payload {
        GetResultPayload::File(file, path) => {
            let state = Some((file, range.start, true));
            futures::stream::unfold(state, move |state| {
                let path = path.clone();
                let end = range.end;
                async move {
                    let (file, at, first) = state?;
                    if at >= end {
                        return None;
                    }
                    let read = tokio::task::spawn_blocking(move || read_piece(file, at, end, first, &path)).await;
                    match read {
                        Ok(Ok((file, piece))) => {
                            let next = at + piece.len() as u64;
                            Some((Ok(piece), Some((file, next, false))))
                        }
                        Ok(Err(e)) => Some((Err(e), None)),
                        Err(e) => Some((
                            Err(object_store::Error::Generic {
                                store: "LocalFileSystem",
                                source: Box::new(e),
                            }),
                            None,
                        )),
                    }
                }
            })
            .boxed()
        }
        GetResultPayload::Stream(s) => s,
    }
}

/// Reads up to [`FILE_CHUNK`] bytes at `at` (seeking there on the first
/// piece); an early end of the file is an error, as in `object_store`.
fn read_piece(
    mut file: std::fs::File,
    at: u64,
    end: u64,
    first: bool,
    path: &std::path::Path,
) -> object_store::Result<(std::fs::File, Bytes)> {
    let io = |source: std::io::Error| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: format!("reading {}: {source}", path.display()).into(),
    };
    if first {
        file.seek(SeekFrom::Start(at)).map_err(io)?;
    }
    let want = usize::try_from(end - at).unwrap_or(usize::MAX).min(FILE_CHUNK);
    let mut buf = vec![0u8; want];
    let mut filled = 0;
    while filled < want {
        match file.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the file ended {} bytes before the range", want - filled),
                )));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok((file, Bytes::from(buf)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::local::LocalFileSystem;
    use object_store::path::Path;
    use object_store::{GetOptions, GetRange, ObjectStore};

    use super::*;

    async fn collect(res: GetResult) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = body_chunks(res);
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.expect("chunk"));
        }
        out
    }

    #[tokio::test]
    async fn a_local_file_reads_whole_and_in_ranges_across_pieces() {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("store"));
        // Two and a half pieces, every byte distinct by position.
        let data: Vec<u8> = (0..FILE_CHUNK * 5 / 2).map(|i| (i % 251) as u8).collect();
        let path = Path::from("f.bin");
        store.put(&path, data.clone().into()).await.expect("put");

        let res = store.get(&path).await.expect("get");
        assert!(matches!(res.payload, GetResultPayload::File(..)));
        assert!(collect(res).await == data);

        let (a, b) = (FILE_CHUNK as u64 - 3, FILE_CHUNK as u64 * 2 + 5);
        let res = store
            .get_opts(
                &path,
                GetOptions {
                    range: Some(GetRange::Bounded(a..b)),
                    ..GetOptions::default()
                },
            )
            .await
            .expect("ranged get");
        assert!(collect(res).await == data[a as usize..b as usize]);

        let empty = Path::from("empty.bin");
        store.put(&empty, Bytes::new().into()).await.expect("put");
        assert!(collect(store.get(&empty).await.expect("get")).await.is_empty());
    }

    #[tokio::test]
    async fn a_file_cut_short_after_the_answer_is_an_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("store"));
        let path = Path::from("f.bin");
        store.put(&path, vec![7u8; 1000].into()).await.expect("put");
        let res = store.get(&path).await.expect("get");
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("f.bin"))
            .and_then(|f| f.set_len(10))
            .expect("truncate");
        let mut s = body_chunks(res);
        let e = s.next().await.expect("an item").expect_err("the file ended early");
        assert!(e.to_string().contains("ended 990 bytes before the range"), "{e}");
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn a_stream_body_passes_through() {
        let store = object_store::memory::InMemory::new();
        let path = Path::from("f.bin");
        store.put(&path, vec![1u8, 2, 3].into()).await.expect("put");
        let res = store.get(&path).await.expect("get");
        assert!(matches!(res.payload, GetResultPayload::Stream(..)));
        assert_eq!(collect(res).await, vec![1, 2, 3]);
    }
}
