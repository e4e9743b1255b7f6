//! Parsers for command-line values: durations (`500ms`, `10s`, `2m`; the
//! rule itself is the workspace's `wsgate-units` crate) and lists of source
//! addresses (`127.0.0.2-127.0.0.40,127.0.1.1`).
//!
//! Pure functions, so clap can use them as value parsers and tests can pin
//! them down.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use wsgate_units::DurationSyntax;

/// Most addresses one `--source-ips` range may expand to.
const MAX_RANGE: u32 = 65_536;

/// Parses `250ms`, `1.5s`, `2m`, `1h` or a bare number of seconds: the
/// workspace's duration rule (`wsgate-units`) with bare seconds and decimal
/// fractions allowed.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    DurationSyntax::STRICT
        .bare_seconds()
        .fractions()
        .parse(text)
}

/// Source addresses to bind, in the order connections use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIps(pub Vec<IpAddr>);

/// Parses a comma-separated list of addresses and inclusive IPv4 ranges
/// (`A-B`). Connections take source addresses round-robin from the result.
pub fn parse_source_ips(text: &str) -> Result<SourceIps, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            None => out.push(
                part.parse::<IpAddr>()
                    .map_err(|e| format!("`{part}`: {e}"))?,
            ),
            Some((from, to)) => {
                let v4 = |s: &str| {
                    s.trim()
                        .parse::<Ipv4Addr>()
                        .map(u32::from)
                        .map_err(|e| format!("`{s}` in range `{part}`: {e} (ranges are IPv4 only)"))
                };
                let (from, to) = (v4(from)?, v4(to)?);
                if to < from || to - from >= MAX_RANGE {
                    return Err(format!(
                        "range `{part}` must go upwards and hold at most {MAX_RANGE} addresses"
                    ));
                }
                out.extend((from..=to).map(|a| IpAddr::V4(Ipv4Addr::from(a))));
            }
        }
    }
    if out.is_empty() {
        return Err("no source address given".into());
    }
    Ok(SourceIps(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ips() {
        let ips = parse_source_ips("127.0.0.2-127.0.0.4, 127.0.1.1")
            .unwrap()
            .0;
        let want: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.1.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(ips, want);
        // A range may cross an octet boundary.
        assert_eq!(
            parse_source_ips("127.0.0.255-127.0.1.0").unwrap().0.len(),
            2
        );
        assert_eq!(parse_source_ips("::1").unwrap().0.len(), 1);
        assert!(parse_source_ips("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_source_ips("10.0.0.0-10.255.255.255").is_err());
        assert!(parse_source_ips("").is_err());
        assert!(parse_source_ips("localhost").is_err());
    }
}
