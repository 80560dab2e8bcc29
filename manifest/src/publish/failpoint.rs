//! Named fail points at the crash windows of a build, and sabotage
//! switches that break one promise each, for the test suite. Both exist
//! only in builds with the `failpoints` feature (the test script builds
//! the programs with it); everywhere else [`hit`] is an empty inline
//! function and [`sabotaged`] is `false`.
//!
//! A process picks its fail points from `SHARDFORGE_FAILPOINTS` (not an
//! `SF_` variable: those override job settings), a comma-separated
//! list of `name=action`:
//!
//! - `error`: the point fails as storage failing there would (an
//!   `Unavailable` error); the process prints `sf-failpoint: hit <name>`
//!   on stderr, so a test can tell that the failure was injected;
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
//!
//! `SHARDFORGE_SABOTAGE` names sabotage switches, comma-separated: each
//! makes the code break exactly one promise of `docs/GUARANTEES.md` (see
//! [`SWITCHES`]), so that `scripts/check-guarantees.sh --bite` can show
//! that the tests naming the promise fail when it breaks. A process prints
//! `sf-sabotage: <name>` on stderr the first time a switch takes effect.
//!
//! Names are checked: an unknown point, action or switch in either
//! variable stops the process with a message naming it (a test that asks
//! for something that does not exist must not pass by testing nothing).

use crate::error::Result;

/// The environment variable naming the active fail points.
pub const ENV: &str = "SHARDFORGE_FAILPOINTS";

/// The environment variable naming the active sabotage switches.
pub const SABOTAGE_ENV: &str = "SHARDFORGE_SABOTAGE";

/// Every fail point, with the window it marks.
pub const POINTS: &[(&str, &str)] = &[
    ("claim", "an attempt folder was just claimed, nothing uploaded yet"),
    ("upload", "a shard was just uploaded"),
    ("verify", "every shard is verified, the gates are next"),
    ("manifest", "the manifest is written, _CURRENT not yet swapped"),
    ("swap", "_CURRENT was just swapped"),
    ("delete-losers", "a losing attempt of the build is about to be deleted"),
    ("cleanup", "a cleanup (a build's retention) is about to delete a folder"),
];

/// Every sabotage switch, with the promise it breaks.
pub const SWITCHES: &[(&str, &str)] = &[
    (
        "swap-before-manifest",
        "_CURRENT names the new manifest before the manifest is written",
    ),
    (
        "ignore-cas-version",
        "_CURRENT is written whatever another publisher wrote since the build read it",
    ),
    (
        "publish-missing-shard",
        "the manifest leaves out the last shard, and the build publishes it anyway",
    ),
    (
        "skip-checksum-reread",
        "shards are not read back against their checksums before publishing",
    ),
    (
        "delete-referenced-shard",
        "deleting losers and cleaning up also delete the winners manifests reference",
    ),
    (
        "sweep-foreign-attempts",
        "deleting a build's attempts takes every attempt of the run, whoever claimed it",
    ),
    (
        "sweep-sent-manifest",
        "a failed build deletes its winners even when its manifest may have been written",
    ),
    (
        "keep-failed-attempts",
        "a failed build leaves its attempt folders behind",
    ),
    ("keep-losers", "losing attempts are left behind after publishing"),
    ("shared-attempt-folder", "every task of a shard writes into attempt 0"),
    (
        "retention-deletes-kept",
        "cleanup's keep_last keeps only the manifest _CURRENT names",
    ),
    (
        "cleanup-ignores-moved-current",
        "cleanup deletes what it planned even when _CURRENT moved meanwhile",
    ),
    (
        "ignore-run-lease",
        "a run id held by a live lease is built again beside its holder",
    ),
    ("skip-gates", "validation gates report failures but never stop a build"),
    (
        "skip-routing-check",
        "the sample check passes whatever the kernel and the row router say",
    ),
    ("skip-rate-limiter", "writes ignore the rate limits"),
    (
        "failed-refresh-drops-snapshot",
        "a failed refresh leaves the reader serving nothing",
    ),
    (
        "refresh-dies-after-failure",
        "the first failed background refresh ends the background refresh",
    ),
    (
        "reopen-unchanged-shards",
        "a refresh carries no open shard over; every shard opens again",
    ),
    (
        "multi-get-across-versions",
        "a multi_get reads each key from the snapshot served when it is read",
    ),
];

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

/// Whether the sabotage switch `name` is on (never without the
/// `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn sabotaged(_name: &str) -> bool {
    false
}

/// Whether the sabotage switch `name` is on (see the module docs).
#[cfg(feature = "failpoints")]
pub fn sabotaged(name: &str) -> bool {
    imp::sabotaged(name)
}

#[cfg(feature = "failpoints")]
mod imp {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Mutex, OnceLock};

    use crate::error::{Error, Result};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Action {
        Error,
        Pause,
    }

    fn known(list: &[(&str, &str)]) -> String {
        list.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    }

    /// The active fail points; an unknown name or action stops the process.
    fn points() -> &'static BTreeMap<String, Action> {
        static POINTS: OnceLock<BTreeMap<String, Action>> = OnceLock::new();
        POINTS.get_or_init(|| {
            parse_points(&std::env::var(super::ENV).unwrap_or_default())
                .unwrap_or_else(|e| panic!("{}: {e}", super::ENV))
        })
    }

    pub(super) fn parse_points(text: &str) -> std::result::Result<BTreeMap<String, Action>, String> {
        let mut out = BTreeMap::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, action) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not name=action"))?;
            let name = name.trim();
            if !super::POINTS.iter().any(|(n, _)| *n == name) {
                return Err(format!(
                    "no fail point {name:?}; the points are {}",
                    known(super::POINTS)
                ));
            }
            let action = match action.trim() {
                "error" => Action::Error,
                "pause" => Action::Pause,
                other => return Err(format!("no action {other:?} for {name}; the actions are error, pause")),
            };
            out.insert(name.to_string(), action);
        }
        Ok(out)
    }

    /// The active sabotage switches; an unknown one stops the process.
    fn switches() -> &'static BTreeSet<String> {
        static SWITCHES: OnceLock<BTreeSet<String>> = OnceLock::new();
        SWITCHES.get_or_init(|| {
            parse_switches(&std::env::var(super::SABOTAGE_ENV).unwrap_or_default())
                .unwrap_or_else(|e| panic!("{}: {e}", super::SABOTAGE_ENV))
        })
    }

    pub(super) fn parse_switches(text: &str) -> std::result::Result<BTreeSet<String>, String> {
        let mut out = BTreeSet::new();
        for name in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let name = name.strip_prefix("sabotage.").unwrap_or(name);
            if !super::SWITCHES.iter().any(|(n, _)| *n == name) {
                return Err(format!(
                    "no sabotage switch {name:?}; the switches are {}",
                    known(super::SWITCHES)
                ));
            }
            out.insert(name.to_string());
        }
        Ok(out)
    }

    // The lines printed here are the protocol with the test that set the
    // point or switch, on stderr whatever logging is configured.
    #[allow(clippy::disallowed_macros)]
    pub(super) async fn hit(name: &str) -> Result<()> {
        assert!(
            super::POINTS.iter().any(|(n, _)| *n == name),
            "the code names fail point {name:?}, which is not in failpoint::POINTS"
        );
        match points().get(name) {
            None => Ok(()),
            Some(Action::Error) => {
                eprintln!("sf-failpoint: hit {name}");
                Err(Error::store(
                    "fail point",
                    name.to_string(),
                    object_store::Error::Generic {
                        store: "fail point",
                        source: format!("injected failure at fail point {name}").into(),
                    },
                ))
            }
            Some(Action::Pause) => {
                eprintln!("sf-failpoint: paused at {name}");
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                }
            }
        }
    }

    #[allow(clippy::disallowed_macros)]
    pub(super) fn sabotaged(name: &str) -> bool {
        assert!(
            super::SWITCHES.iter().any(|(n, _)| *n == name),
            "the code names sabotage switch {name:?}, which is not in failpoint::SWITCHES"
        );
        if !switches().contains(name) {
            return false;
        }
        static TOLD: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
        if crate::sync::lock(&TOLD).insert(name.to_string()) {
            eprintln!("sf-sabotage: {name}");
        }
        true
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn unknown_points_actions_and_switches_are_refused() {
            assert_eq!(
                parse_points(" claim=error , swap=pause ").unwrap(),
                BTreeMap::from([
                    ("claim".to_string(), Action::Error),
                    ("swap".to_string(), Action::Pause)
                ])
            );
            assert!(parse_points("").unwrap().is_empty());
            let e = parse_points("clam=error").unwrap_err();
            assert!(e.contains("no fail point \"clam\"") && e.contains("claim"), "{e}");
            let e = parse_points("claim=crash").unwrap_err();
            assert!(e.contains("no action \"crash\""), "{e}");
            let e = parse_points("claim").unwrap_err();
            assert!(e.contains("not name=action"), "{e}");
            assert_eq!(
                parse_switches("sabotage.skip-gates,keep-losers").unwrap(),
                BTreeSet::from(["keep-losers".to_string(), "skip-gates".to_string()])
            );
            let e = parse_switches("skip-everything").unwrap_err();
            assert!(e.contains("no sabotage switch"), "{e}");
        }
    }
}
