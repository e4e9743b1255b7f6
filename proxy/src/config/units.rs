//! Human units in the config file: durations (`500ms`, `10s`, `15m`, `1h`)
//! and byte sizes (`16384`, `16KiB`, `16MiB`). The duration parser lives in
//! the `wsgate-units` crate and is re-exported here; sizes are the config
//! file's own.

/// Durations follow the workspace's one rule (the `wsgate-units` crate, shared
/// with chat-backend and wsgate-bench) in its strict form: `<integer><unit>`
/// with unit one of `ms`, `s`, `m`, `h`; a missing unit is an error.
pub use wsgate_units::parse_duration;

/// Parses a byte size: a bare integer, or an integer with `B`, `KiB`, `MiB`
/// or `GiB` (powers of 1024; `KB`/`MB` are accepted as the same, since a
/// config file is no place to argue about SI prefixes).
pub fn parse_size(value: &serde_yaml_ng::Value) -> Result<u64, String> {
    match value {
        serde_yaml_ng::Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("`{n}` is not a whole number of bytes")),
        serde_yaml_ng::Value::String(s) => parse_size_str(s),
        other => Err(format!("expected a size such as 16KiB, found {other:?}")),
    }
}

fn parse_size_str(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        u => return Err(format!("unknown size unit `{u}`; use B, KiB, MiB or GiB")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let v = |s: &str| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(s).unwrap();
        assert_eq!(parse_size(&v("16384")), Ok(16384));
        assert_eq!(parse_size(&v("16KiB")), Ok(16384));
        assert_eq!(parse_size(&v("\"16 MiB\"")), Ok(16 << 20));
        assert!(parse_size(&v("-5")).is_err());
        assert!(parse_size(&v("12XB")).is_err());
        assert!(parse_size(&v("99999999999999999GiB")).is_err());
    }
}
