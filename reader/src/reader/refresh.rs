//! Refresh: read `_CURRENT` again and, when it names another manifest,
//! load that snapshot, open what the served one has open, and only then
//! swap; and the background loop that does so every `refresh_interval`,
//! retrying with backoff after failures.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use sf_manifest::{ManifestStore, Timestamp, publish::failpoint};

use crate::error::{Error, Result};
use crate::info::RefreshOutcome;
use crate::settings::Pin;
use crate::snapshot::Snapshot;
use crate::state::ReaderState;
use crate::stats::bump;

/// One refresh, serialised with any other (see
/// [`Reader::refresh`](crate::Reader::refresh)); its outcome is recorded in
/// the refresh status.
pub(super) async fn refresh(state: &ReaderState) -> Result<RefreshOutcome> {
    state.check_open()?;
    let _serial = state.refresh_lock.lock().await;
    bump(&state.counters.refreshes, 1);
    let started = Timestamp::now();
    let result = try_refresh(state).await;
    if result.is_err() && failpoint::sabotaged("failed-refresh-drops-snapshot") {
        // Sabotage: a failed refresh leaves nothing serving.
        state.mark_closed();
    }
    state.record_refresh(started, result.as_ref().map(|_| ()).map_err(ToString::to_string));
    result
}

async fn try_refresh(state: &ReaderState) -> Result<RefreshOutcome> {
    let old = state.served();
    if state.settings.pin != Pin::Current {
        return Ok(RefreshOutcome::Pinned {
            manifest_ref: old.manifest_ref.clone(),
        });
    }
    let current = state.store.load_current().await?.ok_or_else(|| Error::NoCurrent {
        location: state.current_url.clone(),
    })?;
    if current.pointer.manifest_ref == old.manifest_ref {
        state.set_degraded(None);
        return Ok(RefreshOutcome::Unchanged {
            manifest_ref: old.manifest_ref.clone(),
        });
    }
    let manifest_ref = current.pointer.manifest_ref.clone();
    let next = Snapshot::load(
        &state.store,
        &state.env,
        &manifest_ref,
        Some(current.pointer),
        &state.current_url,
    )
    .await?;
    // Shards of the held snapshots carry over where their content is
    // the same (a rollback to a kept snapshot reopens nothing); those
    // the served one has open and that changed are opened now.
    let kept: Vec<Arc<Snapshot>> = state.kept().iter().cloned().collect();
    let to_warm = if failpoint::sabotaged("reopen-unchanged-shards") {
        // Sabotage: nothing carries over; every shard opens again.
        Vec::new()
    } else {
        for k in &kept {
            next.adopt(k);
        }
        next.adopt(&old)
    };
    let env = &state.env;
    let next_ref = &next;
    futures::stream::iter(to_warm)
        .map(|db| async move { next_ref.shard(env, db).await.map(|_| ()) })
        .buffer_unordered(state.settings.max_concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    crate::view::warm_up(env, &next, &state.settings.warmup_keys).await?;
    // A reader closed meanwhile keeps nothing open.
    state.check_open()?;
    let from = old.manifest_ref.clone();
    let created = next.created_seconds();
    {
        // Kept before the swap, so that a read pinned to the old run
        // finds it at every moment.
        let mut kept = state.kept();
        if state.settings.keep_versions > 0 {
            kept.push_front(Arc::clone(&old));
        }
        kept.truncate(state.settings.keep_versions);
        *sf_manifest::sync::write(&state.served) = Arc::new(next);
        state.counters.versions_held.set((kept.len() + 1) as f64);
    }
    state.set_degraded(None);
    state.counters.snapshot_created.set(created);
    bump(&state.counters.swaps, 1);
    // The version that went (if no read holds it still) let go of its
    // files; a pass now also covers files the new one no longer names.
    state.env.downloads.evict().await;
    tracing::info!(prefix = %state.store.prefix_url(), %from, to = %manifest_ref, "swapped to a new snapshot");
    Ok(RefreshOutcome::Swapped { from, to: manifest_ref })
}

/// The background refresh task of a reader and its clones: aborted when
/// the last of them lets go of it, or on [`stop`](Self::stop).
#[derive(Debug)]
pub(super) struct BackgroundRefresh(tokio::task::JoinHandle<()>);

impl BackgroundRefresh {
    /// Starts `refresh_loop` on `runtime`. The loop holds the state
    /// weakly, so that it never keeps a dropped reader alive.
    pub(super) fn start(runtime: &tokio::runtime::Handle, state: &Arc<ReaderState>, interval: Duration) -> Self {
        let task = runtime.spawn(refresh_loop(
            Arc::downgrade(state),
            interval,
            state.settings.refresh_max_backoff,
        ));
        BackgroundRefresh(task)
    }

    pub(super) fn stop(&self) {
        self.0.abort();
    }
}

impl Drop for BackgroundRefresh {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The background refresh: polls every `interval`; after a failure retries
/// sooner (from 1 s, doubling up to `max_backoff`). It never gives up, and
/// a panic in one round is caught and counted as a failure. It stops when
/// the reader is dropped or closed.
async fn refresh_loop(state: Weak<ReaderState>, interval: Duration, max_backoff: Duration) {
    let mut failures: u32 = 0;
    loop {
        let delay = if failures == 0 {
            interval
        } else {
            let base = interval.min(Duration::from_secs(1));
            let backoff = base.saturating_mul(2u32.saturating_pow(failures - 1)).min(max_backoff);
            jitter(backoff)
        };
        tokio::time::sleep(delay).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        if state.is_closed() {
            return;
        }
        let started = Timestamp::now();
        let round = std::panic::AssertUnwindSafe(refresh(&state)).catch_unwind().await;
        if matches!(round, Ok(Err(_)) | Err(_)) && failpoint::sabotaged("refresh-dies-after-failure") {
            // Sabotage: the first failed round ends the background refresh.
            return;
        }
        failures = match round {
            Ok(Ok(_)) => 0,
            Ok(Err(_)) => failures.saturating_add(1),
            Err(payload) => {
                // Recorded like any failed refresh, so that health and the
                // status show a reader whose refreshes keep panicking.
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_string());
                tracing::error!(prefix = %state.store.prefix_url(), %message, "a background refresh panicked; retrying");
                state.record_refresh(started, Err(format!("the refresh panicked: {message}")));
                failures.saturating_add(1)
            }
        };
    }
}

/// ±10%, so that many readers that failed together do not retry together.
fn jitter(d: Duration) -> Duration {
    let r = (sf_manifest::format::ids::random_u64() % 2001) as f64 / 10_000.0 - 0.1;
    d.mul_f64(1.0 + r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10)).as_secs_f64();
            assert!((9.0..=11.0).contains(&j), "{j}");
        }
    }
}
