//! Human-friendly units in `gateway.toml`: durations like `"30s"`, `"15m"`, `"7d"`.
//!
//! Each unit type implements `Deserialize` itself, so a bad value is reported
//! by toml at the exact span of the value (`FILE:LINE:COL`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer};

/// A duration written as a number followed by `ms`, `s`, `m`, `h` or `d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
}

/// Ten years: longer durations overflow `Instant` arithmetic in timers.
const MAX_SECS: u64 = 3650 * 86_400;

/// Parses `"250ms"`, `"30s"`, `"15m"`, `"12h"`, `"7d"`.
///
/// # Errors
/// A message naming the accepted forms when `s` is none of them.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration `{s}` needs a unit: ms, s, m, h or d (e.g. \"30s\")"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration `{s}` must start with a whole number (e.g. \"30s\")"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .filter(|secs| *secs <= MAX_SECS)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration `{s}` is too large (at most 3650d)"))
    };
    match unit {
        "ms" if n <= MAX_SECS * 1000 => Ok(Duration::from_millis(n)),
        "ms" => Err(format!("duration `{s}` is too large (at most 3650d)")),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!(
            "duration `{s}` has unknown unit `{unit}`: use ms, s, m, h or d"
        )),
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"30s\", \"15m\" or \"7d\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
    }

    #[test]
    fn rejects_missing_or_unknown_units() {
        assert!(parse_duration("30").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
