//! The one rule for writing a duration, shared by the workspace's three
//! binaries: `wsgate` (config file, admin API and CLI), `chat-backend`
//! (flags) and `wsgate-bench` (flags).
//!
//! A duration is a number, optional spaces, and a unit: `ms`, `s`, `m` or
//! `h`. [`parse_duration`] is the strict form (a whole number and a unit,
//! what the proxy's config file takes); [`DurationSyntax`] switches on the
//! two extensions the command-line tools document: a bare number meaning
//! seconds, and a decimal fraction. Errors name the offending text and say
//! how to write it instead.
//!
//! This is its own crate rather than a module of the proxy so that
//! `chat-backend` and `wsgate-bench` can share it without depending on the
//! proxy (and so on pingora). It has no dependencies.

#![forbid(unsafe_code)]

use std::time::Duration;

/// Which forms of a duration are accepted besides `<whole number><unit>`.
///
/// ```
/// use std::time::Duration;
/// use wsgate_units::DurationSyntax;
///
/// let cli = DurationSyntax::STRICT.bare_seconds().fractions();
/// assert_eq!(cli.parse("1.5s"), Ok(Duration::from_millis(1500)));
/// assert_eq!(cli.parse("10"), Ok(Duration::from_secs(10)));
/// assert!(DurationSyntax::STRICT.parse("10").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DurationSyntax {
    /// A number without a unit is seconds (`10` is `10s`). When off, a
    /// missing unit is an error that says to add one.
    pub bare_seconds: bool,
    /// The number may have a decimal fraction (`1.5s`, `0.25m`, `.5h`).
    /// When off, it must be a whole number. Digits finer than a nanosecond
    /// are dropped.
    pub fractions: bool,
}

impl DurationSyntax {
    /// `<whole number><unit>` only: `500ms`, `10s`, `15m`, `2h`.
    pub const STRICT: Self = Self {
        bare_seconds: false,
        fractions: false,
    };

    /// The same syntax, also reading a bare number as seconds.
    pub const fn bare_seconds(self) -> Self {
        Self {
            bare_seconds: true,
            ..self
        }
    }

    /// The same syntax, also accepting a decimal fraction.
    pub const fn fractions(self) -> Self {
        Self {
            fractions: true,
            ..self
        }
    }

    /// Parses `text` (surrounding whitespace ignored) under this syntax.
    /// A duration too long for [`Duration`] is an error, not a saturation.
    pub fn parse(self, text: &str) -> Result<Duration, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty duration; write e.g. `10s`, `500ms`, `15m`".into());
        }
        let end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(end);
        let unit = unit.trim_start();
        let (whole, fraction) = match number.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (number, None),
        };
        if whole.is_empty() && fraction.is_none_or(str::is_empty) {
            let what = if self.fractions {
                "number"
            } else {
                "whole number"
            };
            return Err(format!("`{text}` does not start with a {what}"));
        }
        if let Some(fraction) = fraction {
            if !self.fractions {
                return Err(format!(
                    "`{text}` is not a whole number; use a smaller unit, e.g. `1500ms` for 1.5s"
                ));
            }
            if fraction.contains('.') {
                return Err(format!("`{text}` has more than one decimal point"));
            }
        }
        let nanos_per_unit: u128 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "" if self.bare_seconds => 1_000_000_000,
            "" => {
                return Err(format!(
                    "`{text}` has no unit; write e.g. `10s`, `500ms`, `15m`"
                ))
            }
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "unknown unit `{unit}` in `{text}`; use ms, s, m or h"
                ))
            }
        };
        let too_long = || format!("`{text}` is too long");
        // Only digits are left in `whole` and `fraction`, so parsing fails
        // only by overflow. u64 whole units times at most 3.6e12 ns fit u128.
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse::<u64>().map_err(|_| too_long())?.into()
        };
        let mut nanos = whole * nanos_per_unit;
        if let Some(fraction) = fraction.filter(|f| !f.is_empty()) {
            // 18 digits reach below a nanosecond of an hour (3.6e12 ns) and
            // keep `digits * nanos_per_unit` inside u128.
            let kept = &fraction[..fraction.len().min(18)];
            let digits: u128 = kept.parse::<u64>().map_err(|_| too_long())?.into();
            nanos += digits * nanos_per_unit / 10u128.pow(kept.len() as u32);
        }
        let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_long())?;
        Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
    }
}

/// Parses `<whole number><unit>` with unit one of `ms`, `s`, `m`, `h`
/// ([`DurationSyntax::STRICT`]): `500ms`, `10s`, `15m`, `2h`. A missing
/// unit is an error.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    DurationSyntax::STRICT.parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy's config file and CLI (moved from
    /// proxy/src/config/units.rs).
    #[test]
    fn strict() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10d").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1.5s").is_err());
    }

    /// chat-backend's flags (moved from backend-example/src/config.rs).
    #[test]
    fn bare_seconds() {
        let parse = |t| DurationSyntax::STRICT.bare_seconds().parse(t);
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("25s"), Ok(Duration::from_secs(25)));
        assert_eq!(parse("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse("1d").is_err());
        assert!(parse("s").is_err());
        assert!(parse("99999999999999999999h").is_err());
        assert!(parse("1.5s").is_err());
    }

    /// wsgate-bench's flags (moved from bench/src/units.rs).
    #[test]
    fn bare_seconds_and_fractions() {
        let parse = |t| DurationSyntax::STRICT.bare_seconds().fractions().parse(t);
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert!(parse("ten").is_err());
        assert!(parse("5 weeks").is_err());
        assert!(parse("-1s").is_err());
        assert_eq!(parse("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse(".25m"), Ok(Duration::from_secs(15)));
        assert_eq!(parse("1."), Ok(Duration::from_secs(1)));
        assert_eq!(parse("1.5ms"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse("0.0000000015s"), Ok(Duration::from_nanos(1)));
        assert!(parse(".").is_err());
        assert!(parse("1.2.3s").is_err());
    }

    #[test]
    fn shared_edges() {
        let all = [
            DurationSyntax::STRICT,
            DurationSyntax::STRICT.bare_seconds(),
            DurationSyntax::STRICT.bare_seconds().fractions(),
        ];
        for syntax in all {
            assert_eq!(syntax.parse(" 10 s "), Ok(Duration::from_secs(10)));
            assert_eq!(syntax.parse("0ms"), Ok(Duration::ZERO));
            assert!(syntax.parse("").is_err());
            assert!(syntax.parse("10 s x").is_err());
            // Too long for a Duration is an error, not a saturation.
            assert!(syntax.parse("18446744073709551615h").is_err());
            assert_eq!(
                syntax.parse("18446744073709551615s"),
                Ok(Duration::from_secs(u64::MAX))
            );
        }
    }

    #[test]
    fn errors_say_how_to_fix() {
        let no_unit = parse_duration("10").unwrap_err();
        assert!(no_unit.contains("`10s`"), "{no_unit}");
        let bad_unit = parse_duration("10d").unwrap_err();
        assert!(bad_unit.contains("use ms, s, m or h"), "{bad_unit}");
        let fraction = parse_duration("1.5s").unwrap_err();
        assert!(fraction.contains("1500ms"), "{fraction}");
    }
}
