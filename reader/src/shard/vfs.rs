//! The SQLite VFS of range mode: SQLite reads a shard's pages through it,
//! and it serves them from [`RemoteFile`]s (ranged GETs and a block cache).
//!
//! # Why this module has `unsafe`
//!
//! SQLite's only extension point for storage is the C VFS interface, and
//! rusqlite offers no safe wrapper for writing one: a VFS is a table of
//! `extern "C"` callbacks registered through `rusqlite::ffi`. The workspace
//! denies `unsafe_code`; this module is one of the few audited exceptions
//! (docs/development.md lists them), each kept small: this one
//! translates callbacks into calls on [`RemoteFile`], which is safe code.
//! Every `unsafe` block carries a `SAFETY:` note.
//!
//! # How files are named
//!
//! A range-mode shard registers its [`RemoteFile`] under a unique name
//! ([`register`]) and opens `file:<name>?immutable=1` with this VFS.
//! `xOpen` looks the name up and keeps a strong reference in SQLite's file
//! handle until `xClose`, so a connection stays valid even after its shard
//! is dropped. Only main database files open: the file is read-only and
//! immutable, so SQLite needs no journal, WAL or locks.
//!
//! No callback unwinds into C: each body runs under `catch_unwind`, and a
//! panic becomes an I/O error code.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use rusqlite::ffi;

use super::remote_file::RemoteFile;

/// Name the VFS is registered under.
pub(crate) const VFS_NAME: &str = "shardforge-range";

static FILES: LazyLock<Mutex<HashMap<String, Arc<RemoteFile>>>> = LazyLock::new(Default::default);
static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();

fn files() -> std::sync::MutexGuard<'static, HashMap<String, Arc<RemoteFile>>> {
    sf_manifest::sync::lock(&FILES)
}

/// A file's registration; dropping it unregisters the name (connections
/// already open keep their own reference).
#[derive(Debug)]
pub(crate) struct Registration {
    name: String,
}

impl Registration {
    /// The URI to open with [`VFS_NAME`].
    pub(crate) fn uri(&self) -> String {
        format!("file:{}?immutable=1", self.name)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        files().remove(&self.name);
    }
}

/// Registers `file` for connections of this VFS to open.
pub(crate) fn register(file: Arc<RemoteFile>) -> Result<Registration, String> {
    ensure_registered()?;
    let name = format!("sf-range-{}-{}.db", file.id, sf_manifest::format::ids::unique_hex());
    files().insert(name.clone(), file);
    Ok(Registration { name })
}

/// Registers the VFS with SQLite, once per process.
fn ensure_registered() -> Result<(), String> {
    REGISTERED
        .get_or_init(|| {
            let name = CString::new(VFS_NAME).map_err(|e| e.to_string())?;
            let vfs = Box::new(ffi::sqlite3_vfs {
                iVersion: 2,
                szOsFile: std::mem::size_of::<FileHandle>() as c_int,
                mxPathname: 512,
                pNext: std::ptr::null_mut(),
                // The name and the struct live as long as the process: SQLite
                // keeps pointers to both once registered.
                zName: name.into_raw(),
                pAppData: std::ptr::null_mut(),
                xOpen: Some(x_open),
                xDelete: Some(x_delete),
                xAccess: Some(x_access),
                xFullPathname: Some(x_full_pathname),
                xDlOpen: Some(x_dl_open),
                xDlError: Some(x_dl_error),
                xDlSym: Some(x_dl_sym),
                xDlClose: Some(x_dl_close),
                xRandomness: Some(x_randomness),
                xSleep: Some(x_sleep),
                xCurrentTime: Some(x_current_time),
                xGetLastError: Some(x_get_last_error),
                xCurrentTimeInt64: Some(x_current_time_int64),
                xSetSystemCall: None,
                xGetSystemCall: None,
                xNextSystemCall: None,
            });
            let vfs = Box::into_raw(vfs);
            // SAFETY: `vfs` points at a fully initialised sqlite3_vfs that is
            // never freed (leaked above), as SQLite requires of registered
            // VFSes; registration is serialised by the OnceLock.
            let rc = unsafe { ffi::sqlite3_vfs_register(vfs, 0) };
            if rc == ffi::SQLITE_OK {
                Ok(())
            } else {
                Err(format!("registering the SQLite VFS {VFS_NAME} failed with code {rc}"))
            }
        })
        .clone()
}

/// SQLite's per-file struct: the base first, then our reference.
#[repr(C)]
struct FileHandle {
    base: ffi::sqlite3_file,
    remote: *const RemoteFile,
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // Version 1: no shared memory, no memory-mapped reads.
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// The remote file behind an open handle.
///
/// # Safety
///
/// `file` must be a handle this VFS's `x_open` initialised (SQLite only
/// calls our io methods on those) and not yet closed.
unsafe fn remote_of<'a>(file: *mut ffi::sqlite3_file) -> Option<&'a RemoteFile> {
    // SAFETY: per the contract, `file` points at a FileHandle we wrote; its
    // `remote` is null or an Arc pointer we own until x_close.
    unsafe {
        let handle = file.cast::<FileHandle>();
        let p = (*handle).remote;
        if p.is_null() { None } else { Some(&*p) }
    }
}

fn guarded(default: c_int, f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(default)
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    z_name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let handle = file.cast::<FileHandle>();
    // SAFETY: SQLite passes szOsFile writable bytes at `file`. A null
    // pMethods tells SQLite not to call xClose if the open fails.
    unsafe {
        (*handle).base.pMethods = std::ptr::null();
        (*handle).remote = std::ptr::null();
    }
    guarded(ffi::SQLITE_CANTOPEN, || {
        if z_name.is_null() || flags & ffi::SQLITE_OPEN_MAIN_DB == 0 {
            return ffi::SQLITE_CANTOPEN;
        }
        // SAFETY: a non-null filename from SQLite is a NUL-terminated string
        // (URI parameters follow after the NUL and are not read here).
        let name = unsafe { CStr::from_ptr(z_name) }.to_string_lossy().into_owned();
        let Some(remote) = files().get(&name).cloned() else {
            return ffi::SQLITE_CANTOPEN;
        };
        // SAFETY: as above; the Arc's strong count is released in x_close.
        unsafe {
            (*handle).remote = Arc::into_raw(remote);
            (*handle).base.pMethods = &IO_METHODS;
            if !out_flags.is_null() {
                *out_flags = ffi::SQLITE_OPEN_READONLY;
            }
        }
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let handle = file.cast::<FileHandle>();
    // SAFETY: SQLite calls xClose once on a handle x_open initialised; the
    // pointer came from Arc::into_raw and is released exactly once here.
    unsafe {
        let p = (*handle).remote;
        (*handle).remote = std::ptr::null();
        if !p.is_null() {
            drop(Arc::from_raw(p));
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_read(file: *mut ffi::sqlite3_file, buf: *mut c_void, amt: c_int, offset: i64) -> c_int {
    // SAFETY: SQLite calls io methods only on handles x_open initialised.
    let Some(remote) = (unsafe { remote_of(file) }) else {
        return ffi::SQLITE_IOERR_READ;
    };
    if amt < 0 || offset < 0 || buf.is_null() {
        return ffi::SQLITE_IOERR_READ;
    }
    // SAFETY: SQLite hands a writable buffer of `amt` bytes, ours for the
    // duration of the call.
    let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), amt as usize) };
    guarded(ffi::SQLITE_IOERR_READ, || match remote.read_at(offset as u64, out) {
        Ok(n) if n == out.len() => ffi::SQLITE_OK,
        Ok(n) => {
            // SQLite requires the unread tail zeroed on a short read.
            out[n..].fill(0);
            ffi::SQLITE_IOERR_SHORT_READ
        }
        Err(e) => {
            remote.set_error(e);
            ffi::SQLITE_IOERR_READ
        }
    })
}

unsafe extern "C" fn x_write(_: *mut ffi::sqlite3_file, _: *const c_void, _: c_int, _: i64) -> c_int {
    ffi::SQLITE_READONLY
}

unsafe extern "C" fn x_truncate(_: *mut ffi::sqlite3_file, _: i64) -> c_int {
    ffi::SQLITE_READONLY
}

unsafe extern "C" fn x_sync(_: *mut ffi::sqlite3_file, _: c_int) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: SQLite calls io methods only on handles x_open initialised.
    let Some(remote) = (unsafe { remote_of(file) }) else {
        return ffi::SQLITE_IOERR_FSTAT;
    };
    if size.is_null() {
        return ffi::SQLITE_IOERR_FSTAT;
    }
    // SAFETY: `size` is a valid out pointer from SQLite.
    unsafe { *size = remote.size as i64 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_lock(_: *mut ffi::sqlite3_file, _: c_int) -> c_int {
    // An immutable file needs no locks.
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_unlock(_: *mut ffi::sqlite3_file, _: c_int) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_check_reserved_lock(_: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    if !out.is_null() {
        // SAFETY: `out` is a valid out pointer from SQLite.
        unsafe { *out = 0 };
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_control(_: *mut ffi::sqlite3_file, _: c_int, _: *mut c_void) -> c_int {
    ffi::SQLITE_NOTFOUND
}

unsafe extern "C" fn x_sector_size(_: *mut ffi::sqlite3_file) -> c_int {
    4096
}

unsafe extern "C" fn x_device_characteristics(_: *mut ffi::sqlite3_file) -> c_int {
    ffi::SQLITE_IOCAP_IMMUTABLE
}

unsafe extern "C" fn x_delete(_: *mut ffi::sqlite3_vfs, _: *const c_char, _: c_int) -> c_int {
    ffi::SQLITE_IOERR_DELETE
}

unsafe extern "C" fn x_access(_: *mut ffi::sqlite3_vfs, _: *const c_char, _: c_int, out: *mut c_int) -> c_int {
    // No journal or WAL file ever exists next to a remote shard.
    if !out.is_null() {
        // SAFETY: `out` is a valid out pointer from SQLite.
        unsafe { *out = 0 };
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_full_pathname(
    _: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    if name.is_null() || out.is_null() || n_out <= 0 {
        return ffi::SQLITE_CANTOPEN;
    }
    // SAFETY: `name` is NUL-terminated; `out` has room for `n_out` bytes.
    unsafe {
        let bytes = CStr::from_ptr(name).to_bytes_with_nul();
        if bytes.len() > n_out as usize {
            return ffi::SQLITE_CANTOPEN;
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), out, bytes.len());
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_dl_open(_: *mut ffi::sqlite3_vfs, _: *const c_char) -> *mut c_void {
    std::ptr::null_mut()
}

unsafe extern "C" fn x_dl_error(_: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) {
    const MSG: &[u8] = b"extensions are not supported by this VFS\0";
    if !out.is_null() && n > 0 {
        let len = MSG.len().min(n as usize);
        // SAFETY: `out` has room for `n` bytes; the copy ends with a NUL.
        unsafe {
            std::ptr::copy_nonoverlapping(MSG.as_ptr().cast::<c_char>(), out, len);
            *out.add(len - 1) = 0;
        }
    }
}

type DlSym = unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char);

unsafe extern "C" fn x_dl_sym(_: *mut ffi::sqlite3_vfs, _: *mut c_void, _: *const c_char) -> Option<DlSym> {
    None
}

unsafe extern "C" fn x_dl_close(_: *mut ffi::sqlite3_vfs, _: *mut c_void) {}

unsafe extern "C" fn x_randomness(_: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    if out.is_null() || n <= 0 {
        return 0;
    }
    guarded(0, || {
        let mut filled = 0usize;
        while filled < n as usize {
            let r = sf_manifest::format::ids::random_u64().to_le_bytes();
            let bytes = &r;
            let take = bytes.len().min(n as usize - filled);
            // SAFETY: `out` has room for `n` bytes; we write below `n`.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), out.add(filled), take) };
            filled += take;
        }
        n
    })
}

unsafe extern "C" fn x_sleep(_: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    std::thread::sleep(std::time::Duration::from_micros(micros.max(0) as u64));
    micros
}

fn unix_millis() -> i64 {
    i64::try_from(sf_manifest::format::ids::unix_millis()).unwrap_or(i64::MAX)
}

unsafe extern "C" fn x_current_time(_: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    if !out.is_null() {
        // SAFETY: valid out pointer from SQLite. Julian day of the Unix epoch.
        unsafe { *out = 2_440_587.5 + unix_millis() as f64 / 86_400_000.0 };
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_current_time_int64(_: *mut ffi::sqlite3_vfs, out: *mut i64) -> c_int {
    if !out.is_null() {
        // SAFETY: valid out pointer from SQLite. Julian day in milliseconds.
        unsafe { *out = 210_866_760_000_000 + unix_millis() };
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_get_last_error(_: *mut ffi::sqlite3_vfs, _: c_int, _: *mut c_char) -> c_int {
    0
}
