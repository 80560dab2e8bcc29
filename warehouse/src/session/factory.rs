//! Where a driver's sessions come from: [`SessionFactory`], with
//! [`EmbeddedSessions`] here and the Ballista cluster's in `sf-executor`,
//! so the warehouse stays engine-agnostic.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use sf_writer::config::JobConfig;
use sf_writer::job::{Engine, job_runtime, job_session_config, session_state_builder};

use super::settings::SessionSettings;
use crate::error::Result;

/// Makes the sessions of a [`Driver`](super::Driver)'s pool and the
/// sessions its builds run in.
#[async_trait]
pub trait SessionFactory: Send + Sync + fmt::Debug {
    /// A short name for logs and summaries (`embedded`, `cluster df://...`).
    fn describe(&self) -> String;

    /// Whether shard tasks run in this process.
    fn runs_locally(&self) -> bool;

    /// A new session that knows ShardForge's plan nodes, with the engine's
    /// settings of `settings` applied ([`SessionSettings::apply`]); a
    /// setting the engine refuses is an error naming it. The driver then
    /// registers catalogs and global temporary views in it.
    async fn create(&self, settings: &SessionSettings) -> Result<SessionContext>;

    /// The session a job's build runs in when `session` is borrowed: it
    /// shares the session's catalogs, views, functions and object stores,
    /// and carries what the job asks of its engine (batch size, memory
    /// limit, spill folder; on a cluster its storage options for the
    /// executors). `settings` are applied again last, so the driver's
    /// settings win as they do in the session itself. The borrowed
    /// session is not changed.
    fn for_job(
        &self,
        session: &SessionContext,
        job: &JobConfig,
        settings: &SessionSettings,
    ) -> sf_writer::Result<SessionContext>;

    /// Releases what `session` holds outside this process, when the pool
    /// stops it (on close, or after a failure). Nothing by default.
    async fn release(&self, _session: &SessionContext) {}
}

/// Sessions of DataFusion in this process: the default factory.
#[derive(Debug, Default, Clone)]
pub struct EmbeddedSessions {
    /// Partitions for scans and projections (default: the number of cores).
    pub target_partitions: Option<usize>,
}

#[async_trait]
impl SessionFactory for EmbeddedSessions {
    fn describe(&self) -> String {
        "embedded".into()
    }

    fn runs_locally(&self) -> bool {
        true
    }

    async fn create(&self, settings: &SessionSettings) -> Result<SessionContext> {
        let mut config = SessionConfig::new();
        if let Some(n) = self.target_partitions {
            config = config.with_target_partitions(n.max(1));
        }
        settings.apply(&mut config)?;
        Ok(SessionContext::new_with_state(session_state_builder(config).build()))
    }

    fn for_job(
        &self,
        session: &SessionContext,
        job: &JobConfig,
        settings: &SessionSettings,
    ) -> sf_writer::Result<SessionContext> {
        let mut state = session.state();
        let id = state.session_id().to_string();
        let config = job_session_config(job, state.config().clone());
        *state.config_mut() = config;
        reapply(settings, state.config_mut())?;
        // The job's memory pool and spill folder; the session's object stores.
        let runtime = job_runtime(job, Some(Arc::clone(&state.runtime_env().object_store_registry)))?;
        let state = SessionStateBuilder::new_from_existing(state)
            .with_runtime_env(runtime)
            .with_session_id(id)
            .build();
        Ok(SessionContext::new_with_state(state))
    }
}

/// Applies `settings` to a job's copy of a session's config: they were
/// accepted when the session was made, so a refusal here is an invariant
/// broken.
pub fn reapply(settings: &SessionSettings, config: &mut SessionConfig) -> sf_writer::Result<()> {
    settings
        .apply(config)
        .map_err(|e| sf_writer::Error::Internal(format!("re-applying session settings: {e}")))
}

/// A borrowed session as the engine of a build: every query of the build
/// runs in [`SessionFactory::for_job`] of that session.
pub(crate) struct SessionEngine {
    pub(crate) ctx: SessionContext,
    pub(crate) factory: Arc<dyn SessionFactory>,
    pub(crate) settings: SessionSettings,
}

impl fmt::Debug for SessionEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionEngine")
            .field("session", &self.ctx.session_id())
            .field("factory", &self.factory)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Engine for SessionEngine {
    fn describe(&self) -> String {
        format!("{} (session {})", self.factory.describe(), self.ctx.session_id())
    }

    async fn session(&self, job: &JobConfig) -> sf_writer::Result<SessionContext> {
        self.factory.for_job(&self.ctx, job, &self.settings)
    }

    fn runs_locally(&self) -> bool {
        self.factory.runs_locally()
    }
}

/// The driver's factory as an engine outside any borrowed session: a new
/// session of the factory for each build. The warehouse handed to a
/// session's catalogs carries it; writes through a session use that
/// session instead ([`SessionEngine`]).
pub(crate) struct FactoryEngine {
    pub(crate) factory: Arc<dyn SessionFactory>,
    pub(crate) settings: SessionSettings,
}

impl fmt::Debug for FactoryEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FactoryEngine")
            .field("factory", &self.factory)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Engine for FactoryEngine {
    fn describe(&self) -> String {
        self.factory.describe()
    }

    async fn session(&self, job: &JobConfig) -> sf_writer::Result<SessionContext> {
        let ctx = self
            .factory
            .create(&self.settings)
            .await
            .map_err(|e| sf_writer::Error::engine_caused("creating a session", e))?;
        self.factory.for_job(&ctx, job, &self.settings)
    }

    fn runs_locally(&self) -> bool {
        self.factory.runs_locally()
    }
}
