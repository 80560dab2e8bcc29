//! The audit log: one info line per use of an admin route (rollback),
//! done or refused, with this module's path, `sf_server::audit`, as its
//! target, so a log filter can keep these lines alone
//! (`warn,sf_server::audit=info`). A line names the action, the snapshot,
//! the outcome (`ok`, or the error's kind) and the caller by its token's
//! fingerprint (`sha256:` and 12 hex digits), never by the token.

use crate::auth::Caller;

/// The log target of the audit lines.
pub const TARGET: &str = module_path!();

/// Logs one admin action of `caller` on `snapshot`.
pub(crate) fn admin_action(action: &str, snapshot: &str, caller: &Caller, outcome: &str) {
    tracing::info!(
        target: TARGET,
        action = %action,
        snapshot = %snapshot,
        token = %caller.name(),
        outcome = %outcome,
        "admin action"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_target_is_the_documented_one() {
        assert_eq!(super::TARGET, "sf_server::audit");
    }
}
