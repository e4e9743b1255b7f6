//! Which Redis the engine talks to, from `--redis-url`: one server
//! (`redis://…`, `rediss://…`, `unix://…`, handed to the Redis crate as is)
//! or a Redis Cluster, written `redis+cluster://[user:password@]host:port[,host:port…]`.
//! The cluster form lists seed nodes (any masters or replicas; the client
//! discovers the rest with `CLUSTER SLOTS`) and takes no path or query: a
//! cluster has only database 0. Pure parsing, no I/O.

/// Where rooms are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One Redis server: classic Pub/Sub, exactly as without cluster support.
    Single(String),
    /// Seed nodes of a Redis Cluster, each as a `redis://` URL.
    Cluster(Vec<String>),
}

/// A `redis+cluster://` URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("redis+cluster:// needs at least one host:port")]
    NoNodes,
    #[error("empty node in the list (two commas in a row?)")]
    EmptyNode,
    #[error("node {0:?} needs a port (host:port)")]
    NoPort(String),
    #[error("node {0:?} has a port that is not a number from 1 to 65535")]
    BadPort(String),
    #[error("redis+cluster:// takes no path or query (a cluster has database 0 only): {0:?}")]
    PathOrQuery(String),
    #[error("rediss+cluster:// (TLS) is not supported by this example backend")]
    Tls,
}

const CLUSTER_SCHEME: &str = "redis+cluster://";

impl Target {
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        if url.starts_with("rediss+cluster://") {
            return Err(TargetError::Tls);
        }
        let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
            return Ok(Target::Single(url.to_string()));
        };
        if let Some(i) = rest.find(['/', '?']) {
            // A lone trailing slash is harmless.
            if &rest[i..] != "/" {
                return Err(TargetError::PathOrQuery(rest[i..].to_string()));
            }
        }
        let rest = rest.trim_end_matches('/');
        // Credentials, if any, apply to every node (a cluster shares its ACLs).
        let (userinfo, hosts) = match rest.rfind('@') {
            Some(i) => (&rest[..=i], &rest[i + 1..]),
            None => ("", rest),
        };
        if hosts.is_empty() {
            return Err(TargetError::NoNodes);
        }
        let nodes = hosts
            .split(',')
            .map(|node| {
                let node = node.trim();
                if node.is_empty() {
                    return Err(TargetError::EmptyNode);
                }
                let Some((_, port)) = node.rsplit_once(':').filter(|(h, _)| !h.ends_with(':'))
                else {
                    return Err(TargetError::NoPort(node.to_string()));
                };
                match port.parse::<u16>() {
                    Ok(p) if p > 0 => Ok(format!("redis://{userinfo}{node}")),
                    _ => Err(TargetError::BadPort(node.to_string())),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Target::Cluster(nodes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_urls_pass_through_unchanged() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://h/2",
            "unix:///tmp/r.sock",
        ] {
            assert_eq!(Target::parse(url), Ok(Target::Single(url.to_string())));
        }
    }

    #[test]
    fn cluster_urls_list_their_seed_nodes() {
        assert_eq!(
            Target::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/"),
            Ok(Target::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ]))
        );
        assert_eq!(
            Target::parse("redis+cluster://u:p@a:1, [::1]:2"),
            Ok(Target::Cluster(vec![
                "redis://u:p@a:1".into(),
                "redis://u:p@[::1]:2".into()
            ]))
        );
    }

    #[test]
    fn bad_cluster_urls_say_what_is_wrong() {
        let cases = [
            ("redis+cluster://", TargetError::NoNodes),
            ("redis+cluster://u@", TargetError::NoNodes),
            ("redis+cluster://a:1,,b:2", TargetError::EmptyNode),
            ("redis+cluster://a", TargetError::NoPort("a".into())),
            ("redis+cluster://a:x", TargetError::BadPort("a:x".into())),
            ("redis+cluster://a:0", TargetError::BadPort("a:0".into())),
            (
                "redis+cluster://a:1/2",
                TargetError::PathOrQuery("/2".into()),
            ),
            (
                "redis+cluster://a:1?x=1",
                TargetError::PathOrQuery("?x=1".into()),
            ),
            ("rediss+cluster://a:1", TargetError::Tls),
        ];
        for (url, want) in cases {
            assert_eq!(Target::parse(url), Err(want), "{url}");
        }
    }
}
