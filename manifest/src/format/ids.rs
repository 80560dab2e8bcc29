//! Newtypes for the identifiers of the format, and its timestamps.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Identity of one build run; part of every path the run writes.
///
/// Letters, digits, `-`, `_` and `.` only (it is embedded in object keys such
/// as `shards/run_id=R/` and `manifests/<ts>_run_id=R/`), at most 128 bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(String);

impl RunId {
    /// Validates `s` as a run id.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        if s.is_empty() || s.len() > 128 {
            return Err(Error::invalid("run_id", format!("{s:?} must be 1 to 128 characters")));
        }
        if s == "." || s == ".." {
            return Err(Error::invalid("run_id", format!("{s:?} is not allowed")));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(Error::invalid(
                "run_id",
                format!("{s:?} contains {c:?}; use letters, digits, '-', '_' or '.'"),
            ));
        }
        Ok(RunId(s))
    }

    /// A fresh random run id: 32 lowercase hex digits.
    pub fn generate() -> Self {
        RunId(unique_hex())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RunId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        RunId::new(s)
    }
}

impl Serialize for RunId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RunId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RunId::new(s).map_err(serde::de::Error::custom)
    }
}

/// Index of one shard database, `0..num_dbs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DbId(pub u32);

impl DbId {
    /// The id as an index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for DbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Number of one execution of a shard's write, unique within `(run, db)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Attempt(pub u32);

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A UTC instant, written as ISO-8601 with microseconds and `Z`
/// (`2026-11-20T23:48:07.694769Z`), the form every timestamp of the format uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// The current time, truncated to microseconds (the format's precision).
    ///
    /// Every read of the wall clock in the project goes through here (the
    /// workspace's `clippy.toml` refuses the others), so a test that needs
    /// another "now" has one place to look.
    #[allow(clippy::disallowed_methods)]
    pub fn now() -> Self {
        Self::from_datetime(Utc::now())
    }

    /// Wraps a chrono time, truncated to microseconds.
    pub fn from_datetime(t: DateTime<Utc>) -> Self {
        let micros = t.timestamp_micros();
        Timestamp(DateTime::from_timestamp_micros(micros).expect("micros of a valid time are valid"))
    }

    /// From microseconds since the Unix epoch.
    pub fn from_micros(micros: i64) -> Option<Self> {
        DateTime::from_timestamp_micros(micros).map(Timestamp)
    }

    /// Microseconds since the Unix epoch.
    pub fn as_micros(&self) -> i64 {
        self.0.timestamp_micros()
    }

    /// The chrono value.
    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// `2026-11-20T23:48:07.694769Z`
    pub fn to_iso(&self) -> String {
        self.0.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }

    /// `2026-11-20T23:48:07.694769+00:00`, the form Python's `isoformat()` prints.
    pub fn to_rfc3339_offset(&self) -> String {
        self.0.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
    }

    /// Parses the format's timestamps; also accepts an explicit offset and
    /// fewer fractional digits, as other writers may produce.
    pub fn parse(s: &str) -> Result<Self> {
        if let Some(body) = s.strip_suffix('Z')
            && let Ok(t) = NaiveDateTime::parse_from_str(body, "%Y-%m-%dT%H:%M:%S%.f")
        {
            return Ok(Self::from_datetime(t.and_utc()));
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| Self::from_datetime(t.with_timezone(&Utc)))
            .map_err(|e| Error::invalid("timestamp", format!("{s:?} is not an ISO-8601 UTC time: {e}")))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_iso())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_iso())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// 32 random lowercase hex digits: run ids, run-record names, temporary
/// file names. The one place the project makes random ids (the
/// workspace's `clippy.toml` refuses the others).
#[allow(clippy::disallowed_methods)]
pub fn unique_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A random 64-bit number, for jitter; not for ids that must be unique
/// (use [`unique_hex`]).
#[allow(clippy::disallowed_methods)]
pub fn random_u64() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

/// The wall clock as a `SystemTime`, for comparing with file times (see
/// [`Timestamp::now`]).
#[allow(clippy::disallowed_methods)]
pub fn system_now() -> std::time::SystemTime {
    std::time::SystemTime::now()
}

/// Milliseconds since the Unix epoch, now (see [`Timestamp::now`]).
pub fn unix_millis() -> u64 {
    u64::try_from(Timestamp::now().as_micros() / 1000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_rules() {
        assert!(RunId::new("goldenrun0005").is_ok());
        assert!(RunId::new("a.b-c_d").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "ü"] {
            let err = RunId::new(bad).expect_err(bad).to_string();
            assert!(err.contains("run_id"), "{err}");
        }
        assert_eq!(RunId::generate().as_str().len(), 32);
    }

    #[test]
    fn timestamps_round_trip_in_the_format() {
        let t = Timestamp::parse("2026-11-20T23:48:07.694769Z").expect("parse");
        assert_eq!(t.to_iso(), "2026-11-20T23:48:07.694769Z");
        assert_eq!(t.to_rfc3339_offset(), "2026-11-20T23:48:07.694769+00:00");
        let t2 = Timestamp::parse("2026-11-20T23:48:07.694769+00:00").expect("offset form");
        assert_eq!(t, t2);
        let t3 = Timestamp::parse("2026-11-20T23:48:07Z").expect("no fraction");
        assert_eq!(t3.to_iso(), "2026-11-20T23:48:07.000000Z");
        assert!(Timestamp::parse("yesterday").is_err());
        assert_eq!(Timestamp::from_micros(t.as_micros()), Some(t));
    }
}
