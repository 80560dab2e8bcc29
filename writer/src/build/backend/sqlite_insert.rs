//! Inserting rows into a shard's `kv` table without copying them first.
//!
//! # Why this module has `unsafe`
//!
//! rusqlite binds every blob with `SQLITE_TRANSIENT`: SQLite allocates a
//! copy of each key and each value, copies the bytes, inserts, and frees
//! the copies, two allocations per row on SQLite's allocator, before the
//! insert reads the bytes once. Bound with `SQLITE_STATIC` instead, SQLite
//! reads the caller's bytes in place during the step; rusqlite has no safe
//! way to ask for that, so this module prepares and steps the statement
//! through `rusqlite::ffi`. The workspace denies `unsafe_code`; this module
//! is one of the few audited exceptions (docs/development.md lists them),
//! each kept small. Every `unsafe` block carries a `SAFETY:` note.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_int, c_void};
use std::marker::PhantomData;
use std::ptr;

use rusqlite::{Connection, ffi};

/// Bytes a zero-length blob points at: SQLite treats a null pointer as SQL
/// NULL, and a dangling one must not reach C.
static EMPTY: [u8; 1] = [0];

/// A failed insert: SQLite's primary result code and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InsertError {
    /// `SQLITE_CONSTRAINT`, `SQLITE_FULL`, ...
    pub code: c_int,
    /// SQLite's message.
    pub message: String,
}

impl InsertError {
    /// Whether a constraint (the primary key) refused the row.
    pub fn is_constraint(&self) -> bool {
        self.code == ffi::SQLITE_CONSTRAINT
    }
}

/// A prepared two-parameter statement (`?1` key, `?2` value) on a
/// connection it borrows, finalized when dropped.
pub(crate) struct Insert<'c> {
    stmt: *mut ffi::sqlite3_stmt,
    db: *mut ffi::sqlite3,
    _conn: PhantomData<&'c Connection>,
}

impl<'c> Insert<'c> {
    /// Prepares `sql` on `conn`.
    pub fn prepare(conn: &'c Connection, sql: &str) -> Result<Self, InsertError> {
        let text = CString::new(sql).map_err(|e| InsertError {
            code: ffi::SQLITE_MISUSE,
            message: e.to_string(),
        })?;
        // SAFETY: the handle belongs to `conn`, which this statement borrows
        // for its whole life, so the connection stays open until finalize.
        let db = unsafe { conn.handle() };
        let mut stmt = ptr::null_mut();
        // SAFETY: `db` is open, `text` is NUL-terminated and outlives the
        // call, and `stmt` is a valid out-pointer.
        let rc = unsafe { ffi::sqlite3_prepare_v2(db, text.as_ptr(), -1, &mut stmt, ptr::null_mut()) };
        if rc != ffi::SQLITE_OK || stmt.is_null() {
            return Err(error(db, rc));
        }
        Ok(Insert {
            stmt,
            db,
            _conn: PhantomData,
        })
    }

    /// Inserts one row.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<(), InsertError> {
        // SAFETY: `stmt` is a live statement of an open connection. The
        // blobs are bound SQLITE_STATIC: SQLite reads them only during the
        // step below, while `key` and `value` are borrowed; every insert
        // binds both parameters again before stepping, so a stale binding
        // is never read. The reset leaves the statement ready to rerun.
        unsafe {
            for (index, bytes) in [(1, key), (2, value)] {
                let data = if bytes.is_empty() {
                    EMPTY.as_ptr()
                } else {
                    bytes.as_ptr()
                };
                let rc = ffi::sqlite3_bind_blob64(
                    self.stmt,
                    index,
                    data.cast::<c_void>(),
                    bytes.len() as u64,
                    ffi::SQLITE_STATIC(),
                );
                if rc != ffi::SQLITE_OK {
                    return Err(error(self.db, rc));
                }
            }
            let rc = ffi::sqlite3_step(self.stmt);
            let outcome = if rc == ffi::SQLITE_DONE {
                Ok(())
            } else {
                Err(error(self.db, rc))
            };
            ffi::sqlite3_reset(self.stmt);
            outcome
        }
    }
}

impl Drop for Insert<'_> {
    fn drop(&mut self) {
        // SAFETY: `stmt` came from sqlite3_prepare_v2 and is finalized once,
        // here; finalizing does not read the bound blobs.
        unsafe {
            ffi::sqlite3_finalize(self.stmt);
        }
    }
}

fn error(db: *mut ffi::sqlite3, rc: c_int) -> InsertError {
    // SAFETY: `db` is an open connection; sqlite3_errmsg returns a
    // NUL-terminated string owned by SQLite, copied out at once.
    let message = unsafe {
        let text = ffi::sqlite3_errmsg(db);
        if text.is_null() {
            format!("SQLite error {rc}")
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        }
    };
    InsertError {
        code: rc & 0xff,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Connection {
        let c = Connection::open_in_memory().expect("open");
        c.execute_batch(sf_manifest::format::kv::DDL).expect("ddl");
        c
    }

    #[test]
    fn inserts_rows_and_empty_blobs_as_blobs() {
        let c = table();
        {
            let mut ins = Insert::prepare(&c, "INSERT INTO kv (k, v) VALUES (?1, ?2)").expect("prepare");
            for i in 0u32..1000 {
                // Fresh buffers each row: SQLite must have read them by now.
                let key = i.to_be_bytes().to_vec();
                let value = format!("value-{i}").into_bytes();
                ins.insert(&key, &value).expect("insert");
            }
            ins.insert(b"", b"").expect("empty key and value");
        }
        let n: i64 = c.query_row("SELECT count(*) FROM kv", [], |r| r.get(0)).expect("count");
        assert_eq!(n, 1001);
        let v: Vec<u8> = c
            .query_row("SELECT v FROM kv WHERE k = ?1", [7u32.to_be_bytes().to_vec()], |r| {
                r.get(0)
            })
            .expect("row 7");
        assert_eq!(v, b"value-7");
        let (kind, len): (String, i64) = c
            .query_row("SELECT typeof(v), length(v) FROM kv WHERE k = x''", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("empty row");
        assert_eq!((kind.as_str(), len), ("blob", 0), "an empty value is a blob, not NULL");
    }

    #[test]
    fn a_duplicate_key_is_a_constraint_error() {
        let c = table();
        let mut ins = Insert::prepare(&c, "INSERT INTO kv (k, v) VALUES (?1, ?2)").expect("prepare");
        ins.insert(b"k", b"1").expect("first");
        let e = ins.insert(b"k", b"2").expect_err("duplicate");
        assert!(e.is_constraint(), "{e:?}");
        assert!(e.message.contains("UNIQUE"), "{e:?}");
        ins.insert(b"l", b"3").expect("the statement is usable after a failure");
        let e = Insert::prepare(&c, "INSERT INTO nope VALUES (?1, ?2)")
            .err()
            .expect("bad SQL");
        assert!(e.message.contains("nope"), "{e:?}");
    }
}
