//! Named fail points at the crash windows of a build, for the fault
//! matrix of the test suite. They exist only in builds with the
//! `failpoints` feature (the test script builds the programs with it);
//! everywhere else [`hit`] is an empty inline function.
//!
//! A process picks its fail points from `SHARDFORGE_FAILPOINTS` (not an
//! `SF_` variable: those override job settings), a comma-separated
//! list of `name=action`:
//!
//! - `error`: the point fails as storage failing there would (an
//!   `Unavailable` error);
//! - `pause`: the process prints `sf-failpoint: paused at <name>` on stderr
//!   and the task that reached the point waits there for good (the rest of
//!   the process runs on: its run record's lease stays live), so a test can
//!   look at storage and readers in that state and then kill the process (a
//!   crash at that point).
//!
//! | point | window |
//! |---|---|
//! | `claim` | an attempt folder was just claimed, nothing uploaded yet |
//! | `upload` | a shard was just uploaded |
//! | `verify` | every shard is verified, the gates are next |
//! | `manifest` | the manifest is written, `_CURRENT` not yet swapped |
//! | `swap` | `_CURRENT` was just swapped |
//! | `delete-losers` | a losing attempt of the build is about to be deleted |
//! | `cleanup` | a cleanup (a build's retention) is about to delete a folder |

use crate::error::Result;

/// The environment variable naming the active fail points.
pub const ENV: &str = "SHARDFORGE_FAILPOINTS";

/// Passes, fails or pauses at the fail point `name` (see the module docs).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn hit(_name: &str) -> Result<()> {
    Ok(())
}

/// Passes, fails or pauses at the fail point `name` (see the module docs).
#[cfg(feature = "failpoints")]
pub async fn hit(name: &str) -> Result<()> {
    imp::hit(name).await
}

#[cfg(feature = "failpoints")]
mod imp {
    use std::collections::BTreeMap;
    use std::sync::OnceLock;

    use crate::error::{Error, Result};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Action {
        Error,
        Pause,
    }

    fn points() -> &'static BTreeMap<String, Action> {
        static POINTS: OnceLock<BTreeMap<String, Action>> = OnceLock::new();
        POINTS.get_or_init(|| {
            std::env::var(super::ENV)
                .unwrap_or_default()
                .split(',')
                .filter_map(|item| {
                    let (name, action) = item.trim().split_once('=')?;
                    let action = match action.trim() {
                        "error" => Action::Error,
                        "pause" => Action::Pause,
                        _ => return None,
                    };
                    Some((name.trim().to_string(), action))
                })
                .collect()
        })
    }

    // The pause line is the fail point's protocol with the test that set
    // it, on stderr whatever logging is configured.
    #[allow(clippy::disallowed_macros)]
    pub(super) async fn hit(name: &str) -> Result<()> {
        match points().get(name) {
            None => Ok(()),
            Some(Action::Error) => Err(Error::store(
                "fail point",
                name.to_string(),
                object_store::Error::Generic {
                    store: "fail point",
                    source: format!("injected failure at fail point {name}").into(),
                },
            )),
            Some(Action::Pause) => {
                eprintln!("sf-failpoint: paused at {name}");
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                }
            }
        }
    }
}
