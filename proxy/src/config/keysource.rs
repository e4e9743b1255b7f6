//! Sticky-key sources as written in `routes[].sticky_key`: `query:NAME`,
//! `header:NAME` or `cookie:NAME`. Pure; `routing::sticky` does the
//! extraction.

use http::header::HeaderName;

/// Where a sticky key may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Query(String),
    Header(HeaderName),
    Cookie(String),
}

impl KeySource {
    /// Parses `query:NAME`, `header:NAME` or `cookie:NAME`.
    pub fn parse(text: &str) -> Result<KeySource, String> {
        let (kind, name) = text
            .split_once(':')
            .ok_or_else(|| format!("`{text}` must be query:NAME, header:NAME or cookie:NAME"))?;
        if name.is_empty() {
            return Err(format!("`{text}` has an empty name"));
        }
        match kind {
            "query" => Ok(KeySource::Query(name.to_string())),
            "cookie" => Ok(KeySource::Cookie(name.to_string())),
            "header" => HeaderName::from_bytes(name.as_bytes())
                .map(KeySource::Header)
                .map_err(|_| format!("`{name}` is not a valid header name")),
            _ => Err(format!(
                "unknown source `{kind}` in `{text}`; use query, header or cookie"
            )),
        }
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Query(n) => write!(f, "query:{n}"),
            KeySource::Header(n) => write!(f, "header:{n}"),
            KeySource::Cookie(n) => write!(f, "cookie:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sources() {
        assert_eq!(
            KeySource::parse("query:user"),
            Ok(KeySource::Query("user".into()))
        );
        assert!(KeySource::parse("query:").is_err());
        assert!(KeySource::parse("body:x").is_err());
        assert!(KeySource::parse("header:bad header").is_err());
        assert!(KeySource::parse("user").is_err());
        assert_eq!(
            KeySource::parse("cookie:sid").unwrap().to_string(),
            "cookie:sid"
        );
    }
}
