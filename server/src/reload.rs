//! Reloading what may change while the server runs, without a restart:
//! a [`Reloader`] holds a list of reload callbacks, each with the files it
//! reads, and calls them on SIGHUP (all of them) and when the content of
//! one of their files changes (polled every [`POLL_INTERVAL`]: the content
//! is compared, not the modification time, so a file swapped behind a
//! symbolic link, as Kubernetes updates a mounted Secret, is seen too).
//!
//! The tokens are one such thing ([`crate::app::App`] registers them);
//! anything else that is read from files at start (certificates, say)
//! registers the same way. A callback that fails leaves what it would have
//! replaced in place: it is logged (naming the file, as the callback's
//! error says) and counted in `sf_serve_reloads_total{what, outcome}`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::metrics::RELOADS;

/// How often the watched files are read and compared.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A reload: puts in place what its files now say, and describes what it
/// loaded (`Ok`), or says why it could not, naming the file (`Err`). It
/// must not call [`Reloader::register`].
pub(crate) type ReloadFn = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What a file held at the last look: its content's digest, `None` when it
/// could not be read.
type Seen = Option<[u8; 32]>;

fn look(path: &Path) -> Seen {
    std::fs::read(path).ok().map(|bytes| Sha256::digest(bytes).into())
}

struct Entry {
    what: &'static str,
    files: Vec<PathBuf>,
    reload: ReloadFn,
    seen: Vec<Seen>,
    ok: metrics::Counter,
    failed: metrics::Counter,
}

impl Entry {
    fn run(&self, trigger: &str) {
        match (self.reload)() {
            Ok(loaded) => {
                self.ok.increment(1);
                tracing::info!(what = self.what, trigger, "reloaded {}: {loaded}", self.what);
            }
            Err(e) => {
                self.failed.increment(1);
                tracing::error!(
                    what = self.what,
                    trigger,
                    "cannot reload {}, keeping the previous ones: {e}",
                    self.what
                );
            }
        }
    }
}

/// The reload callbacks and their files; clones share the list.
#[derive(Clone, Default)]
pub(crate) struct Reloader {
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = sf_manifest::sync::lock(&self.entries);
        f.debug_list()
            .entries(entries.iter().map(|e| (e.what, &e.files)))
            .finish()
    }
}

impl Reloader {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Calls `reload` on SIGHUP and whenever the content of one of `files`
    /// changes from what it is now. `what` names it in logs and in the
    /// `what` label (a fixed word: `tokens`, `certificates`).
    pub(crate) fn register(
        &self,
        what: &'static str,
        files: Vec<PathBuf>,
        reload: impl Fn() -> Result<String, String> + Send + Sync + 'static,
    ) {
        let seen = files.iter().map(|f| look(f)).collect();
        let counter = |outcome: &'static str| metrics::counter!(RELOADS, "what" => what, "outcome" => outcome);
        let entry = Entry {
            what,
            files,
            reload: Box::new(reload),
            seen,
            ok: counter("ok"),
            failed: counter("failed"),
        };
        sf_manifest::sync::lock(&self.entries).push(entry);
    }

    /// Reloads everything (on SIGHUP), and takes the files' content as seen.
    pub(crate) fn reload_all(&self, trigger: &str) {
        let mut entries = sf_manifest::sync::lock(&self.entries);
        if entries.is_empty() {
            tracing::info!(trigger, "nothing to reload");
        }
        for e in entries.iter_mut() {
            e.seen = e.files.iter().map(|f| look(f)).collect();
            e.run(trigger);
        }
    }

    /// Reloads what a changed file feeds; returns how many reloads ran.
    pub(crate) fn poll(&self) -> usize {
        let mut entries = sf_manifest::sync::lock(&self.entries);
        let mut ran = 0;
        for e in entries.iter_mut() {
            let now: Vec<Seen> = e.files.iter().map(|f| look(f)).collect();
            if now != e.seen {
                // Taken as seen whatever the outcome: a file that stays
                // bad is reported once, not at every look.
                e.seen = now;
                e.run("file changed");
                ran += 1;
            }
        }
        ran
    }

    /// Listens for SIGHUP from now on (so a SIGHUP, whose default is to
    /// end the process, is taken from the moment this returns) and gives
    /// the task that reloads on it and polls the files every `interval`.
    pub(crate) fn watch(&self, interval: Duration) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup())?;
        let this = self.clone();
        Ok(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let sighup = tokio::select! {
                    got = hangup.recv() => {
                        if got.is_none() {
                            return;
                        }
                        true
                    }
                    _ = tick.tick() => false,
                };
                let r = this.clone();
                // The callbacks read files: off the request threads.
                let done = tokio::task::spawn_blocking(move || {
                    if sighup {
                        r.reload_all("SIGHUP");
                    } else {
                        r.poll();
                    }
                })
                .await;
                if let Err(e) = done {
                    tracing::error!("a reload failed: {e}");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_changed_file_is_reloaded_once_and_sighup_reloads_everything() {
        let dir = tempfile::tempdir().expect("dir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "one").expect("write");
        std::fs::write(&b, "two").expect("write");
        let r = Reloader::new();
        let calls = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        for (i, (what, file)) in [("first", &a), ("second", &b)].into_iter().enumerate() {
            let c = Arc::clone(&calls);
            let file2 = file.clone();
            r.register(what, vec![file.clone()], move || {
                c[i].fetch_add(1, Ordering::SeqCst);
                let text = std::fs::read_to_string(&file2).map_err(|e| format!("{}: {e}", file2.display()))?;
                if text.is_empty() {
                    return Err(format!("{} is empty", file2.display()));
                }
                Ok(text)
            });
        }
        let count = |i: usize| calls[i].load(Ordering::SeqCst);
        assert_eq!(r.poll(), 0, "nothing changed");
        // The same content written again is no change; other content is.
        std::fs::write(&a, "one").expect("write");
        assert_eq!(r.poll(), 0);
        std::fs::write(&a, "uno").expect("write");
        assert_eq!(r.poll(), 1);
        assert_eq!((count(0), count(1)), (1, 0));
        assert_eq!(r.poll(), 0, "a change is reloaded once");
        // A file that fails stays reported once, then a fix reloads it.
        std::fs::write(&b, "").expect("write");
        assert_eq!(r.poll(), 1);
        assert_eq!(r.poll(), 0);
        std::fs::remove_file(&b).expect("remove");
        assert_eq!(r.poll(), 1, "a file gone is a change");
        std::fs::write(&b, "dos").expect("write");
        assert_eq!(r.poll(), 1);
        assert_eq!(count(1), 3);
        r.reload_all("SIGHUP");
        assert_eq!((count(0), count(1)), (2, 4));
        assert_eq!(r.poll(), 0);
    }
}
