//! Validation gates: checks a finished build must pass before anything
//! becomes visible (`[validate]` in the job file).
//!
//! They run after every shard is written and verified and before the
//! manifest is written, so a build that fails one leaves no new manifest
//! in the history and `_CURRENT` where it was. Each gate is `"fail"` (the
//! default: exit 6, naming the gate, the measured value and the limit) or
//! `"warn"` (published, the warning in the report); `--force` publishes
//! whatever the gates say and records which ones it overrode.
//!
//! | gate | measures | against |
//! |---|---|---|
//! | `min_rows` (default 1) | rows in the build | a floor |
//! | `max_row_change` | `|rows - previous| / previous` | the snapshot `_CURRENT` names (skipped on a first publish) |
//! | `max_byte_change` | the same over shard file bytes (SQLite; SlateDB records none) | likewise |
//! | `max_shard_skew` | largest shard's rows over the median shard's (the lower median for an even count; empty shards count) | a ceiling |
//! | `max_shard_bytes` | the largest shard file | a ceiling |
//! | `compatible` | key encoding, routing (strategy, expression, columns, values, `num_dbs`) and a table's schema equal to the current snapshot's | unless `allow_resharding` |
//!
//! Checks that need more than the writer has (keys read back through the
//! online reader from the new shards, say) are installed by the caller as
//! [`PublishCheck`]s and run with these gates.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sf_manifest::{Manifest, ObjectManifestStore, publish::failpoint};

use crate::error::Result;
use crate::publish::verdict::{GateResult, Verdict};

/// What a gate does when its check fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFail {
    /// Nothing is published (exit 6).
    #[default]
    Fail,
    /// Published anyway; the warning is reported.
    Warn,
}

/// A gate's limit: a bare value (`max_row_change = 0.2`), or with its
/// failure mode (`max_row_change = { limit = 0.2, on_fail = "warn" }`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Limit<T> {
    /// Just the limit; failing it fails the build.
    Value(T),
    /// The limit and what a failure does.
    With {
        /// The limit.
        limit: T,
        /// `fail` (default) or `warn`.
        #[serde(default)]
        on_fail: OnFail,
    },
}

/// The values a [`Limit`] of this type takes, as an error says them.
pub trait LimitValue {
    /// What a bare limit must be, with an example.
    const EXPECTED: &'static str;
}

impl LimitValue for u64 {
    const EXPECTED: &'static str = "a whole number (e.g. 2000000000; no fraction, exponent or unit)";
}

impl LimitValue for f64 {
    const EXPECTED: &'static str = "a number (e.g. 0.2)";
}

/// [`Limit`] as it is written, before a value that fits neither form gets
/// an error saying what fits.
#[derive(Deserialize)]
#[serde(untagged)]
enum LimitForm<T> {
    Value(T),
    With {
        limit: T,
        #[serde(default)]
        on_fail: OnFail,
    },
}

impl<'de, T: Deserialize<'de> + LimitValue> Deserialize<'de> for Limit<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match LimitForm::<T>::deserialize(d) {
            Ok(LimitForm::Value(v)) => Ok(Limit::Value(v)),
            Ok(LimitForm::With { limit, on_fail }) => Ok(Limit::With { limit, on_fail }),
            Err(_) => Err(serde::de::Error::custom(format!(
                "expected {}, or {{ limit = <that>, on_fail = \"fail\" | \"warn\" }}",
                T::EXPECTED
            ))),
        }
    }
}

impl<T: Copy> Limit<T> {
    /// The limit.
    pub fn limit(&self) -> T {
        match self {
            Limit::Value(v) | Limit::With { limit: v, .. } => *v,
        }
    }

    /// What a failure does.
    pub fn on_fail(&self) -> OnFail {
        match self {
            Limit::Value(_) => OnFail::Fail,
            Limit::With { on_fail, .. } => *on_fail,
        }
    }
}

/// `[validate]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateConfig {
    /// Fewest rows a build may publish (default 1: an empty build is never
    /// published unless this is 0).
    pub min_rows: Limit<u64>,
    /// Largest change of the row count against the current snapshot, as a
    /// fraction (0.2: at most 20% more or fewer rows).
    pub max_row_change: Option<Limit<f64>>,
    /// Largest change of the shard bytes against the current snapshot.
    pub max_byte_change: Option<Limit<f64>>,
    /// Largest ratio of the largest shard's rows to the median shard's.
    pub max_shard_skew: Option<Limit<f64>>,
    /// Largest shard file, in bytes.
    pub max_shard_bytes: Option<Limit<u64>>,
    /// Key encoding, routing and (for tables) schema must equal the
    /// current snapshot's: `"fail"` or `"warn"`; off when absent.
    pub compatible: Option<OnFail>,
    /// Lets a build change routing or key encoding although `compatible`
    /// is set (a deliberate reshard).
    pub allow_resharding: bool,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        ValidateConfig {
            min_rows: Limit::Value(1),
            max_row_change: None,
            max_byte_change: None,
            max_shard_skew: None,
            max_shard_bytes: None,
            compatible: None,
            allow_resharding: false,
        }
    }
}

impl ValidateConfig {
    /// Checks the limits make sense.
    pub fn validate(&self) -> Result<()> {
        let fraction = |name: &str, l: &Option<Limit<f64>>| -> Result<()> {
            match l {
                Some(l) if !(l.limit() >= 0.0 && l.limit().is_finite()) => Err(crate::Error::config(
                    format!("validate.{name}"),
                    format!("{} is not a fraction >= 0 (0.2 means 20%)", l.limit()),
                )),
                _ => Ok(()),
            }
        };
        fraction("max_row_change", &self.max_row_change)?;
        fraction("max_byte_change", &self.max_byte_change)?;
        if let Some(l) = &self.max_shard_skew
            && !(l.limit() >= 1.0 && l.limit().is_finite())
        {
            return Err(crate::Error::config(
                "validate.max_shard_skew",
                format!("{} is not a ratio >= 1 (largest shard over the median)", l.limit()),
            ));
        }
        Ok(())
    }
}

/// A check that needs more than the writer has (the canary reads through
/// the online reader): installed by the caller, run with the gates.
#[async_trait]
pub trait PublishCheck: Send + Sync + fmt::Debug {
    /// The gates this check decides, evaluated on `manifest` before it is
    /// published (its shards are written and verified, under `store`).
    async fn check(&self, manifest: &Manifest, store: &ObjectManifestStore) -> Result<Vec<GateResult>>;
}

fn verdict(passed: bool, on_fail: OnFail) -> Verdict {
    match (passed, on_fail) {
        (true, _) => Verdict::Pass,
        (false, OnFail::Fail) => Verdict::Fail,
        (false, OnFail::Warn) => Verdict::Warn,
    }
}

/// A gate failing or warning for `passed`, measured as `value` against `limit`.
pub fn measured(
    gate: &str,
    value: impl fmt::Display,
    limit: impl fmt::Display,
    passed: bool,
    on_fail: OnFail,
    detail: impl Into<String>,
) -> GateResult {
    GateResult {
        gate: gate.to_string(),
        value: value.to_string(),
        limit: limit.to_string(),
        verdict: verdict(passed || failpoint::sabotaged("skip-gates"), on_fail),
        detail: detail.into(),
    }
}

fn skipped(gate: &str, limit: impl fmt::Display, why: &str) -> GateResult {
    GateResult {
        gate: gate.to_string(),
        value: "-".into(),
        limit: limit.to_string(),
        verdict: Verdict::Skipped,
        detail: why.to_string(),
    }
}

fn change(new: u64, old: u64) -> f64 {
    (new as f64 - old as f64).abs() / old as f64
}

/// Evaluates the writer's own gates on `new` against `previous` (the
/// manifest `_CURRENT` names, if any). The canary is not among them (see
/// [`PublishCheck`]).
pub fn evaluate(config: &ValidateConfig, new: &Manifest, previous: Option<&Manifest>) -> Vec<GateResult> {
    let mut out = Vec::new();
    let rows: u64 = new.shards.iter().map(|s| s.row_count).sum();
    let bytes: u64 = new.shards.iter().map(|s| s.db_bytes).sum();
    let min = config.min_rows;
    out.push(measured(
        "min_rows",
        rows,
        min.limit(),
        rows >= min.limit(),
        min.on_fail(),
        if rows == 0 { "the input has no rows" } else { "" },
    ));
    let prev_ref = previous.map(|p| format!("run {}", p.build.run_id));
    if let Some(l) = config.max_row_change {
        out.push(match previous {
            None => skipped("max_row_change", l.limit(), "first publish: nothing to compare with"),
            Some(p) => {
                let old: u64 = p.shards.iter().map(|s| s.row_count).sum();
                if old == 0 {
                    skipped("max_row_change", l.limit(), "the current snapshot has no rows")
                } else {
                    let c = change(rows, old);
                    measured(
                        "max_row_change",
                        format!("{c:.4}"),
                        l.limit(),
                        c <= l.limit(),
                        l.on_fail(),
                        format!("{rows} rows against {old} in {}", prev_ref.clone().unwrap_or_default()),
                    )
                }
            }
        });
    }
    if let Some(l) = config.max_byte_change {
        out.push(match previous {
            None => skipped("max_byte_change", l.limit(), "first publish: nothing to compare with"),
            Some(p) => {
                let old: u64 = p.shards.iter().map(|s| s.db_bytes).sum();
                if old == 0 || bytes == 0 {
                    skipped(
                        "max_byte_change",
                        l.limit(),
                        "no shard bytes recorded to compare (SlateDB shards record none)",
                    )
                } else {
                    let c = change(bytes, old);
                    measured(
                        "max_byte_change",
                        format!("{c:.4}"),
                        l.limit(),
                        c <= l.limit(),
                        l.on_fail(),
                        format!(
                            "{bytes} bytes against {old} in {}",
                            prev_ref.clone().unwrap_or_default()
                        ),
                    )
                }
            }
        });
    }
    if let Some(l) = config.max_shard_skew {
        let mut per_shard = vec![0u64; new.build.num_dbs as usize];
        for s in &new.shards {
            if let Some(slot) = per_shard.get_mut(s.db_id.index()) {
                *slot = s.row_count;
            }
        }
        per_shard.sort_unstable();
        let max = per_shard.last().copied().unwrap_or(0);
        // The lower median for an even count: with two shards of 40 and
        // 10 rows the skew is 4, not 1.
        let median = per_shard
            .get(per_shard.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0);
        let skew = match (max, median) {
            (0, _) => 1.0,
            (_, 0) => f64::INFINITY,
            (m, d) => m as f64 / d as f64,
        };
        out.push(measured(
            "max_shard_skew",
            format!("{skew:.3}"),
            l.limit(),
            skew <= l.limit(),
            l.on_fail(),
            format!("largest shard {max} rows, median {median}"),
        ));
    }
    if let Some(l) = config.max_shard_bytes {
        let (db, largest) = new
            .shards
            .iter()
            .map(|s| (s.db_id.0, s.db_bytes))
            .max_by_key(|(_, b)| *b)
            .unwrap_or((0, 0));
        out.push(measured(
            "max_shard_bytes",
            largest,
            l.limit(),
            largest <= l.limit(),
            l.on_fail(),
            format!("shard {db}"),
        ));
    }
    if let Some(on_fail) = config.compatible {
        out.push(match previous {
            None => skipped("compatible", "equal", "first publish: nothing to compare with"),
            Some(p) => {
                let diffs = differences(new, p);
                let detail = if diffs.is_empty() {
                    String::new()
                } else {
                    format!("against {}: {}", prev_ref.unwrap_or_default(), diffs.join("; "))
                };
                let passed = diffs.is_empty() || config.allow_resharding;
                let mut r = measured(
                    "compatible",
                    if diffs.is_empty() { "equal" } else { "different" },
                    if config.allow_resharding {
                        "equal (resharding allowed)"
                    } else {
                        "equal"
                    },
                    passed,
                    on_fail,
                    detail,
                );
                if !diffs.is_empty() && config.allow_resharding {
                    r.detail.push_str(" (allow_resharding = true)");
                }
                r
            }
        });
    }
    out
}

/// What a reader of `previous` would see change in `new`: key encoding,
/// routing, and a table's schema.
fn differences(new: &Manifest, previous: &Manifest) -> Vec<String> {
    let (n, p) = (&new.build, &previous.build);
    let mut out = Vec::new();
    if n.key_encoding != p.key_encoding {
        out.push(format!("key encoding {} (was {})", n.key_encoding, p.key_encoding));
    }
    if n.num_dbs != p.num_dbs {
        out.push(format!("num_dbs {} (was {})", n.num_dbs, p.num_dbs));
    }
    if n.sharding != p.sharding {
        out.push(format!(
            "routing {} (was {})",
            n.sharding.to_json(),
            p.sharding.to_json()
        ));
    }
    let schema = |m: &Manifest| {
        m.build
            .custom
            .get("shardforge")
            .and_then(|s| s.get("table"))
            .and_then(|t| t.get("arrow_schema"))
            .cloned()
    };
    if schema(new) != schema(previous) {
        out.push("table schema changed".to_string());
    }
    out
}

/// The gates that stop the build: those failed and not overridden.
pub fn blocking(results: &[GateResult]) -> Vec<&GateResult> {
    results.iter().filter(|r| r.verdict == Verdict::Fail).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sf_manifest::{Attempt, BuildMeta, DbId, KeyEncoding, RunId, ShardRow, ShardingSpec, WriterInfo};

    fn manifest(run: &str, rows: &[u64], bytes: u64) -> Manifest {
        let build = BuildMeta::new(
            RunId::new(run).expect("run"),
            rows.len() as u32,
            "memory://g/p",
            "id",
            ShardingSpec::hash(),
            KeyEncoding::U64Be,
        );
        let shards = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| **r > 0)
            .map(|(i, r)| ShardRow {
                db_id: DbId(i as u32),
                db_url: Some(format!("memory://g/p/shards/run_id={run}/db={i:05}/attempt=00")),
                attempt: Attempt(0),
                row_count: *r,
                db_bytes: bytes,
                min_key: None,
                max_key: None,
                checkpoint_id: None,
                writer_info: WriterInfo::default(),
            })
            .collect();
        Manifest { build, shards }
    }

    fn find<'a>(r: &'a [GateResult], gate: &str) -> &'a GateResult {
        r.iter().find(|g| g.gate == gate).expect("gate evaluated")
    }

    #[test]
    fn min_rows_refuses_an_empty_build_by_default() {
        let r = evaluate(&ValidateConfig::default(), &manifest("n", &[0, 0], 0), None);
        let g = find(&r, "min_rows");
        assert_eq!(g.verdict, Verdict::Fail);
        assert_eq!((g.value.as_str(), g.limit.as_str()), ("0", "1"));
        assert!(g.to_string().contains("the input has no rows"), "{g}");
        let zero = ValidateConfig {
            min_rows: Limit::Value(0),
            ..ValidateConfig::default()
        };
        assert_eq!(
            find(&evaluate(&zero, &manifest("n", &[0], 0), None), "min_rows").verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn changes_skew_and_sizes_are_measured_against_their_limits() {
        let config = ValidateConfig {
            max_row_change: Some(Limit::Value(0.2)),
            max_byte_change: Some(Limit::With {
                limit: 0.1,
                on_fail: OnFail::Warn,
            }),
            max_shard_skew: Some(Limit::Value(3.0)),
            max_shard_bytes: Some(Limit::Value(1000)),
            compatible: Some(OnFail::Fail),
            ..ValidateConfig::default()
        };
        let old = manifest("old", &[50, 50], 400);
        let new = manifest("new", &[40, 10], 600);
        let r = evaluate(&config, &new, Some(&old));
        let rows = find(&r, "max_row_change");
        assert_eq!((rows.verdict, rows.value.as_str()), (Verdict::Fail, "0.5000"));
        assert!(rows.detail.contains("50 rows against 100 in run old"), "{rows}");
        assert_eq!(find(&r, "max_byte_change").verdict, Verdict::Warn);
        let skew = find(&r, "max_shard_skew");
        assert_eq!((skew.verdict, skew.value.as_str()), (Verdict::Fail, "4.000"));
        assert_eq!(find(&r, "max_shard_bytes").verdict, Verdict::Pass);
        assert_eq!(find(&r, "compatible").verdict, Verdict::Pass);
        assert_eq!(blocking(&r).len(), 2);

        // First publish: comparisons are skipped, not failed.
        let first = evaluate(&config, &new, None);
        assert_eq!(find(&first, "max_row_change").verdict, Verdict::Skipped);
        assert_eq!(find(&first, "compatible").verdict, Verdict::Skipped);
    }

    #[test]
    fn a_reshard_is_incompatible_unless_allowed() {
        let config = ValidateConfig {
            compatible: Some(OnFail::Fail),
            ..ValidateConfig::default()
        };
        let old = manifest("old", &[5, 5], 1);
        let new = manifest("new", &[3, 3, 4], 1);
        let g = find(&evaluate(&config, &new, Some(&old)), "compatible").clone();
        assert_eq!(g.verdict, Verdict::Fail);
        assert!(g.detail.contains("num_dbs 3 (was 2)"), "{g}");
        let allowed = ValidateConfig {
            allow_resharding: true,
            ..config
        };
        assert_eq!(
            find(&evaluate(&allowed, &new, Some(&old)), "compatible").verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn limits_parse_bare_or_with_their_mode() {
        let c: ValidateConfig = toml::from_str(
            "min_rows = 10\nmax_row_change = { limit = 0.2, on_fail = \"warn\" }\ncompatible = \"fail\"\n",
        )
        .expect("parse");
        assert_eq!(c.min_rows, Limit::Value(10));
        assert_eq!(c.max_row_change.map(|l| l.on_fail()), Some(OnFail::Warn));
        assert_eq!(c.compatible, Some(OnFail::Fail));
        assert!(toml::from_str::<ValidateConfig>("min_rowz = 1").is_err());
        let bad = ValidateConfig {
            max_row_change: Some(Limit::Value(-1.0)),
            ..ValidateConfig::default()
        };
        assert!(
            bad.validate()
                .expect_err("negative")
                .to_string()
                .contains("max_row_change")
        );
    }
}
