//! A driver's sessions as the engine of a build: a borrowed session
//! ([`SessionEngine`]) or a new session of the driver's engine for each
//! build ([`DriverEngine`]), with the driver's settings applied again on
//! top of what the build asks, so the driver's settings win as they do in
//! the session itself.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::execution::context::SessionState;
use datafusion::prelude::{SessionConfig, SessionContext};
use sf_writer::config::JobConfig;
use sf_writer::job::Engine;

use super::settings::SessionSettings;

/// Applies `settings` to a build's copy of a session's config: they were
/// accepted when the session was made, so a refusal here is an invariant
/// broken.
fn reapply(settings: &SessionSettings, config: &mut SessionConfig) -> sf_writer::Result<()> {
    settings
        .apply(config)
        .map_err(|e| sf_writer::Error::Internal(format!("re-applying session settings: {e}")))
}

/// The state a build of `job` runs with in `session` of `engine`, with the
/// driver's `settings` applied last.
fn job_state(
    engine: &dyn Engine,
    session: &SessionContext,
    job: &JobConfig,
    settings: &SessionSettings,
) -> sf_writer::Result<SessionState> {
    let mut state = engine.job_state(session, job)?;
    reapply(settings, state.config_mut())?;
    Ok(state)
}

/// A borrowed session as the engine of a build: every query of the build
/// runs in [`Engine::job_state`] of that session.
pub(crate) struct SessionEngine {
    pub(crate) ctx: SessionContext,
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) settings: SessionSettings,
}

impl fmt::Debug for SessionEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionEngine")
            .field("session", &self.ctx.session_id())
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Engine for SessionEngine {
    fn describe(&self) -> String {
        format!("{} (session {})", self.engine.describe(), self.ctx.session_id())
    }

    fn runs_locally(&self) -> bool {
        self.engine.runs_locally()
    }

    async fn session(&self, job: &JobConfig) -> sf_writer::Result<SessionContext> {
        Ok(SessionContext::new_with_state(self.job_state(&self.ctx, job)?))
    }

    fn base_config(&self) -> SessionConfig {
        self.engine.base_config()
    }

    async fn connect(&self, config: SessionConfig) -> sf_writer::Result<SessionContext> {
        self.engine.connect(config).await
    }

    fn job_state(&self, session: &SessionContext, job: &JobConfig) -> sf_writer::Result<SessionState> {
        job_state(self.engine.as_ref(), session, job, &self.settings)
    }

    async fn release(&self, session: &SessionContext) {
        self.engine.release(session).await;
    }
}

/// The driver's engine outside any borrowed session: a new session with
/// the driver's settings for each build. The warehouse handed to a
/// session's catalogs carries it; writes through a session use that
/// session instead ([`SessionEngine`]).
pub(crate) struct DriverEngine {
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) settings: SessionSettings,
}

impl fmt::Debug for DriverEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverEngine")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Engine for DriverEngine {
    fn describe(&self) -> String {
        self.engine.describe()
    }

    fn runs_locally(&self) -> bool {
        self.engine.runs_locally()
    }

    async fn session(&self, job: &JobConfig) -> sf_writer::Result<SessionContext> {
        let mut config = self.base_config();
        self.settings
            .apply(&mut config)
            .map_err(|e| sf_writer::Error::engine_caused("creating a session", e))?;
        let ctx = self.engine.connect(config).await?;
        Ok(SessionContext::new_with_state(self.job_state(&ctx, job)?))
    }

    fn base_config(&self) -> SessionConfig {
        self.engine.base_config()
    }

    async fn connect(&self, config: SessionConfig) -> sf_writer::Result<SessionContext> {
        self.engine.connect(config).await
    }

    fn job_state(&self, session: &SessionContext, job: &JobConfig) -> sf_writer::Result<SessionState> {
        job_state(self.engine.as_ref(), session, job, &self.settings)
    }

    async fn release(&self, session: &SessionContext) {
        self.engine.release(session).await;
    }
}
