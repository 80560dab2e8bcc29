//! How a validation gate came out: its [`Verdict`] and the measured
//! [`GateResult`] the report and a refused build's error show.
//!
//! Plain data with no dependency inside the crate, so that the error type
//! can carry gate results without depending on the gates themselves.

use std::fmt;

use serde::Serialize;

/// How one gate came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Within its limit.
    Pass,
    /// Over its limit, set to warn: published.
    Warn,
    /// Over its limit: nothing published (unless forced).
    Fail,
    /// Over its limit, published because of `--force`.
    Forced,
    /// Not measured (nothing to compare with, e.g. a first publish).
    Skipped,
}

/// One gate's outcome: what was measured, against what, and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateResult {
    /// The gate (`min_rows`, `max_row_change`, ...).
    pub gate: String,
    /// What was measured, as text.
    pub value: String,
    /// The limit, as text.
    pub limit: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in words (what was compared with what).
    pub detail: String,
}

impl fmt::Display for GateResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (limit {}): {}",
            self.gate,
            self.value,
            self.limit,
            match self.verdict {
                Verdict::Pass => "passed",
                Verdict::Warn => "over the limit, warned",
                Verdict::Fail => "FAILED",
                Verdict::Forced => "over the limit, published because of --force",
                Verdict::Skipped => "skipped",
            }
        )?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}
