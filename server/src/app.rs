//! What the HTTP API and the gRPC service share ([`App`]): the served
//! snapshots, admission (authentication and roles, the bound on requests
//! in flight), the reloader of the tokens, and the lookups themselves,
//! with their errors as answers.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use sf_reader::{SnapshotView, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api_error::ApiError;
use crate::auth::{Auth, Caller, Tokens};
use crate::config::{AuthConfig, Limits, ServeConfig};
use crate::metrics::{REQUESTS_IN_FLIGHT, REQUESTS_REJECTED, RequestMetrics};
use crate::reload::{POLL_INTERVAL, Reloader};
use crate::snapshot::ServedSnapshot;

/// Routing context of a lookup, as `column=value` texts.
pub type ContextPairs = Vec<String>;

/// The routing contexts of a multiget.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Contexts {
    /// Keys route alone.
    #[default]
    None,
    /// One context for every key.
    Shared(ContextPairs),
    /// One per key (`None`: that key routes alone).
    PerKey(Vec<Option<ContextPairs>>),
}

/// The most queries one search request may carry (and `--max-keys`, if
/// lower): every query scans whole shards, so a batch is bounded more
/// tightly than a multiget's keys.
pub(crate) const MAX_SEARCH_BATCH: usize = 256;

/// A search as both front ends take it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SearchAsk {
    pub(crate) queries: Vec<Vec<f32>>,
    pub(crate) top_k: usize,
    pub(crate) num_probes: Option<u32>,
    pub(crate) shard_ids: Option<Vec<u32>>,
    /// The routing context, as `column=value` texts.
    pub(crate) context: Option<ContextPairs>,
    /// A CEL predicate over the payload.
    pub(crate) filter: Option<String>,
    /// Whether each hit comes with the value of its id as a key.
    pub(crate) with_values: bool,
}

/// One query's answer: its hits, and with `with_values` their values.
pub(crate) type Searched = (sf_reader::SearchResults, Option<Vec<Option<Bytes>>>);

/// The state every request handler shares.
pub(crate) struct App {
    pub(crate) snapshots: BTreeMap<String, Arc<ServedSnapshot>>,
    pub(crate) limits: Limits,
    /// The tokens of the moment (replaced on a reload).
    pub(crate) auth: Arc<Auth>,
    /// Whether the admin routes are served.
    pub(crate) admin_routes: bool,
    /// What is reloaded on SIGHUP or a changed file: the tokens, and
    /// whatever else registers (with [`Reloader::register`]).
    #[allow(
        dead_code,
        reason = "the registration point for other files read at start; the tokens register in `new`"
    )]
    pub(crate) reloader: Reloader,
    /// The task of `reloader`, ended with the state.
    reload_task: tokio::task::JoinHandle<()>,
    in_flight: Arc<Semaphore>,
    rejected_overloaded: metrics::Counter,
    rejected_unauthenticated: metrics::Counter,
    rejected_forbidden: metrics::Counter,
    pub(crate) request_metrics: RequestMetrics,
}

impl Drop for App {
    fn drop(&mut self) {
        self.reload_task.abort();
    }
}

/// Registers the token files of `config` with `reloader`: each reload
/// reads both (those that are set) and replaces the tokens only when both
/// could be read and hold a token. Registered without files too (tokens
/// given as they are): SIGHUP then puts the same tokens back, and the
/// reload figures exist on every server.
fn reload_tokens(reloader: &Reloader, auth: &Arc<Auth>, config: &AuthConfig) {
    let files: Vec<_> = [&config.read_token_file, &config.admin_token_file]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let (auth, config) = (Arc::clone(auth), config.clone());
    reloader.register("tokens", files, move || {
        let (read, admin) = config.load_tokens().map_err(|e| e.to_string())?;
        let tokens = Tokens::new(&read, &admin);
        let (r, a) = tokens.counts();
        auth.replace(tokens);
        Ok(format!("{r} read and {a} admin tokens"))
    });
}

impl App {
    /// The state for `config`; the metrics recorder (if any) must be
    /// installed before, as the counters are registered here. Called on a
    /// Tokio runtime: it starts listening for SIGHUP and watching the
    /// token files at once.
    pub(crate) fn new(config: &ServeConfig) -> crate::Result<App> {
        let snapshots = config
            .snapshots
            .iter()
            .map(|s| Ok((s.name.clone(), Arc::new(ServedSnapshot::new(s)?))))
            .collect::<crate::Result<BTreeMap<_, _>>>()?;
        let auth = Arc::new(Auth::new(Tokens::new(
            &config.auth.read_tokens,
            &config.auth.admin_tokens,
        )));
        let reloader = Reloader::new();
        reload_tokens(&reloader, &auth, &config.auth);
        let watch = reloader
            .watch(POLL_INTERVAL)
            .map_err(|e| crate::Error::config("SIGHUP", format!("cannot listen for it: {e}")))?;
        Ok(App {
            snapshots,
            limits: config.limits.clone(),
            auth,
            admin_routes: config.auth.admin_routes,
            reloader,
            reload_task: tokio::spawn(watch),
            in_flight: Arc::new(Semaphore::new(config.limits.max_in_flight)),
            rejected_overloaded: metrics::counter!(REQUESTS_REJECTED, "reason" => "overloaded"),
            rejected_unauthenticated: metrics::counter!(REQUESTS_REJECTED, "reason" => "unauthenticated"),
            rejected_forbidden: metrics::counter!(REQUESTS_REJECTED, "reason" => "forbidden"),
            request_metrics: RequestMetrics::new(),
        })
    }

    /// A place among the requests in flight, or 503 when all are taken.
    pub(crate) fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.in_flight).try_acquire_owned().map_err(|_| {
            self.rejected_overloaded.increment(1);
            ApiError::new(
                503,
                "overloaded",
                format!(
                    "the server is at its bound of {} requests in flight; try again",
                    self.limits.max_in_flight
                ),
            )
        })
    }

    /// Whether every snapshot is ready (as `/readyz` and the gRPC health
    /// service tell).
    pub(crate) fn ready(&self) -> bool {
        self.snapshots.values().all(|s| s.readiness().ready)
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.limits.max_in_flight - self.in_flight.available_permits()
    }

    /// Sets the gauges read off the readers, and the requests in flight;
    /// called before each scrape.
    pub(crate) fn publish_gauges(&self) {
        metrics::gauge!(REQUESTS_IN_FLIGHT).set(self.in_flight() as f64);
        for served in self.snapshots.values() {
            served.publish_gauges();
        }
    }

    /// Checks the `authorization` header against the tokens of the moment:
    /// who the caller is, or 401.
    pub(crate) fn authenticate(&self, header: Option<&[u8]>) -> Result<Caller, ApiError> {
        self.auth
            .tokens()
            .check(header)
            .inspect_err(|_| self.rejected_unauthenticated.increment(1))
    }

    /// Whether `caller` (authenticated) may use an admin route: 403
    /// `admin_disabled` when they are turned off or the server has no
    /// tokens, 403 `forbidden` for a read token.
    pub(crate) fn authorize_admin(&self, caller: &Caller) -> Result<(), ApiError> {
        if !self.admin_routes {
            return Err(ApiError::new(
                403,
                "admin_disabled",
                "admin routes are turned off on this server (--no-admin-routes, admin_routes = false)",
            ));
        }
        crate::auth::require_admin(&self.auth.tokens(), caller).inspect_err(|e| {
            if e.kind == "forbidden" {
                self.rejected_forbidden.increment(1);
            }
        })
    }

    /// The snapshot served as `name`, or 404.
    pub(crate) fn served(&self, name: &str) -> Result<&Arc<ServedSnapshot>, ApiError> {
        self.snapshots.get(name).ok_or_else(|| {
            ApiError::new(
                404,
                "unknown_snapshot",
                format!(
                    "no snapshot is served as {name:?} (served: {})",
                    self.snapshots.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    }

    /// The snapshot `version` of `name` names.
    pub(crate) fn view(&self, name: &str, version: &Version) -> Result<(&Arc<ServedSnapshot>, SnapshotView), ApiError> {
        let served = self.served(name)?;
        let reader = served.reader()?;
        let view = match version {
            Version::Current => reader.current(),
            v => reader.version(v)?,
        };
        Ok((served, view))
    }

    /// One key. The lookup spans (`lookup`, here and in
    /// [`multi_get_in`](Self::multi_get_in)) are at `debug`: none is made
    /// on the serve path unless the log filter or the span export asks
    /// for them.
    #[tracing::instrument(name = "lookup", level = "debug", skip_all, fields(snapshot = name, keys = 1))]
    pub(crate) async fn get(
        &self,
        name: &str,
        key: &str,
        context: &[String],
        version: &Version,
    ) -> Result<(SnapshotView, Option<Bytes>), ApiError> {
        let (served, view) = self.view(name, version)?;
        let run = view.run_id().clone();
        let result = async {
            let k = view.parse_key(key)?;
            if context.is_empty() {
                view.get(&k).await
            } else {
                let c = view.parse_context(context.iter().map(String::as_str))?;
                view.get_with_context(&k, &c).await
            }
        }
        .await
        .map_err(|e| ApiError::from(e).with_run(&run))?;
        served.count(std::slice::from_ref(&result));
        Ok((view, result))
    }

    /// Checks a multiget's size before any work.
    /// Checks a search's batch against its bound (413 past it).
    pub(crate) fn check_queries(&self, n: usize) -> Result<(), ApiError> {
        let max_queries = self.limits.max_keys.min(MAX_SEARCH_BATCH);
        if n > max_queries {
            return Err(ApiError::new(
                413,
                "too_many_queries",
                format!("more than {max_queries} queries is over this server's limit per search"),
            ));
        }
        Ok(())
    }

    /// Every query of `ask`, searched in `view` (one version for the
    /// whole batch), in order.
    pub(crate) async fn search_in(&self, view: &SnapshotView, ask: &SearchAsk) -> Result<Vec<Searched>, ApiError> {
        let run = view.run_id().clone();
        let bad = |e: sf_reader::Error| ApiError::from(e).with_run(&run);
        let routing_context = match &ask.context {
            Some(pairs) => Some(view.parse_context(pairs.iter().map(String::as_str)).map_err(bad)?),
            None => None,
        };
        let options = sf_reader::SearchOptions {
            top_k: ask.top_k,
            num_probes: ask.num_probes,
            shard_ids: ask
                .shard_ids
                .as_ref()
                .map(|ids| ids.iter().copied().map(sf_manifest::DbId).collect()),
            routing_context,
            filter: ask.filter.clone(),
        };
        let mut answers = Vec::with_capacity(ask.queries.len());
        for query in &ask.queries {
            answers.push(if ask.with_values {
                let found = view.search_then_get(query, &options).await.map_err(bad)?;
                (found.results, Some(found.values))
            } else {
                (view.search(query, &options).await.map_err(bad)?, None)
            });
        }
        Ok(answers)
    }

    pub(crate) fn check_keys(&self, n: usize, limit: usize) -> Result<(), ApiError> {
        if n > limit {
            return Err(ApiError::new(
                413,
                "too_many_keys",
                format!("{n} keys is over this server's limit of {limit} per request"),
            ));
        }
        Ok(())
    }

    /// Checks the values of a gRPC answer (or of one streamed chunk)
    /// against `limits.max_response_bytes`, adding them up as it goes.
    pub(crate) fn check_answer_bytes(&self, values: &[Option<Bytes>]) -> Result<(), ApiError> {
        let limit = self.limits.max_response_bytes;
        let mut total: usize = 0;
        for (i, v) in values.iter().enumerate() {
            // The value's bytes and a few of framing.
            total = total.saturating_add(v.as_ref().map_or(0, Bytes::len).saturating_add(8));
            if total > limit {
                return Err(ApiError::new(
                    413,
                    "response_too_large",
                    format!(
                        "the answer passes this server's limit of {limit} bytes at key {i} of {}: ask for fewer keys (or smaller values) per request",
                        values.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks an answer of `bytes` bytes against
    /// `limits.max_response_bytes`.
    pub(crate) fn check_message_bytes(&self, bytes: usize) -> Result<(), ApiError> {
        let limit = self.limits.max_response_bytes;
        if bytes > limit {
            return Err(ApiError::new(
                413,
                "response_too_large",
                format!("the answer is over this server's limit of {limit} bytes; ask for fewer results"),
            ));
        }
        Ok(())
    }

    /// Many keys from `view`, in input order. A key asked for more than
    /// once (with the same context) is looked up once.
    #[tracing::instrument(name = "lookup", level = "debug", skip_all, fields(run_id = %view.run_id(), keys = keys.len()))]
    pub(crate) async fn multi_get_in(
        &self,
        served: &ServedSnapshot,
        view: &SnapshotView,
        keys: &[String],
        contexts: &Contexts,
    ) -> Result<Vec<Option<Bytes>>, ApiError> {
        if let Contexts::PerKey(list) = contexts
            && list.len() != keys.len()
        {
            return Err(ApiError::bad_request(
                "bad_body",
                format!(
                    "{} contexts for {} keys: give one per key, or one for all",
                    list.len(),
                    keys.len()
                ),
            )
            .with_run(view.run_id()));
        }
        let (first, slot) = dedupe(keys, contexts);
        let unique_keys: Vec<String> = first.iter().map(|&i| keys[i].clone()).collect();
        let unique_contexts = match contexts {
            Contexts::PerKey(list) => Contexts::PerKey(first.iter().map(|&i| list[i].clone()).collect()),
            other => other.clone(),
        };
        let found = self.lookup_unique(view, &unique_keys, &unique_contexts).await?;
        let values: Vec<Option<Bytes>> = slot.iter().map(|&u| found[u].clone()).collect();
        served.count(&values);
        Ok(values)
    }

    /// The lookups of [`multi_get_in`](Self::multi_get_in), for keys
    /// without repeats.
    async fn lookup_unique(
        &self,
        view: &SnapshotView,
        keys: &[String],
        contexts: &Contexts,
    ) -> Result<Vec<Option<Bytes>>, ApiError> {
        let run = view.run_id().clone();
        let bad = |e: sf_reader::Error| ApiError::from(e).with_run(&run);
        let parsed = keys
            .iter()
            .map(|k| view.parse_key(k))
            .collect::<sf_reader::Result<Vec<_>>>()
            .map_err(bad)?;
        let values = match contexts {
            Contexts::None => view.multi_get(&parsed).await.map_err(bad)?,
            Contexts::Shared(pairs) => {
                let c = view.parse_context(pairs.iter().map(String::as_str)).map_err(bad)?;
                let items: Vec<_> = parsed.into_iter().map(|k| (k, Some(c.clone()))).collect();
                view.multi_get_with_contexts(&items).await.map_err(bad)?
            }
            Contexts::PerKey(list) => {
                if list.len() != parsed.len() {
                    return Err(ApiError::bad_request(
                        "bad_body",
                        format!(
                            "{} contexts for {} keys: give one per key, or one for all",
                            list.len(),
                            parsed.len()
                        ),
                    )
                    .with_run(&run));
                }
                let mut items = Vec::with_capacity(parsed.len());
                for (k, c) in parsed.into_iter().zip(list) {
                    let c = match c {
                        Some(pairs) if !pairs.is_empty() => {
                            Some(view.parse_context(pairs.iter().map(String::as_str)).map_err(bad)?)
                        }
                        _ => None,
                    };
                    items.push((k, c));
                }
                view.multi_get_with_contexts(&items).await.map_err(bad)?
            }
        };
        Ok(values)
    }
}

/// The keys of a multiget without repeats: the index of each key's first
/// occurrence (`first`), and for every key the position of its first
/// occurrence in `first` (`slot`). Keys repeat when their text and their
/// context (per-key contexts; an empty one is none) are the same.
fn dedupe(keys: &[String], contexts: &Contexts) -> (Vec<usize>, Vec<usize>) {
    let context_of = |i: usize| match contexts {
        Contexts::PerKey(list) => list.get(i).and_then(|c| c.as_ref()).filter(|c| !c.is_empty()),
        _ => None,
    };
    let mut seen: std::collections::HashMap<(&str, Option<&ContextPairs>), usize> =
        std::collections::HashMap::with_capacity(keys.len());
    let mut first = Vec::new();
    let slot = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            *seen.entry((k.as_str(), context_of(i))).or_insert_with(|| {
                first.push(i);
                first.len() - 1
            })
        })
        .collect();
    (first, slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn repeated_keys_are_looked_up_once_and_answered_in_input_order() {
        let keys = texts(&["1", "2", "1", "3", "2", "1"]);
        let (first, slot) = dedupe(&keys, &Contexts::None);
        assert_eq!(first, vec![0, 1, 3]);
        assert_eq!(slot, vec![0, 1, 0, 2, 1, 0]);
        // Per-key contexts: the same key under another context is another
        // lookup; an empty context is none.
        let ctx = |s: &str| Some(texts(&[s]));
        let contexts = Contexts::PerKey(vec![ctx("r=eu"), ctx("r=us"), ctx("r=eu"), Some(vec![]), None]);
        let keys = texts(&["1", "1", "1", "1", "1"]);
        let (first, slot) = dedupe(&keys, &contexts);
        assert_eq!(first, vec![0, 1, 3]);
        assert_eq!(slot, vec![0, 1, 0, 2, 2]);
        let (first, slot) = dedupe(&[], &Contexts::None);
        assert!(first.is_empty() && slot.is_empty());
    }
}
