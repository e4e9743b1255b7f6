//! Host-name patterns, as written in `routes[].host` and in a certificate's
//! `server_names`: an exact name or `*.suffix`. Pure.

/// How a route or certificate matches the request's host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// No `host:` given: every host.
    Any,
    /// Exact host name, lower-case.
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (one or more labels),
    /// but not `example.com` itself. Stored as `.example.com`.
    Suffix(String),
}

impl HostMatch {
    pub fn parse(pattern: &str) -> Result<HostMatch, String> {
        let p = pattern.trim().to_ascii_lowercase();
        if p.is_empty() || p == "*" {
            return Ok(HostMatch::Any);
        }
        let (name, suffix) = match p.strip_prefix("*.") {
            Some(rest) => (rest.to_string(), true),
            None => (p.clone(), false),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if name.split('.').all(valid_label) {
            Ok(if suffix {
                HostMatch::Suffix(format!(".{name}"))
            } else {
                HostMatch::Exact(name)
            })
        } else {
            Err(format!(
                "`{pattern}` is not a host name or *.suffix pattern"
            ))
        }
    }

    /// `host` must already be lower-case and without a port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// As the config file writes it: `*` for any host, `*.example.com`, or the name.
impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Any => f.write_str("*"),
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displayed_as_written() {
        for p in ["*", "*.example.com", "api.example.com"] {
            assert_eq!(HostMatch::parse(p).unwrap().to_string(), p);
        }
        assert_eq!(HostMatch::parse("").unwrap().to_string(), "*");
    }

    #[test]
    fn host_patterns() {
        assert_eq!(HostMatch::parse(""), Ok(HostMatch::Any));
        assert_eq!(
            HostMatch::parse("Chat.Example.com"),
            Ok(HostMatch::Exact("chat.example.com".into()))
        );
        let w = HostMatch::parse("*.example.com").unwrap();
        assert!(w.matches("a.example.com"));
        assert!(w.matches("a.b.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("badexample.com"));
        assert!(HostMatch::parse("a..b").is_err());
        assert!(HostMatch::parse("*.").is_err());
        assert!(HostMatch::parse("a/b").is_err());
    }
}
