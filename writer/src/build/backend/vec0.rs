//! sqlite-vec's `vec0` module registered on one connection of rusqlite's
//! bundled SQLite.
//!
//! # Why this module has `unsafe`
//!
//! The `sqlite-vec` crate compiles the extension's C source into the
//! program (built with `SQLITE_CORE`, so it calls the `sqlite3_*`
//! functions of the bundled SQLite directly) and exports its entry point,
//! `sqlite3_vec_init`, with no Rust signature and no safe wrapper. Calling
//! it on a connection's handle is the only way to give that connection
//! `vec0`; rusqlite has no safe API for a statically linked extension.
//! The workspace denies `unsafe_code`; this module, like `sqlite_insert`
//! and sf-reader's VFS, is an exception kept to one call, with its
//! `SAFETY:` note. Only the connections that build vector tables get the
//! module (no process-wide auto-extension).

#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int};
use std::ptr;

use rusqlite::{Connection, ffi};

/// The signature every SQLite extension entry point has.
type ExtensionInit =
    unsafe extern "C" fn(*mut ffi::sqlite3, *mut *mut c_char, *const ffi::sqlite3_api_routines) -> c_int;

/// The sqlite-vec version this program writes with (`vec_index_info`
/// records it in every vector shard).
pub const SQLITE_VEC_VERSION: &str = "v0.1.9";

/// Registers `vec0` and the `vec_*` functions on `conn`.
pub fn load(conn: &Connection) -> Result<(), String> {
    let mut message: *mut c_char = ptr::null_mut();
    // SAFETY: `sqlite3_vec_init` is the extension entry point the crate
    // links in; its C definition is `int sqlite3_vec_init(sqlite3 *db,
    // char **pzErrMsg, const sqlite3_api_routines *pApi)`, which is
    // `ExtensionInit`, so the transmute only restores the signature the
    // crate's declaration leaves out (the crate's own test does the same
    // cast). Built with SQLITE_CORE it ignores `pApi` (null is fine) and
    // calls the bundled SQLite the handle belongs to. `conn.handle()` is a
    // live connection, used on this thread only, for the duration of the
    // call. `message` is a valid out-pointer; when set, it is a string
    // from `sqlite3_mprintf`, read once and released with `sqlite3_free`.
    let (rc, text) = unsafe {
        let init: ExtensionInit = std::mem::transmute(sqlite_vec::sqlite3_vec_init as *const ());
        let rc = init(conn.handle(), &mut message, ptr::null());
        let text = if message.is_null() {
            None
        } else {
            let t = CStr::from_ptr(message).to_string_lossy().into_owned();
            ffi::sqlite3_free(message.cast());
            Some(t)
        };
        (rc, text)
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(format!(
            "registering sqlite-vec failed (code {rc}): {}",
            text.unwrap_or_default()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linked_sqlite_vec_is_the_pinned_version() {
        let conn = Connection::open_in_memory().unwrap();
        load(&conn).unwrap();
        let v: String = conn.query_row("select vec_version()", [], |r| r.get(0)).unwrap();
        assert_eq!(v, SQLITE_VEC_VERSION);
    }

    #[test]
    fn a_connection_without_it_has_no_vec0() {
        let conn = Connection::open_in_memory().unwrap();
        let err = conn
            .execute_batch("CREATE VIRTUAL TABLE t USING vec0(embedding float[2])")
            .unwrap_err();
        assert!(err.to_string().contains("no such module: vec0"), "{err}");
    }
}
