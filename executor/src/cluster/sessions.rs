//! A driver's sessions on a Ballista cluster: the [`SessionFactory`] that
//! `sf_warehouse::Driver` takes for `df://host:port`.
//!
//! Each pooled session is a Ballista client session of its own (its own
//! session id, which the scheduler keys its session state by), made as
//! [`ClusterEngine`] makes a build's session, with the driver's settings
//! applied: `datafusion.*` and `ballista.*` travel with every query to the
//! scheduler and the executors' tasks. What else travels:
//!
//! - a query's logical plan, encoded with ShardForge's codecs: warehouse
//!   tables as the manifest they read (each executor opens its own reader
//!   pinned to it), files as their listing;
//! - views, session or global, as part of that plan: a view's plan is
//!   inlined into the query by the session that plans it;
//! - for a build, the job's storage options without credentials and its
//!   memory limit per task (`shardforge.*`).
//!
//! Catalogs, views and listings stay with the driver: `information_schema`
//! and `SHOW TABLES` are answered by the session itself. When the pool
//! stops a session it asks the scheduler to drop its session state.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionContext;
use sf_warehouse::session::reapply;
use sf_warehouse::{Driver, DriverBuilder, SessionFactory, SessionSettings};
use sf_writer::config::JobConfig;

use super::engine::{ClusterEngine, SchedulerUrl};

/// Sessions on the Ballista cluster at one scheduler.
#[derive(Debug, Clone)]
pub struct ClusterSessions {
    engine: ClusterEngine,
}

impl ClusterSessions {
    /// Sessions on the cluster at `scheduler`.
    pub fn new(scheduler: SchedulerUrl) -> Self {
        ClusterSessions {
            engine: ClusterEngine::new(scheduler),
        }
    }

    /// Sessions on the cluster at `url` (`df://host:port`).
    pub fn parse(url: &str) -> sf_writer::Result<Self> {
        Ok(Self::new(SchedulerUrl::parse(url)?))
    }
}

#[async_trait]
impl SessionFactory for ClusterSessions {
    fn describe(&self) -> String {
        format!("cluster {}", self.engine.scheduler())
    }

    fn runs_locally(&self) -> bool {
        false
    }

    async fn create(&self, settings: &SessionSettings) -> sf_warehouse::Result<SessionContext> {
        let mut config = self.engine.base_config();
        settings.apply(&mut config)?;
        Ok(self.engine.connect(config).await?)
    }

    fn for_job(
        &self,
        session: &SessionContext,
        job: &JobConfig,
        settings: &SessionSettings,
    ) -> sf_writer::Result<SessionContext> {
        let mut state = session.state();
        let id = state.session_id().to_string();
        let config = self.engine.apply_job(state.config().clone(), job)?;
        *state.config_mut() = config;
        reapply(settings, state.config_mut())?;
        // Same session id: the scheduler sees the borrowed session's jobs.
        let state = SessionStateBuilder::new_from_existing(state)
            .with_session_id(id)
            .build();
        Ok(SessionContext::new_with_state(state))
    }

    async fn release(&self, session: &SessionContext) {
        let config = session.state().config().clone();
        let url = self.engine.scheduler().http_url();
        if let Err(e) = super::client::remove_session(&url, &session.session_id(), &config).await {
            tracing::debug!("could not drop session {} on the scheduler: {e}", session.session_id());
        }
    }
}

/// A driver builder whose sessions run on the cluster at `url`
/// (`df://host:port`), or embedded when `url` is `None`; then
/// [`DriverBuilder::with_job`], settings and [`DriverBuilder::build`].
pub fn driver(url: Option<&str>) -> sf_writer::Result<DriverBuilder> {
    let builder = Driver::builder();
    Ok(match url {
        Some(u) => builder.with_factory(Arc::new(ClusterSessions::parse(u)?)),
        None => builder,
    })
}

/// The driver a job file describes: on the cluster of `--cluster` (when
/// given) or `[cluster] scheduler`, else embedded; its pool size, session
/// settings and catalogs from the job.
pub fn driver_for_job(job: &JobConfig, cluster: Option<&str>) -> sf_warehouse::Result<Driver> {
    let url = cluster.or_else(|| job.cluster.as_ref().and_then(|c| c.scheduler.as_deref()));
    driver(url)?.with_job(job)?.build()
}
