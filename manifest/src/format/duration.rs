//! Durations as people type them: `500ms`, `30s`, `5m`, `2h`, `7d`,
//! `1h30m`. Used by settings (reader intervals, storage retries, retention)
//! and by the programs (`--older-than`, `--max-age`).

use std::time::Duration;

use crate::error::{Error, Result};

const UNITS: [(&str, u64); 6] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
    ("w", 7 * 86_400_000),
];

/// Parses `1h30m`, `90s`, `250ms`, `7d`, `2w`. A bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let bad = |why: &str| Error::invalid("duration", format!("{text:?} {why}; use e.g. 30s, 5m, 2h, 7d, 1h30m"));
    let t = text.trim();
    if t.is_empty() {
        return Err(bad("is empty"));
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total_ms: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("is not a duration"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad("has a number out of range"))?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, ms)| *ms)
            .ok_or_else(|| bad("has an unknown unit"))?;
        total_ms = n
            .checked_mul(ms)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(|| bad("is too long"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// The shortest text [`parse_duration`] reads back as `d` (to the millisecond).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in UNITS.iter().take(5) {
        if ms >= *size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// Serde for a `Duration` as text (`"30s"`).
pub mod serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `d` as text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    /// Reads a duration from text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde for an `Option<Duration>` as text or null.
pub mod option_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `d` as text, or null.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads a duration from text, or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => super::parse_duration(&text).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        for (text, ms) in [
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("7d", 604_800_000),
            ("2w", 1_209_600_000),
            ("250ms", 250),
            ("45", 45_000),
            ("1d2h3m4s5ms", 93_784_005),
        ] {
            let d = parse_duration(text).expect(text);
            assert_eq!(d.as_millis() as u64, ms, "{text}");
            assert_eq!(parse_duration(&format_duration(d)).expect("round trip"), d);
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        for bad in ["", "abc", "5y", "h5", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
