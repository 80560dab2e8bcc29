//! The cluster [`Engine`]: `sf-write --cluster df://host:port`, and the
//! sessions of a `sf_warehouse::Driver` on a cluster.
//!
//! The driver (`sf-write`) plans and publishes exactly as in embedded mode;
//! only the session differs. It is a Ballista client session, so every
//! query of the build (schema inference stays local; counting, sampling and
//! the write itself) runs on the cluster. The session carries:
//!
//! - ShardForge's codecs, so the plan ships to the scheduler;
//! - the job's batch size, memory limit per task and storage options
//!   without credentials (`shardforge.*`, see [`crate::options`]);
//! - Ballista's sort-based shuffle from [`SORT_SHUFFLE_FROM_SHARDS`]
//!   shards on (one file per map task instead of one per shard);
//! - the engine's session settings (a job file's `[cluster.session]`),
//!   applied last: any `datafusion.*` or `ballista.*` key, sent to the
//!   scheduler and every task as Spark Connect drivers send session confs;
//! - ShardForge's client planner ([`crate::client`]), which reads every
//!   result partition once even when Ballista lists it twice after a lost
//!   executor.
//!
//! A driver's pooled sessions are each a Ballista client session of their
//! own (their own session id, which the scheduler keys its session state
//! by), made from [`ClusterEngine::base_config`] with the driver's
//! settings; a build in one carries the job as above under the same
//! session id, and when the pool stops a session the engine asks the
//! scheduler to drop its state ([`Engine::release`]). What travels with a
//! query: its logical plan, encoded with ShardForge's codecs (warehouse
//! tables as the manifest they read, each executor opening its own reader
//! pinned to it; files as their listing; views inlined by the session that
//! plans them). Catalogs, views and listings stay with the driver.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ballista::extension::SessionContextExt;
use ballista_core::config::BALLISTA_SHUFFLE_SORT_BASED_ENABLED;
use ballista_core::extension::SessionConfigExt;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionState;
use datafusion::prelude::{SessionConfig, SessionContext};
use sf_warehouse::JobFile;
use sf_writer::config::JobConfig;
use sf_writer::job::{Engine, session_state_builder};
use sf_writer::{Error, Result};

use crate::client::ClusterQueryPlanner;
use crate::codec::ShardForgeLogicalCodec;
use crate::options::ShardForgeOptions;
use crate::register::register;

/// A scheduler address, `df://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerUrl {
    host: String,
    port: u16,
}

impl SchedulerUrl {
    /// The default scheduler port.
    pub const DEFAULT_PORT: u16 = 50050;

    /// Parses `df://host[:port]` (also accepted: `host:port`).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::config(
                "--cluster",
                format!("{text:?} is not a scheduler address: {why} (expected df://host:port)"),
            )
        };
        let with_scheme = if text.contains("://") {
            text.to_string()
        } else {
            format!("df://{text}")
        };
        let url = url::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "df" {
            return Err(bad(&format!("the scheme is {:?}", url.scheme())));
        }
        if !url.path().trim_matches('/').is_empty() || url.query().is_some() {
            return Err(bad("it has a path or query"));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        Ok(SchedulerUrl {
            host,
            port: url.port().unwrap_or(Self::DEFAULT_PORT),
        })
    }

    /// Host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The gRPC address, `http://host:port`.
    pub fn http_url(&self) -> String {
        self.to_string().replacen("df://", "http://", 1)
    }
}

impl fmt::Display for SchedulerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "df://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "df://{}:{}", self.host, self.port)
        }
    }
}

/// From this many shards on, a job's session uses Ballista's sort-based
/// shuffle (unless `[cluster.session]` says otherwise).
pub const SORT_SHUFFLE_FROM_SHARDS: u32 = 512;

/// Runs the build's queries on a Ballista cluster.
#[derive(Debug, Clone)]
pub struct ClusterEngine {
    scheduler: SchedulerUrl,
    /// Settings applied last to every job's session (`[cluster.session]`).
    session_settings: Vec<(String, String)>,
}

impl ClusterEngine {
    /// An engine submitting to `scheduler`.
    pub fn new(scheduler: SchedulerUrl) -> Self {
        ClusterEngine {
            scheduler,
            session_settings: Vec::new(),
        }
    }

    /// An engine submitting to `url` (`df://host:port`).
    pub fn parse(url: &str) -> Result<Self> {
        Ok(Self::new(SchedulerUrl::parse(url)?))
    }

    /// This engine with session settings (`datafusion.*`, `ballista.*`)
    /// applied last to every job's session; a key the engine refuses fails
    /// the build that asks for the session, naming it.
    pub fn with_session_settings(mut self, pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        self.session_settings.extend(pairs);
        self
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &SchedulerUrl {
        &self.scheduler
    }

    /// What every session on the cluster starts from: Ballista's settings,
    /// ShardForge's codecs and settings extension, and the client planner
    /// that submits to this scheduler (no connection made).
    pub fn base_config(&self) -> SessionConfig {
        let planner = ClusterQueryPlanner::new(self.scheduler.http_url(), Arc::new(ShardForgeLogicalCodec::default()));
        register(SessionConfig::new_with_ballista()).with_ballista_query_planner(Arc::new(planner))
    }

    /// `config` carrying a job: its batch size and job name, its storage
    /// options without credentials and memory limit per task
    /// (`shardforge.*`), then the engine's session settings.
    pub fn apply_job(&self, config: SessionConfig, job: &JobConfig) -> Result<SessionConfig> {
        let mut config = config
            .with_batch_size(job.write.batch_size)
            .with_ballista_job_name(&format!("sf-write {}", job.output.prefix));
        config
            .options_mut()
            .extensions
            .insert(ShardForgeOptions::for_job(&job.storage, job.write.memory_limit_mib));
        if job.routing.num_dbs.is_some_and(|n| n >= SORT_SHUFFLE_FROM_SHARDS) {
            // The hash shuffle writes one file per shard from every map
            // task, each open until the task ends: 10,000 shards would keep
            // 10,000 files open per task. The sort-based shuffle writes one
            // file and an index per map task, whatever the shard count.
            config
                .options_mut()
                .set(BALLISTA_SHUFFLE_SORT_BASED_ENABLED, "true")
                .map_err(|e| Error::engine(format!("enabling the sort-based shuffle: {e}")))?;
        }
        for (key, text) in &self.session_settings {
            config
                .options_mut()
                .set(key, text)
                .map_err(|e| Error::config(format!("cluster.session.{key:?}"), e.to_string()))?;
        }
        Ok(config)
    }

    /// The session configuration a job runs with (no connection made).
    pub fn session_config(&self, job: &JobConfig) -> Result<SessionConfig> {
        self.apply_job(self.base_config(), job)
    }

    /// A client session on the cluster with `config` (see
    /// [`base_config`](Self::base_config)): fails within the connect
    /// timeout, saying so, when no scheduler answers.
    pub async fn connect(&self, config: SessionConfig) -> Result<SessionContext> {
        // The same bound Ballista's client uses to connect
        // (`ballista.grpc.client.connect_timeout_seconds`, 20 s by default).
        let secs = config.ballista_config().default_grpc_client_connect_timeout_seconds();
        let timeout = Duration::from_secs((secs as u64).clamp(1, 600));
        self.probe(timeout).await?;
        let state = session_state_builder(config).build();
        SessionContext::remote_with_state(&self.scheduler.to_string(), state)
            .await
            .map_err(|e| Error::engine(format!("connecting to {}: {e}", self.scheduler)))
    }

    /// Fails with a clear message, within the connect timeout, when nothing
    /// accepts connections at the scheduler's address: the engine is
    /// unavailable (exit 5), as storage would be.
    async fn probe(&self, timeout: Duration) -> Result<()> {
        let target = (self.scheduler.host.as_str(), self.scheduler.port);
        let unreachable = |why: String| Error::EngineUnavailable {
            message: format!(
                "cannot reach the Ballista scheduler at {}: {why}; is sf-scheduler running there?",
                self.scheduler
            ),
        };
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!("no answer within {}s", timeout.as_secs()))),
        }
    }
}

#[async_trait]
impl Engine for ClusterEngine {
    fn describe(&self) -> String {
        format!("cluster {}", self.scheduler)
    }

    fn runs_locally(&self) -> bool {
        false
    }

    async fn session(&self, job: &JobConfig) -> Result<SessionContext> {
        self.connect(self.session_config(job)?).await
    }

    fn base_config(&self) -> SessionConfig {
        ClusterEngine::base_config(self)
    }

    async fn connect(&self, config: SessionConfig) -> Result<SessionContext> {
        ClusterEngine::connect(self, config).await
    }

    fn job_state(&self, session: &SessionContext, job: &JobConfig) -> Result<SessionState> {
        let mut state = session.state();
        let id = state.session_id().to_string();
        let config = self.apply_job(state.config().clone(), job)?;
        *state.config_mut() = config;
        // Same session id: the scheduler sees the borrowed session's jobs.
        Ok(SessionStateBuilder::new_from_existing(state)
            .with_session_id(id)
            .build())
    }

    async fn release(&self, session: &SessionContext) {
        let config = session.state().config().clone();
        let url = self.scheduler.http_url();
        if let Err(e) = crate::client::remove_session(&url, &session.session_id(), &config).await {
            tracing::debug!("could not drop session {} on the scheduler: {e}", session.session_id());
        }
    }
}

/// The engine a job file runs on: the Ballista cluster at `url` (from
/// `--cluster` or the job's `[cluster] scheduler`) with the job's
/// `[cluster.session]` settings; `None` when there is no such URL (the
/// caller runs it embedded).
pub fn engine_for(url: Option<&str>, job: &JobFile) -> sf_warehouse::Result<Option<ClusterEngine>> {
    let Some(url) = url.or_else(|| job.scheduler()) else {
        return Ok(None);
    };
    let pairs = match &job.cluster {
        Some(c) => c.session_pairs()?,
        None => Vec::new(),
    };
    Ok(Some(ClusterEngine::parse(url)?.with_session_settings(pairs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sf_manifest::Classified;

    #[test]
    fn scheduler_urls_parse_with_defaults_and_reject_nonsense() {
        let u = SchedulerUrl::parse("df://127.0.0.1:50051").expect("url");
        assert_eq!((u.host(), u.port()), ("127.0.0.1", 50051));
        assert_eq!(u.to_string(), "df://127.0.0.1:50051");
        assert_eq!(u.http_url(), "http://127.0.0.1:50051");
        assert_eq!(
            SchedulerUrl::parse("df://[::1]:7").expect("url").http_url(),
            "http://[::1]:7"
        );
        assert_eq!(SchedulerUrl::parse("df://sched").expect("url").port(), 50050);
        assert_eq!(SchedulerUrl::parse("sched:7000").expect("url").port(), 7000);
        for bad in ["http://x:1", "df://", "df://x:1/path", "df://x:notaport"] {
            let e = SchedulerUrl::parse(bad).expect_err(bad);
            assert_eq!(e.kind(), sf_manifest::ErrorKind::Config, "{bad}: {e}");
        }
    }

    fn job(extra: &str) -> JobFile {
        let text = format!(
            "key_col = \"id\"\n[input]\nformat = \"parquet\"\npath = \"s3://b/in.parquet\"\n[routing]\nnum_dbs = 4\n\
             [output]\nprefix = \"s3://b/out\"\n[storage]\nregion = \"us-east-1\"\naws_access_key_id = \"AKID-17\"\n\
             aws_secret_access_key = \"hush-91\"\n{extra}"
        );
        JobFile::parse(
            &text,
            "job.toml",
            std::path::Path::new("/"),
            Vec::<(String, String)>::new(),
        )
        .expect("job")
    }

    /// The engine `job` asks for, on a scheduler that is not there.
    fn engine(job: &JobFile) -> ClusterEngine {
        engine_for(Some("df://127.0.0.1:1"), job)
            .expect("engine")
            .expect("a cluster")
    }

    #[test]
    fn a_job_without_a_scheduler_runs_embedded() {
        assert!(engine_for(None, &job("")).expect("engine").is_none());
        let named = job("[cluster]\nscheduler = \"df://sched:7000\"\n");
        let e = engine_for(None, &named).expect("engine").expect("cluster");
        assert_eq!(e.scheduler().port(), 7000);
        let flag = engine_for(Some("df://other:1"), &named)
            .expect("engine")
            .expect("cluster");
        assert_eq!(flag.scheduler().host(), "other", "--cluster wins over the job file");
    }

    #[test]
    fn many_shards_take_the_sort_based_shuffle_unless_the_job_says_otherwise() {
        let sorted = |extra: &str, num_dbs: u32| {
            let mut j = job(extra);
            j.build.routing.num_dbs = Some(num_dbs);
            engine(&j)
                .session_config(&j.build)
                .expect("config")
                .ballista_config()
                .shuffle_sort_based_enabled()
        };
        assert!(!sorted("", 4), "a few shards: the hash shuffle");
        assert!(sorted("", 10_000), "10,000 shards: one shuffle file per map task");
        assert!(
            !sorted(
                "[cluster.session]\n\"ballista.shuffle.sort_based.enabled\" = false\n",
                10_000
            ),
            "the job's session settings come last"
        );
    }

    #[test]
    fn session_settings_carry_the_job_and_cluster_session_but_no_secret() {
        let j = job(
            "[cluster.session]\n\"datafusion.execution.target_partitions\" = 3\n\"ballista.job.name\" = \"nightly\"\n",
        );
        let config = engine(&j).session_config(&j.build).expect("config");
        assert_eq!(config.target_partitions(), 3);
        assert_eq!(
            config
                .ballista_config()
                .settings()
                .get("ballista.job.name")
                .map(String::as_str),
            Some("nightly")
        );
        let entries = config.options().entries();
        let get = |k: &str| entries.iter().find(|e| e.key == k).and_then(|e| e.value.clone());
        assert_eq!(get("shardforge.storage.region").as_deref(), Some("us-east-1"));
        let limit = sf_writer::config::default_memory_limit_mib().to_string();
        assert_eq!(get("shardforge.memory_limit_mib").as_deref(), Some(limit.as_str()));
        assert!(
            entries
                .iter()
                .all(|e| e.value.as_deref() != Some("hush-91") && e.value.as_deref() != Some("AKID-17")),
            "credentials stay on the driver"
        );
        let bad = job("[cluster.session]\n\"no.such.key\" = 1\n");
        let e = engine(&bad).session_config(&bad.build).expect_err("unknown key");
        assert!(e.to_string().contains("cluster.session"), "{e}");
    }

    #[tokio::test]
    async fn an_address_nobody_listens_on_fails_fast_and_says_so() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let engine = ClusterEngine::new(SchedulerUrl::parse(&format!("df://127.0.0.1:{port}")).expect("url"));
        let Err(e) = engine.session(&job("").build).await else {
            panic!("nobody listens on port {port}")
        };
        let m = e.to_string();
        assert!(
            m.contains("cannot reach the Ballista scheduler") && m.contains(&format!("127.0.0.1:{port}")),
            "{m}"
        );
        assert_eq!(e.kind(), sf_manifest::ErrorKind::Unavailable, "an outage, retried: {m}");
    }
}
