//! The driver and its bounded pool of sessions.

use std::fmt;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sf_writer::job::{BuildOptions, Embedded, Engine, Outcome};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::engines::DriverEngine;
use super::handle::Session;
use super::settings::SessionSettings;
use super::shared::Shared;
use crate::catalog;
use crate::error::{Error, Result};
use crate::job::JobFile;
use crate::names::{Catalogs, DEFAULT};
use crate::warehouse::Warehouse;

/// Sessions a pool keeps at most unless told otherwise.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// Runs ShardForge's SQL, tables and builds through a bounded pool of
/// sessions, embedded or on a Ballista cluster.
///
/// A session holds state (settings, temporary views), so one session
/// shared by concurrent callers races, and a session per call costs a
/// session's set-up (on a cluster, a connection and a scheduler session)
/// every time. The driver lends sessions instead:
///
/// - [`session`](Self::session) borrows one: an idle session when there is
///   one, else a new one while fewer than the pool's size exist, else it
///   waits until a session is returned. The returned guard gives the
///   session back when dropped.
/// - A session marked failed ([`PooledSession::discard`], or an error of
///   the engine or of storage in one of its operations) is not returned
///   to the pool; a later borrow makes a new one in its place.
/// - Every new session gets the driver's settings from the pool's
///   engine ([`SessionSettings`]): engine settings, catalogs, the
///   process's global temporary views. A setting the engine refuses fails
///   the borrow, naming the setting.
/// - [`close`](Self::close) stops the idle sessions and refuses further
///   borrows; borrowed sessions are stopped when they come back.
///
/// Clones share the pool.
#[derive(Clone)]
pub struct Driver {
    inner: Arc<Pool>,
}

struct Pool {
    shared: Arc<Shared>,
    size: usize,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Session>>,
    closed: AtomicBool,
    live: AtomicUsize,
    borrowed: AtomicUsize,
    waiting: AtomicUsize,
    created: AtomicU64,
    discarded: AtomicU64,
}

/// A snapshot of a driver's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Sessions the pool keeps at most.
    pub size: usize,
    /// Sessions that exist: idle plus borrowed (never more than `size`).
    pub live: usize,
    /// Sessions waiting in the pool.
    pub idle: usize,
    /// Sessions lent out.
    pub borrowed: usize,
    /// Callers waiting for a session.
    pub waiting: usize,
    /// Sessions created so far.
    pub created: u64,
    /// Sessions thrown away after a failure so far.
    pub discarded: u64,
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("engine", &self.inner.shared.engine.describe())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Driver`]: the engine its sessions run on (embedded unless
/// given), the pool's size and the session settings.
pub struct DriverBuilder {
    engine: Arc<dyn Engine>,
    pool_size: usize,
    pairs: Vec<(String, String)>,
    reader_cache: Option<PathBuf>,
}

impl fmt::Debug for DriverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverBuilder")
            .field("engine", &self.engine)
            .field("pool_size", &self.pool_size)
            .field("settings", &self.pairs.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for DriverBuilder {
    fn default() -> Self {
        DriverBuilder {
            engine: Arc::new(Embedded::default()),
            pool_size: DEFAULT_POOL_SIZE,
            pairs: Vec::new(),
            reader_cache: None,
        }
    }
}

impl DriverBuilder {
    /// Sessions of `engine` (a Ballista cluster's comes from
    /// `sf-executor`).
    pub fn with_engine(mut self, engine: Arc<dyn Engine>) -> Self {
        self.engine = engine;
        self
    }

    /// Keep at most `size` sessions (at least 1; default 8).
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// A session setting (see [`SessionSettings`]); later ones win.
    pub fn with_setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.pairs.push((key.into(), value.into()));
        self
    }

    /// Several session settings.
    pub fn with_settings<K: Into<String>, V: Into<String>>(mut self, pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        self.pairs.extend(pairs.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// What a job file says about sessions: `[cluster] pool_size`,
    /// `[cluster.session]` settings, and `[sf.catalog.NAME]` catalogs.
    /// Settings given before this call are overridden by the job's, later
    /// ones override them.
    pub fn with_job(mut self, job: &JobFile) -> Result<Self> {
        if let Some(cluster) = &job.cluster {
            if let Some(n) = cluster.pool_size {
                self.pool_size = n;
            }
            self.pairs.extend(cluster.session_pairs()?);
        }
        self.pairs.extend(job.sf_settings()?);
        Ok(self)
    }

    /// Where table readers cache downloaded shards (default: the reader's).
    pub fn with_reader_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.reader_cache = Some(dir.into());
        self
    }

    /// The driver. Checks the pool size, the settings' namespaces and the
    /// catalogs; the engine checks its own settings when the first session
    /// is made.
    pub fn build(self) -> Result<Driver> {
        if self.pool_size == 0 {
            return Err(Error::config("pool_size", "must be at least 1"));
        }
        let mut settings = SessionSettings::new();
        for (k, v) in &self.pairs {
            settings.set(k, v)?;
        }
        let catalogs = settings.catalogs()?;
        let mut engine_settings = SessionSettings::new().with("datafusion.catalog.information_schema", "true")?;
        if catalogs.iter().next().is_some() {
            engine_settings.set("datafusion.catalog.default_catalog", catalogs.default_name())?;
            engine_settings.set("datafusion.catalog.default_schema", DEFAULT)?;
        }
        for (k, v) in settings.engine() {
            engine_settings.set(k, v)?;
        }
        let driver_engine = Arc::new(DriverEngine {
            engine: Arc::clone(&self.engine),
            settings: engine_settings.clone(),
        });
        let mut warehouse = Warehouse::new(catalogs.clone(), driver_engine);
        if let Some(dir) = self.reader_cache {
            warehouse = warehouse.with_reader_cache(dir);
        }
        let shared = Arc::new(Shared {
            catalogs,
            warehouse,
            engine: self.engine,
            settings,
            engine_settings,
        });
        Ok(Driver {
            inner: Arc::new(Pool {
                shared,
                size: self.pool_size,
                permits: Arc::new(Semaphore::new(self.pool_size)),
                idle: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                live: AtomicUsize::new(0),
                borrowed: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                created: AtomicU64::new(0),
                discarded: AtomicU64::new(0),
            }),
        })
    }
}

/// Counts a waiting caller for as long as it lives (a cancelled wait
/// included).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Driver {
    /// A builder: embedded sessions, a pool of 8, no settings.
    pub fn builder() -> DriverBuilder {
        DriverBuilder::default()
    }

    /// Borrows a session (see the type's documentation); waits while all
    /// `size` sessions are lent out.
    pub async fn session(&self) -> Result<PooledSession> {
        let pool = &self.inner;
        if pool.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let permit = {
            let _waiting = Waiting::new(&pool.waiting);
            Arc::clone(&pool.permits)
                .acquire_owned()
                .await
                .map_err(|_| Error::Closed)?
        };
        if pool.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let idle = pool.idle_sessions().pop();
        let session = match idle {
            Some(s) => s,
            // The permit bounds the sessions: one is made only while fewer
            // than `size` are lent out and none is idle.
            None => {
                let session = pool.new_session().await?;
                pool.created.fetch_add(1, Ordering::SeqCst);
                pool.live.fetch_add(1, Ordering::SeqCst);
                session
            }
        };
        pool.borrowed.fetch_add(1, Ordering::SeqCst);
        Ok(PooledSession {
            session: Some(session),
            pool: Arc::clone(pool),
            _permit: permit,
        })
    }

    /// Stops the idle sessions (releasing what they hold on a cluster)
    /// and refuses every later borrow, waiting callers included; borrowed
    /// sessions stop when they are returned. Returns the sessions stopped
    /// now.
    pub async fn close(&self) -> usize {
        let pool = &self.inner;
        pool.closed.store(true, Ordering::SeqCst);
        pool.permits.close();
        let idle: Vec<Session> = pool.idle_sessions().drain(..).collect();
        let stopped = idle.len();
        for s in idle {
            pool.live.fetch_sub(1, Ordering::SeqCst);
            pool.shared.engine.release(s.context()).await;
        }
        stopped
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// The pool as it is now.
    pub fn stats(&self) -> PoolStats {
        let pool = &self.inner;
        PoolStats {
            size: pool.size,
            live: pool.live.load(Ordering::SeqCst),
            idle: pool.idle_sessions().len(),
            borrowed: pool.borrowed.load(Ordering::SeqCst),
            waiting: pool.waiting.load(Ordering::SeqCst),
            created: pool.created.load(Ordering::SeqCst),
            discarded: pool.discarded.load(Ordering::SeqCst),
        }
    }

    /// The settings every new session gets.
    pub fn settings(&self) -> &SessionSettings {
        &self.inner.shared.settings
    }

    /// The catalogs of the `sf.catalog.*` settings.
    pub fn catalogs(&self) -> &Catalogs {
        &self.inner.shared.catalogs
    }

    /// Where sessions run (`embedded`, `cluster df://...`).
    pub fn describe(&self) -> String {
        self.inner.shared.engine.describe()
    }

    /// Runs a job file's build in a borrowed session: its input (files,
    /// SQL over files, or a warehouse table) and its output (a snapshot
    /// prefix or a table), as `sf-write` runs it. A job without catalogs
    /// of its own uses the driver's.
    pub async fn run_job(&self, job: &JobFile, options: &BuildOptions) -> Result<Outcome> {
        self.session().await?.run_job(job, options).await
    }
}

impl Pool {
    fn idle_sessions(&self) -> std::sync::MutexGuard<'_, Vec<Session>> {
        // The list holds whole sessions only: a panic elsewhere leaves it usable.
        sf_manifest::sync::lock(&self.idle)
    }

    /// A new session of the pool: the engine's, with the engine's settings
    /// (a setting the engine refuses is an error naming it), then
    /// ShardForge's (catalogs, global temporary views).
    async fn new_session(&self) -> Result<Session> {
        let shared = &self.shared;
        let mut config = shared.engine.base_config();
        shared.engine_settings.apply(&mut config)?;
        let ctx = shared.engine.connect(config).await?;
        if let Err(e) = catalog::register(&shared.warehouse, &ctx).await {
            shared.engine.release(&ctx).await;
            return Err(e);
        }
        Ok(Session::new(ctx, Arc::clone(shared)))
    }

    /// Takes back a lent session: into the pool, or stopped when it failed
    /// or the driver is closed.
    fn give_back(&self, session: Session) {
        self.borrowed.fetch_sub(1, Ordering::SeqCst);
        let failed = session.has_failed();
        {
            let mut idle = self.idle_sessions();
            // Checked under the lock `close` drains under: a session is
            // either drained by close or stopped here, never left idle.
            if !failed && !self.closed.load(Ordering::SeqCst) {
                idle.push(session);
                return;
            }
        }
        if failed {
            self.discarded.fetch_add(1, Ordering::SeqCst);
        }
        self.live.fetch_sub(1, Ordering::SeqCst);
        let engine = Arc::clone(&self.shared.engine);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { engine.release(session.context()).await });
        }
    }
}

/// A borrowed session: derefs to [`Session`]; dropping it gives the
/// session back to the pool (or stops it, when it failed).
pub struct PooledSession {
    session: Option<Session>,
    pool: Arc<Pool>,
    // Released after `drop` has put the session back, so the caller it
    // wakes finds it idle.
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for PooledSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledSession").field("session", &self.session).finish()
    }
}

impl Deref for PooledSession {
    type Target = Session;

    fn deref(&self) -> &Session {
        self.session
            .as_ref()
            .expect("a lent session is held until the guard drops")
    }
}

impl PooledSession {
    /// Throws the session away instead of returning it (its state is not
    /// to be trusted); a later borrow makes a new one.
    pub fn discard(self) {
        self.mark_failed();
    }
}

impl Drop for PooledSession {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool.give_back(s);
        }
    }
}
