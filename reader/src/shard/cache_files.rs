//! What the readers of this process hold in a cache folder, and eviction.
//!
//! Every snapshot a reader holds (the served one, those kept for pinned
//! reads, one a refresh is opening) holds the cache keys of all its
//! shards, and every open shard holds its own, through a [`Hold`]. All
//! readers of the process that name the same folder share one
//! [`Folder`], so a key is held while any of them needs it.
//!
//! An eviction pass runs after each download and whenever a hold is let
//! go (a refresh dropping a version, a reader closing or dropped). It
//! lists the folder's `<key>.db` files (with their `<key>.sum`), and
//! removes those no hold names, least recently used first, until the
//! folder is within `cache_max_bytes`. A held file is never removed: when
//! every file left is held, the folder stays above the bound, which is
//! logged and counted, and no lookup fails for it. Downloads in progress
//! (`.tmp-` files) are neither counted nor removed.
//!
//! Last use is the later of the file's modification time (when it was
//! downloaded; a cached file is never written again) and the last time a
//! hold of this process named it or a reader of it reused it.
//!
//! On Unix a file removed while another process has it open stays
//! readable through what that process opened; a process sharing the folder
//! that opens the file anew after its removal downloads it again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::SystemTime;

use crate::stats::{Counters, bump};

/// The extension of a cached shard file.
pub(crate) const DB_EXT: &str = "db";
/// The extension of its digest file.
pub(crate) const SUM_EXT: &str = "sum";

/// The holds of this process on one cache folder; see the module docs.
#[derive(Debug)]
pub(crate) struct Folder {
    dir: PathBuf,
    state: Mutex<FolderState>,
    /// A pass started by a hold let go is queued: holds let go meanwhile
    /// (a version's shards, one after the other) need no pass of their own.
    pending: AtomicBool,
}

#[derive(Debug, Default)]
struct FolderState {
    /// Holds per key.
    held: HashMap<String, usize>,
    /// When a hold last named a key, or a reuse or download touched it.
    used: HashMap<String, SystemTime>,
}

/// The folders of this process, by path, while a reader uses them.
fn folders() -> &'static Mutex<HashMap<PathBuf, Weak<Folder>>> {
    static FOLDERS: OnceLock<Mutex<HashMap<PathBuf, Weak<Folder>>>> = OnceLock::new();
    FOLDERS.get_or_init(Mutex::default)
}

impl Folder {
    /// The one `Folder` of this process for `dir` (the `sqlite` folder of
    /// a cache, already created).
    pub(crate) fn shared(dir: &Path) -> Arc<Folder> {
        let id = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut all = sf_manifest::sync::lock(folders());
        all.retain(|_, f| f.strong_count() > 0);
        if let Some(f) = all.get(&id).and_then(Weak::upgrade) {
            return f;
        }
        let f = Arc::new(Folder {
            dir: dir.to_path_buf(),
            state: Mutex::new(FolderState::default()),
            pending: AtomicBool::new(false),
        });
        all.insert(id, Arc::downgrade(&f));
        f
    }

    /// Holds `keys` until the returned hold is dropped; a drop runs an
    /// eviction pass with `bound` (see [`Hold`]).
    pub(crate) fn hold(self: &Arc<Self>, keys: Vec<String>, bound: Option<u64>, counters: Arc<Counters>) -> Hold {
        let now = sf_manifest::format::ids::system_now();
        let mut state = sf_manifest::sync::lock(&self.state);
        for k in &keys {
            *state.held.entry(k.clone()).or_insert(0) += 1;
            state.used.insert(k.clone(), now);
        }
        drop(state);
        Hold {
            folder: Arc::clone(self),
            keys,
            bound,
            counters,
        }
    }

    /// Records a use of `key` now (a reuse or a download).
    pub(crate) fn touch(&self, key: &str) {
        let now = sf_manifest::format::ids::system_now();
        sf_manifest::sync::lock(&self.state).used.insert(key.to_string(), now);
    }

    /// One eviction pass (see the module docs): removes unheld files,
    /// least recently used first, until the folder is within `bound`;
    /// updates the cache gauges and counters. Blocking file I/O.
    pub(crate) fn evict(&self, bound: Option<u64>, counters: &Counters) {
        // The lock is held throughout, so that no key is held between
        // the choice and the removal.
        let mut state = sf_manifest::sync::lock(&self.state);
        let entries = self.list(&state);
        let choice = choose(&entries, bound.unwrap_or(u64::MAX));
        let mut evicted = 0u64;
        let mut left = choice.bytes_after;
        for &i in &choice.evict {
            let e = &entries[i];
            let mut removed = true;
            for ext in [DB_EXT, SUM_EXT] {
                let path = self.dir.join(format!("{}.{ext}", e.key));
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => {
                        tracing::warn!(file = %path.display(), error = %err, "could not evict a cached shard file");
                        removed = false;
                    }
                }
            }
            if removed {
                evicted += 1;
            } else {
                left += e.bytes;
            }
        }
        // Last uses are kept for files there and keys held, no others.
        let FolderState { held, used } = &mut *state;
        let gone: std::collections::HashSet<usize> = choice.evict.iter().copied().collect();
        let present: std::collections::HashSet<&str> = entries
            .iter()
            .enumerate()
            .filter(|(i, _)| !gone.contains(i))
            .map(|(_, e)| e.key.as_str())
            .collect();
        used.retain(|k, _| held.contains_key(k) || present.contains(k.as_str()));
        // Set under the lock: two passes that overlap set the gauge in the
        // order they listed the folder, so the last value is the last
        // listing, never an older one.
        counters.set_cache_bytes(left);
        drop(state);
        if evicted > 0 {
            bump(&counters.cache_evictions, evicted);
            tracing::debug!(folder = %self.dir.display(), files = evicted, bytes = left, "evicted cached shard files");
        }
        if let Some(bound) = bound
            && left > bound
        {
            bump(&counters.cache_over_bound, 1);
            tracing::warn!(
                folder = %self.dir.display(),
                bytes = left,
                cache_max_bytes = bound,
                "the shard cache is above cache_max_bytes: every file left is held by a served or kept snapshot"
            );
        }
    }

    /// The folder's cached files, with their sizes, last uses and holds.
    fn list(&self, state: &FolderState) -> Vec<Entry> {
        let mut by_key: HashMap<String, Entry> = HashMap::new();
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        for item in dir.flatten() {
            let path = item.path();
            let (Some(stem), Some(ext)) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            if stem.starts_with(".tmp-") || (ext != DB_EXT && ext != SUM_EXT) {
                continue;
            }
            let Ok(meta) = item.metadata() else {
                continue;
            };
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let e = by_key.entry(stem.to_string()).or_insert_with(|| Entry {
                key: stem.to_string(),
                bytes: 0,
                last_used: SystemTime::UNIX_EPOCH,
                held: state.held.get(stem).is_some_and(|n| *n > 0),
            });
            e.bytes += meta.len();
            if ext == DB_EXT {
                e.last_used = e.last_used.max(modified);
            }
            if let Some(t) = state.used.get(stem) {
                e.last_used = e.last_used.max(*t);
            }
        }
        by_key.into_values().collect()
    }
}

/// Keys held in a folder (see [`Folder::hold`]); letting go runs an
/// eviction pass, on the blocking pool when there is a runtime.
#[derive(Debug)]
pub(crate) struct Hold {
    folder: Arc<Folder>,
    keys: Vec<String>,
    bound: Option<u64>,
    counters: Arc<Counters>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let now = sf_manifest::format::ids::system_now();
        {
            let mut state = sf_manifest::sync::lock(&self.folder.state);
            for k in &self.keys {
                if let Some(n) = state.held.get_mut(k) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        state.held.remove(k);
                    }
                }
                state.used.insert(k.clone(), now);
            }
        }
        if self.folder.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let (folder, bound, counters) = (Arc::clone(&self.folder), self.bound, Arc::clone(&self.counters));
        let pass = move || {
            // Cleared first: a hold let go during this pass queues another.
            folder.pending.store(false, Ordering::Release);
            folder.evict(bound, &counters);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(pass);
            }
            Err(_) => pass(),
        }
    }
}

/// One cached file (a `.db` and its `.sum`), as an eviction pass sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    /// Bytes of the `.db` and the `.sum`.
    pub(crate) bytes: u64,
    pub(crate) last_used: SystemTime,
    /// A snapshot or an open shard of this process holds it.
    pub(crate) held: bool,
}

/// What an eviction pass removes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Choice {
    /// Indexes into the entries, least recently used first.
    pub(crate) evict: Vec<usize>,
    /// Bytes left once they are gone (above the bound only when every
    /// entry left is held).
    pub(crate) bytes_after: u64,
}

/// The unheld entries to remove, least recently used first (ties by key),
/// until the rest fit in `bound`.
pub(crate) fn choose(entries: &[Entry], bound: u64) -> Choice {
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    let mut candidates: Vec<usize> = (0..entries.len()).filter(|&i| !entries[i].held).collect();
    candidates.sort_by(|&a, &b| (entries[a].last_used, &entries[a].key).cmp(&(entries[b].last_used, &entries[b].key)));
    let mut evict = Vec::new();
    for i in candidates {
        if total <= bound {
            break;
        }
        total -= entries[i].bytes;
        evict.push(i);
    }
    Choice {
        evict,
        bytes_after: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(key: &str, bytes: u64, age_secs: u64, held: bool) -> Entry {
        Entry {
            key: key.into(),
            bytes,
            last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age_secs),
            held,
        }
    }

    fn keys<'a>(entries: &'a [Entry], c: &Choice) -> Vec<&'a str> {
        c.evict.iter().map(|&i| entries[i].key.as_str()).collect()
    }

    #[test]
    fn the_least_recently_used_unheld_files_go_first_and_only_as_many_as_needed() {
        let entries = [
            entry("new", 100, 10, false),
            entry("oldest", 100, 300, false),
            entry("old", 100, 200, false),
            entry("mid", 100, 100, false),
        ];
        let c = choose(&entries, 250);
        assert_eq!(keys(&entries, &c), ["oldest", "old"]);
        assert_eq!(c.bytes_after, 200);
        let c = choose(&entries, 400);
        assert!(c.evict.is_empty(), "within the bound nothing goes");
        assert_eq!(c.bytes_after, 400);
        let c = choose(&entries, 0);
        assert_eq!(keys(&entries, &c), ["oldest", "old", "mid", "new"]);
        assert_eq!(c.bytes_after, 0);
    }

    #[test]
    fn a_held_file_is_never_chosen_however_old() {
        let entries = [
            entry("held-oldest", 100, 900, true),
            entry("free-old", 100, 500, false),
            entry("held-new", 100, 5, true),
            entry("free-new", 100, 1, false),
        ];
        let c = choose(&entries, 150);
        assert_eq!(keys(&entries, &c), ["free-old", "free-new"]);
        assert_eq!(c.bytes_after, 200, "the bound is passed only by held files");
        let c = choose(&entries, 300);
        assert_eq!(keys(&entries, &c), ["free-old"]);
        assert_eq!(c.bytes_after, 300);
    }

    #[test]
    fn when_every_file_is_held_the_bound_is_exceeded_and_nothing_goes() {
        let entries = [entry("a", 500, 50, true), entry("b", 500, 60, true)];
        let c = choose(&entries, 100);
        assert!(c.evict.is_empty());
        assert_eq!(c.bytes_after, 1000);
    }

    #[test]
    fn a_pass_removes_unheld_files_and_keeps_held_ones_and_downloads_in_progress() {
        let dir = tempfile::tempdir().expect("dir");
        let folder = Folder::shared(dir.path());
        for (key, age) in [("a", 300u64), ("b", 200), ("c", 100)] {
            let db = dir.path().join(format!("{key}.db"));
            std::fs::write(&db, vec![0u8; 1000]).expect("db");
            std::fs::write(dir.path().join(format!("{key}.sum")), "x 1000\n").expect("sum");
            let when = sf_manifest::format::ids::system_now() - Duration::from_secs(age);
            std::fs::File::options()
                .write(true)
                .open(&db)
                .and_then(|f| f.set_modified(when))
                .expect("mtime");
        }
        std::fs::write(dir.path().join(".tmp-d-123"), vec![0u8; 5000]).expect("tmp");
        let counters = Arc::new(Counters::default());
        let hold = folder.hold(vec!["a".into()], Some(0), Arc::clone(&counters));
        // Held "a" is the oldest; "b" goes; "c" stays (1007 bytes each with its sum).
        folder.evict(Some(2100), &counters);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".tmp-d-123", "a.db", "a.sum", "c.db", "c.sum"]);
        let s = counters.snapshot();
        assert_eq!((s.cache_evictions, s.cache_bytes, s.cache_over_bound), (1, 2014, 0));
        // Everything held, bound 0: over it, nothing removed.
        let hold_c = folder.hold(vec!["c".into()], Some(0), Arc::clone(&counters));
        folder.evict(Some(0), &counters);
        assert!(dir.path().join("a.db").exists() && dir.path().join("c.db").exists());
        assert_eq!(counters.snapshot().cache_over_bound, 1);
        // Let go (no runtime here: the pass runs at once).
        drop(hold_c);
        drop(hold);
        assert!(!dir.path().join("a.db").exists() && !dir.path().join("c.db").exists());
        assert_eq!(counters.snapshot().cache_evictions, 3);
        assert!(
            dir.path().join(".tmp-d-123").exists(),
            "a download in progress is left alone"
        );
    }

    #[test]
    fn readers_naming_one_folder_share_its_holds() {
        let dir = tempfile::tempdir().expect("dir");
        let a = Folder::shared(dir.path());
        let b = Folder::shared(&dir.path().join("."));
        assert!(Arc::ptr_eq(&a, &b));
    }
}
