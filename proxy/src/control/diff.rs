//! What a reload changes: a pure function from the old and the new config
//! to the list of [`Change`]s the control task applies. An operator's
//! `backend add` or `backend remove` is applied as the same kind of change,
//! by the same handler, so a reload and an operator command cannot drift
//! apart (sozu's `ConfigState::diff` works the same way).

use crate::config::Config;
use crate::routing::BackendKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Drained with the pool's drain policy, its checker stopped.
    BackendRemoved(BackendKey),
    /// Same id, another address or weight. The id is what users hash to, so
    /// nobody moves because of an address; a new address restarts the
    /// backend's health checker.
    BackendChanged {
        backend: BackendKey,
        address: bool,
        weight: bool,
    },
    /// Checked if the pool has a health check; with `rebalance: migrate`
    /// the connections whose key now maps to it move there.
    BackendAdded(BackendKey),
    /// The pool's health check was added, removed or changed: its checkers
    /// restart.
    HealthCheckChanged { pool: String },
    /// The pool's `discovery` was added, removed or changed (or the pool
    /// came or went with one): its resolver restarts, or stops. The
    /// backends found so far stay until the new resolver answers.
    DiscoveryChanged { pool: String },
    /// A listener was added, removed or changed (address or TLS): it
    /// stops, starts, or both (`edge::listeners`).
    ListenerChanged { name: String },
    /// Any other section; takes effect with the new snapshot, except what
    /// [`needs_restart`](Change::needs_restart) says.
    Setting(&'static str),
}

impl Change {
    /// The backend a backend change is about.
    fn backend(&self) -> Option<&BackendKey> {
        match self {
            Change::BackendRemoved(key)
            | Change::BackendAdded(key)
            | Change::BackendChanged { backend: key, .. } => Some(key),
            _ => None,
        }
    }

    /// Whether this change waits for a restart (`run --upgrade`) to take
    /// effect; the reload says so in its notes.
    pub fn needs_restart(&self) -> bool {
        matches!(self, Change::Setting("admin" | "runtime"))
    }
}

/// What of `admin` the running process uses: where it listens, and its token.
fn admin_socket(c: &Config) -> Option<(std::net::SocketAddr, Option<&std::path::Path>)> {
    c.admin
        .as_ref()
        .map(|a| (a.address, a.token_file.as_deref()))
}

/// Whether a pool present in both configs changed its drain, rebalance,
/// Origin, PROXY protocol or balance policy (pools that come or go show as their
/// backends).
fn pool_policies_differ(old: &Config, new: &Config) -> bool {
    new.pools.iter().any(|p| {
        old.pool(&p.name).is_some_and(|o| {
            (
                o.drain,
                o.rebalance,
                &o.allowed_origins,
                o.send_proxy_protocol,
                o.balance_factor,
            ) != (
                p.drain,
                p.rebalance,
                &p.allowed_origins,
                p.send_proxy_protocol,
                p.balance_factor,
            )
        })
    })
}

/// Whether a listener present in both configs changed its Origin policy or
/// its PROXY protocol sources, which (unlike its socket) take effect
/// without a restart.
fn listener_policies_differ(old: &Config, new: &Config) -> bool {
    new.listeners.iter().any(|l| {
        old.listeners.iter().any(|o| {
            o.name == l.name
                && (o.allowed_origins != l.allowed_origins || o.proxy_protocol != l.proxy_protocol)
        })
    })
}

/// Removals first, then changes, then additions, each sorted, so that the
/// outcome is deterministic and a drain starts before anything else.
pub(crate) fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let mut removed = Vec::new();
    let mut changed = Vec::new();
    let mut added = Vec::new();
    let mut health = Vec::new();
    let mut discovery = Vec::new();
    for pool in &old.pools {
        for b in &pool.backends {
            if new.backend(&pool.name, &b.id).is_none() {
                removed.push(Change::BackendRemoved(BackendKey::new(&pool.name, &b.id)));
            }
        }
        if pool.discovery.is_some() && new.pool(&pool.name).is_none() {
            discovery.push(pool.name.clone());
        }
    }
    for pool in &new.pools {
        let old_pool = old.pool(&pool.name);
        if old_pool.is_some_and(|o| o.health_check != pool.health_check) {
            health.push(Change::HealthCheckChanged {
                pool: pool.name.clone(),
            });
        }
        if old_pool.and_then(|o| o.discovery.as_ref()) != pool.discovery.as_ref() {
            discovery.push(pool.name.clone());
        }
        for b in &pool.backends {
            let key = BackendKey::new(&pool.name, &b.id);
            match old.backend(&pool.name, &b.id) {
                None => added.push(Change::BackendAdded(key)),
                Some(o) if o != b => changed.push(Change::BackendChanged {
                    backend: key,
                    address: o.address != b.address,
                    weight: o.weight != b.weight,
                }),
                Some(_) => {}
            }
        }
    }
    let mut listeners = Vec::new();
    for l in &new.listeners {
        if !old
            .listeners
            .iter()
            .any(|o| o.name == l.name && o.same_socket(l))
        {
            listeners.push(l.name.clone());
        }
    }
    for l in &old.listeners {
        if !new.listeners.iter().any(|n| n.name == l.name) {
            listeners.push(l.name.clone());
        }
    }
    listeners.sort();
    let settings = [
        ("routes", old.routes != new.routes),
        ("timeouts", old.timeouts != new.timeouts),
        ("limits", old.limits != new.limits),
        ("pool policies", pool_policies_differ(old, new)),
        ("listener policies", listener_policies_differ(old, new)),
        (
            "trusted_proxies",
            old.trusted_proxies != new.trusted_proxies,
        ),
        // `admin.peers` is only read by the CLI: changing it needs no restart.
        ("admin", admin_socket(old) != admin_socket(new)),
        ("runtime", old.runtime != new.runtime),
        // Applied by every reload (the file is reopened either way).
        ("access_log", old.access_log != new.access_log),
    ];
    for list in [&mut removed, &mut changed, &mut added] {
        list.sort_by(|a, b| a.backend().cmp(&b.backend()));
    }
    discovery.sort();
    removed
        .into_iter()
        .chain(changed)
        .chain(added)
        .chain(health)
        .chain(
            discovery
                .into_iter()
                .map(|pool| Change::DiscoveryChanged { pool }),
        )
        .chain(
            listeners
                .into_iter()
                .map(|name| Change::ListenerChanged { name }),
        )
        .chain(
            settings
                .into_iter()
                .filter(|(_, differs)| *differs)
                .map(|(name, _)| Change::Setting(name)),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;
    use std::path::Path;

    fn config(pools: &str, extra: &str) -> Config {
        let src = format!(
            "listeners: [{{name: a, address: \"127.0.0.1:0\"}}]\nroutes: [{{pool: chat}}]\npools: {{{pools}}}\n{extra}"
        );
        Config::from_source(&src, "t.yaml", Path::new(".")).unwrap()
    }

    fn key(pool: &str, id: &str) -> BackendKey {
        BackendKey::new(pool, id)
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let c = config("chat: {backends: [{id: b1, address: \"h:1\"}]}", "");
        assert_eq!(diff(&c, &c.clone()), []);
    }

    #[test]
    fn backends_removed_changed_and_added_in_that_order() {
        let old = config(
            "chat: {backends: [{id: b1, address: \"h:1\"}, {id: b2, address: \"h:2\"}, {id: b3, address: \"h:3\"}]}",
            "",
        );
        let new = config(
            "chat: {backends: [{id: b1, address: \"h:1\"}, {id: b3, address: \"h:33\", weight: 2}, {id: b4, address: \"h:4\"}]}",
            "",
        );
        assert_eq!(
            diff(&old, &new),
            [
                Change::BackendRemoved(key("chat", "b2")),
                Change::BackendChanged {
                    backend: key("chat", "b3"),
                    address: true,
                    weight: true
                },
                Change::BackendAdded(key("chat", "b4")),
            ]
        );
    }

    #[test]
    fn a_removed_pool_removes_its_backends_and_a_new_one_adds_them() {
        let old = config(
            "chat: {backends: [{id: b1, address: \"h:1\"}]}, old: {backends: [{id: x, address: \"h:9\"}]}",
            "",
        );
        let new = config(
            "chat: {backends: [{id: b1, address: \"h:1\"}]}, fresh: {backends: [{id: y, address: \"h:8\"}]}",
            "",
        );
        assert_eq!(
            diff(&old, &new),
            [
                Change::BackendRemoved(key("old", "x")),
                Change::BackendAdded(key("fresh", "y")),
            ]
        );
    }

    #[test]
    fn health_listener_and_other_settings() {
        let old = config("chat: {backends: [{id: b1, address: \"h:1\"}]}", "");
        let new = Config::from_source(
            "listeners: [{name: a, address: \"127.0.0.1:1\"}, {name: b, address: \"127.0.0.1:2\"}]\n\
             routes: [{pool: chat, path_prefix: /ws}]\n\
             pools: {chat: {backends: [{id: b1, address: \"h:1\"}], health_check: {interval: 1s}, drain: {window: 5s}}}\n\
             timeouts: {idle: 1m}\n",
            "t.yaml",
            Path::new("."),
        )
        .unwrap();
        let changes = diff(&old, &new);
        assert_eq!(
            changes,
            [
                Change::HealthCheckChanged {
                    pool: "chat".into()
                },
                Change::ListenerChanged { name: "a".into() },
                Change::ListenerChanged { name: "b".into() },
                Change::Setting("routes"),
                Change::Setting("timeouts"),
                Change::Setting("pool policies"),
            ]
        );
        assert!(
            !changes.iter().any(Change::needs_restart),
            "listeners start and stop by reload"
        );
        let with_admin = |admin: &str| {
            Config::from_source(
                &format!(
                    "listeners: [{{name: a, address: \"127.0.0.1:0\"}}]\nroutes: [{{pool: chat}}]\n\
                     pools: {{chat: {{backends: [{{id: b1, address: \"h:1\"}}]}}}}\n\
                     admin: {{address: \"127.0.0.1:0\", token_file: t{admin}}}\n"
                ),
                "t.yaml",
                Path::new("."),
            )
            .unwrap()
        };
        let admin = with_admin("");
        let changes = diff(&old, &admin);
        assert_eq!(changes, [Change::Setting("admin")]);
        assert!(
            changes[0].needs_restart(),
            "the admin socket waits for a restart"
        );
        let with_peers = with_admin(", peers: [\"http://10.0.0.5:9900/\", \"w.ns.svc:9900\"]");
        assert_eq!(
            with_peers.admin.as_ref().map(|a| a.peers.clone()),
            Some(vec![
                "10.0.0.5:9900".to_string(),
                "w.ns.svc:9900".to_string()
            ])
        );
        assert_eq!(
            diff(&admin, &with_peers),
            [],
            "only the CLI reads admin.peers: no restart"
        );
    }

    #[test]
    fn certificates_change_in_place_but_tls_on_or_off_restarts_the_listener() {
        let listener = |tls: &str| {
            Config::from_source(
                &format!(
                    "listeners: [{{name: a, address: \"127.0.0.1:0\"{tls}}}]\n\
                     routes: [{{pool: chat}}]\npools: {{chat: {{backends: [{{id: b1, address: \"h:1\"}}]}}}}\n"
                ),
                "t.yaml",
                Path::new("."),
            )
            .unwrap()
        };
        let with = |cert: &str| {
            listener(&format!(
                ", tls: {{certificates: [{{cert: {cert}, key: k.pem}}]}}"
            ))
        };
        // Every reload loads the certificates again (control::certificates).
        assert_eq!(diff(&with("a.pem"), &with("b.pem")), []);
        assert_eq!(
            diff(&listener(""), &with("a.pem")),
            [Change::ListenerChanged { name: "a".into() }]
        );
    }

    #[test]
    fn a_discovery_change_restarts_the_resolver_and_its_answers_are_backend_changes() {
        let dns = |name: &str| {
            config(
                &format!("chat: {{backends: [{{id: b1, address: \"h:1\"}}], discovery: {{dns: {name}, port: 9}}}}"),
                "",
            )
        };
        let (a, b) = (dns("a.test"), dns("b.test"));
        assert_eq!(diff(&a, &a.clone()), []);
        assert_eq!(
            diff(&a, &b),
            [Change::DiscoveryChanged {
                pool: "chat".into()
            }]
        );
        let plain = config("chat: {backends: [{id: b1, address: \"h:1\"}]}", "");
        assert_eq!(
            diff(&plain, &a),
            [Change::DiscoveryChanged {
                pool: "chat".into()
            }]
        );
        assert_eq!(
            diff(&a, &plain),
            [Change::DiscoveryChanged {
                pool: "chat".into()
            }]
        );
        // A pool that goes away with its discovery stops its resolver too.
        let other = config(
            "other: {backends: [{id: b1, address: \"h:1\"}]}, chat: {backends: [{id: b1, address: \"h:1\"}]}",
            "",
        );
        let gone = Config {
            pools: other
                .pools
                .iter()
                .filter(|p| p.name == "other")
                .cloned()
                .collect(),
            routes: vec![],
            ..other.clone()
        };
        assert!(diff(&a, &gone).contains(&Change::DiscoveryChanged {
            pool: "chat".into()
        }));

        // An answer, merged into the pool, is the same list of changes as a
        // reload: the one that left is removed, the new one added, the one
        // whose address changed keeps its users.
        let answer = |found: &[(&str, &str)], previous: &[String]| {
            let mut c = a.clone();
            let found: Vec<Backend> = found
                .iter()
                .map(|(id, address)| Backend {
                    id: (*id).into(),
                    address: (*address).into(),
                    weight: 1,
                    max_connections: None,
                })
                .collect();
            let (list, ids) =
                crate::control::discovery::merge(&c.pools[0].backends, previous, &found);
            c.pools[0].backends = list;
            (c, ids)
        };
        let (first, ids) = answer(
            &[
                ("x", "10.0.0.1:9"),
                ("y", "10.0.0.2:9"),
                ("z", "10.0.0.3:9"),
            ],
            &[],
        );
        let (second, _) = answer(
            &[
                ("y", "10.0.0.2:9"),
                ("z", "10.0.0.9:9"),
                ("w", "10.0.0.4:9"),
            ],
            &ids,
        );
        let changes = diff(&first, &second);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(changes[0], Change::BackendRemoved(key("chat", "x")));
        assert!(
            matches!(&changes[1], Change::BackendChanged { backend, address: true, weight: false } if backend.id == "z"),
            "{changes:?}"
        );
        assert_eq!(changes[2], Change::BackendAdded(key("chat", "w")));
        assert!(
            second.backend("chat", "b1").is_some(),
            "the static backend stays"
        );
    }
}
