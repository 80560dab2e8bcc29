//! The vector tables of a unified shard, in the reference's layout
//! (docs/FORMAT.md, "Vector snapshots"):
//!
//! ```sql
//! CREATE VIRTUAL TABLE vec_index USING vec0(embedding float[{dim}] distance_metric={cosine|l2})
//! CREATE TABLE vec_payloads (rowid INTEGER PRIMARY KEY, payload TEXT NOT NULL)
//! CREATE TABLE vec_id_map (internal_id INTEGER PRIMARY KEY, original_id TEXT NOT NULL)
//! ```
//!
//! While the shard's `kv` rows are written as pages, its vectors wait in a
//! spool file beside the shard file ([`VectorSpool`], bounded memory
//! whatever the shard's size). When the page writer has finished the file,
//! [`VectorSpool::write_tables`] opens it with SQLite, registers
//! sqlite-vec's `vec0` ([`super::vec0`]) and adds the three tables in one
//! transaction: rowids 0..n-1 in the rows' key order, shared by the three
//! tables, a `vec_payloads` row only for a vector with a payload. `vec0`
//! creates its shadow tables (`vec_index_info`, `_chunks`, `_rowids`,
//! `_vector_chunks00`) itself, so they are byte for byte what the
//! reference's sqlite-vec writes.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};
use sf_manifest::{DbId, ErrorKind};

use super::contract::VectorShard;
use crate::error::{Error, Result};
use crate::route::envelope::{NO_PAYLOAD, VectorRef};

/// File name of the spool, in the shard's work folder.
const SPOOL_FILE: &str = "vectors.spool";

/// A shard's vectors in arrival order, on local disk until the shard file
/// is written.
#[derive(Debug)]
pub struct VectorSpool {
    path: PathBuf,
    out: BufWriter<File>,
    layout: VectorShard,
    count: u64,
}

impl VectorSpool {
    /// A new spool in `dir`.
    pub fn create(dir: &Path, layout: VectorShard) -> Result<VectorSpool> {
        let path = dir.join(SPOOL_FILE);
        let file = File::create(&path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok(VectorSpool {
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            layout,
            count: 0,
        })
    }

    /// Vectors spooled.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no vector was spooled.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds one vector.
    pub fn push(&mut self, v: VectorRef<'_>) -> Result<()> {
        let err = |e| Error::io(format!("writing {}", self.path.display()), e);
        let out = &mut self.out;
        let mut write = || -> std::io::Result<()> {
            out.write_all(&(v.id.len() as u32).to_le_bytes())?;
            out.write_all(v.id.as_bytes())?;
            match v.payload {
                Some(p) => {
                    out.write_all(&(p.len() as u32).to_le_bytes())?;
                    out.write_all(p.as_bytes())?;
                }
                None => out.write_all(&NO_PAYLOAD.to_le_bytes())?,
            }
            out.write_all(v.vector)
        };
        write().map_err(err)?;
        self.count += 1;
        Ok(())
    }

    /// Adds the vector tables to the finished shard file at `shard` and
    /// removes the spool; returns the vectors written.
    pub fn write_tables(self, shard: &Path, db_id: DbId) -> Result<u64> {
        let VectorSpool {
            path,
            out,
            layout,
            count,
        } = self;
        let file = out
            .into_inner()
            .map_err(|e| Error::io(format!("writing {}", path.display()), e.into_error()))?;
        drop(file);
        let failed = |what: &str, e: rusqlite::Error| {
            Error::shard_caused(
                db_id,
                None,
                format!("SQLite failed {what}: {e}"),
                ErrorKind::Internal,
                e,
            )
        };
        let conn = Connection::open(shard).map_err(|e| failed("opening the shard file for its vectors", e))?;
        super::vec0::load(&conn).map_err(|e| Error::shard(db_id, None, e, ErrorKind::Internal))?;
        // As for the kv rows: the file is a build artifact until uploaded.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA temp_store = MEMORY;
             BEGIN;
             CREATE VIRTUAL TABLE vec_index USING vec0(embedding float[{dim}] distance_metric={metric});
             CREATE TABLE vec_payloads (rowid INTEGER PRIMARY KEY, payload TEXT NOT NULL);
             CREATE TABLE vec_id_map (internal_id INTEGER PRIMARY KEY, original_id TEXT NOT NULL);",
            dim = layout.dim,
            metric = layout.metric.as_str(),
        ))
        .map_err(|e| failed("creating the vector tables", e))?;
        {
            let mut index = conn
                .prepare("INSERT INTO vec_index(rowid, embedding) VALUES (?1, ?2)")
                .map_err(|e| failed("preparing the vector insert", e))?;
            let mut payloads = conn
                .prepare("INSERT INTO vec_payloads(rowid, payload) VALUES (?1, ?2)")
                .map_err(|e| failed("preparing the payload insert", e))?;
            let mut ids = conn
                .prepare("INSERT INTO vec_id_map(internal_id, original_id) VALUES (?1, ?2)")
                .map_err(|e| failed("preparing the id insert", e))?;
            let read_err = |e| Error::io(format!("reading {}", path.display()), e);
            let mut input = BufReader::with_capacity(1 << 20, File::open(&path).map_err(read_err)?);
            let mut vector = vec![0u8; layout.dim as usize * 4];
            let mut text = Vec::new();
            let mut payload = Vec::new();
            for rowid in 0..count {
                let rowid = i64::try_from(rowid).map_err(|_| Error::Internal("too many vectors".into()))?;
                read_text(&mut input, &mut text).map_err(read_err)?;
                let has_payload = read_payload(&mut input, &mut payload).map_err(read_err)?;
                input.read_exact(&mut vector).map_err(read_err)?;
                index
                    .execute(params![rowid, vector])
                    .map_err(|e| failed("inserting a vector", e))?;
                let id = std::str::from_utf8(&text).map_err(|e| Error::Internal(format!("spooled id: {e}")))?;
                ids.execute(params![rowid, id])
                    .map_err(|e| failed("inserting a vector id", e))?;
                if has_payload {
                    let p =
                        std::str::from_utf8(&payload).map_err(|e| Error::Internal(format!("spooled payload: {e}")))?;
                    payloads
                        .execute(params![rowid, p])
                        .map_err(|e| failed("inserting a payload", e))?;
                }
            }
        }
        conn.execute_batch("COMMIT")
            .map_err(|e| failed("committing the vector tables", e))?;
        conn.close().map_err(|(_, e)| failed("closing the shard file", e))?;
        std::fs::remove_file(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
        Ok(count)
    }
}

fn read_len(input: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_text(input: &mut impl Read, into: &mut Vec<u8>) -> std::io::Result<()> {
    let n = read_len(input)? as usize;
    into.resize(n, 0);
    input.read_exact(into)
}

fn read_payload(input: &mut impl Read, into: &mut Vec<u8>) -> std::io::Result<bool> {
    let n = read_len(input)?;
    if n == NO_PAYLOAD {
        return Ok(false);
    }
    into.resize(n as usize, 0);
    input.read_exact(into)?;
    Ok(true)
}
