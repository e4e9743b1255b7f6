use super::*;

const GOOD: &str = r#"
listeners:
  - name: public
    address: "127.0.0.1:0"
    tls:
      certificates:
        - { cert: dev.crt, key: dev.key, generate_if_missing: true }
routes:
  - path_prefix: /ws
    pool: chat
    sticky_key: [ "query:user", "header:x-user-id", "cookie:session" ]
    on_missing_key: reject
  - { path_prefix: /, pool: chat }
pools:
  chat:
    backends:
      - { id: chat-1, address: "127.0.0.1:9001" }
      - { id: chat-2, address: "localhost:9002", weight: 2 }
timeouts: { handshake: 5s, idle: 15m }
limits: { max_header_bytes: 16KiB, max_message_bytes: 16MiB }
runtime: { threads: 1 }
"#;

fn parse(src: &str) -> Result<Config, ConfigError> {
    Config::from_source(src, "test.yaml", Path::new("/etc/wsgate"))
}

fn problems(src: &str) -> Vec<Problem> {
    match parse(src) {
        Err(ConfigError::Invalid(p)) => p,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn good_config_is_typed() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.listeners[0].address.port(), 0);
    let tls = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.certificates[0].cert, Path::new("/etc/wsgate/dev.crt"));
    assert_eq!(c.routes[0].on_missing_key, OnMissingKey::Reject);
    assert_eq!(c.routes[0].sticky_key.len(), 3);
    assert_eq!(c.routes[1].on_missing_key, OnMissingKey::ClientIp);
    assert_eq!(c.pools[0].backends[1].weight, 2);
    assert_eq!(c.timeouts.handshake, Duration::from_secs(5));
    assert_eq!(c.timeouts.close, Timeouts::default().close);
    assert_eq!(c.limits.max_message_bytes, 16 << 20);
    assert_eq!(c.runtime.threads, 1);
}

#[test]
fn unknown_key_is_reported_with_its_line() {
    let src = GOOD.replace(
        "    on_missing_key: reject\n",
        "    on_missing_key: reject\n    stickyness: high\n",
    );
    let p = problems(&src);
    assert_eq!(p.len(), 1);
    let line = src.lines().position(|l| l.contains("stickyness")).unwrap() + 1;
    assert!(
        p[0].location.starts_with(&format!("test.yaml:{line}:")),
        "{p:?}"
    );
    assert!(p[0].message.contains("unknown field `stickyness`"), "{p:?}");
    assert!(p[0].path.starts_with("routes[0]"), "{p:?}");
}

#[test]
fn type_errors_carry_path_and_position() {
    let src = GOOD.replace("weight: 2", "weight: heavy");
    let p = problems(&src);
    assert_eq!(p[0].path, "pools.chat.backends[1].weight");
    let line = src.lines().position(|l| l.contains("heavy")).unwrap() + 1;
    assert!(
        p[0].location.starts_with(&format!("test.yaml:{line}:")),
        "{p:?}"
    );
}

#[test]
fn semantic_errors_are_all_reported_with_positions() {
    let src = GOOD
        .replace("\"127.0.0.1:9001\"", "\"nohost\"")
        .replace("pool: chat\n    sticky", "pool: chatt\n    sticky")
        .replace("query:user", "body:user")
        .replace("idle: 15m", "idle: 15 minutes");
    let p = problems(&src);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "pools.chat.backends[0].address",
            "routes[0].pool",
            "routes[0].sticky_key[0]",
            "timeouts.idle"
        ]
    );
    let line_of = |needle: &str| src.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert!(p[0]
        .location
        .starts_with(&format!("test.yaml:{}:", line_of("nohost"))));
    assert!(p[1]
        .location
        .starts_with(&format!("test.yaml:{}:", line_of("chatt"))));
    assert!(p[1]
        .message
        .contains("unknown pool `chatt` (defined: chat)"));
    let text = ConfigError::Invalid(p).to_string();
    assert_eq!(text.lines().count(), 4);
}

#[test]
fn duplicates_and_empty_pools_are_rejected() {
    let src = GOOD.replace("id: chat-2", "id: chat-1");
    assert!(problems(&src)[0]
        .message
        .contains("duplicate backend id `chat-1`"));
    let src = "listeners: [{name: a, address: \"127.0.0.1:1\"}]\nroutes: [{pool: p}]\npools: {p: {backends: []}}\n";
    assert!(problems(src)[0].message.contains("at least one backend"));
    let src = "listeners: []\nroutes: [{pool: p}]\npools: {p: {backends: [{id: a, address: \"h:1\", weight: 0}]}}\n";
    let p = problems(src);
    assert!(p
        .iter()
        .any(|p| p.message.contains("at least one listener")));
    assert!(p.iter().any(|p| p.message.contains("weight 0")));
}

#[test]
fn syntax_error_has_position_and_no_source_echo() {
    let p = problems("listeners:\n  - name: [unclosed\n");
    assert!(p[0].location.starts_with("test.yaml:"), "{p:?}");
    assert!(p[0].location.matches(':').count() == 2, "{p:?}");
}

#[test]
fn missing_file_is_a_read_error() {
    let e = Config::load(Path::new("/nonexistent/wsgate.yaml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e
        .to_string()
        .starts_with("/nonexistent/wsgate.yaml: cannot read config"));
}

#[test]
fn header_limit_below_hyper_minimum_is_rejected() {
    let src = GOOD.replace("max_header_bytes: 16KiB", "max_header_bytes: 4096");
    assert_eq!(problems(&src)[0].path, "limits.max_header_bytes");
}

#[test]
fn the_hardening_keys_are_validated_with_positions() {
    let base = "listeners:\n  - name: a\n    address: \"127.0.0.1:1\"\n    proxy_protocol: { accept_from: [10.0.0.0/8, not-a-cidr] }\n    allowed_origins: []\n\
routes:\n  - { path_prefix: \"/a//b\", pool: p, backend_response: 200h }\n\
pools:\n  p:\n    allowed_origins: [\"https://ok.example\"]\n    backends: [{ id: b, address: \"h:1\", max_connections: 0 }]\n\
trusted_proxies: [192.0.2.7, 10.0.0.0/33]\n\
limits: { max_connections_per_ip: 0, max_message_bytes: 2GiB }\n\
timeouts: { body: 0s, write: 169h }\n";
    let p = problems(base);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "listeners[0].proxy_protocol.accept_from[1]",
        "listeners[0].allowed_origins",
        "routes[0].path_prefix",
        "routes[0].backend_response",
        "pools.p.backends[0].max_connections",
        "trusted_proxies[1]",
        "limits.max_connections_per_ip",
        "limits.max_message_bytes",
        "timeouts.body",
        "timeouts.write",
    ] {
        assert!(paths.contains(&want), "no problem at {want}: {paths:?}");
    }
    assert!(
        p.iter()
            .all(|p| p.location.starts_with("test.yaml:") && p.location.matches(':').count() == 2),
        "every problem has a line and column: {p:?}"
    );

    let good = "listeners:\n  - name: a\n    address: \"127.0.0.1:1\"\n    proxy_protocol: { accept_from: [10.0.0.0/8, 192.0.2.7] }\n\
routes: [{ pool: p, backend_response: 30s }]\n\
pools: { p: { backends: [{ id: b, address: \"h:1\", max_connections: 100 }] } }\n\
trusted_proxies: [\"10.1.2.3/8\"]\n";
    let c = Config::from_source(good, "test.yaml", std::path::Path::new(".")).unwrap();
    assert_eq!(
        c.listeners[0].proxy_protocol.as_ref().map(Vec::len),
        Some(2)
    );
    assert_eq!(
        c.trusted_proxies[0].to_string(),
        "10.0.0.0/8",
        "host bits are cleared"
    );
    assert_eq!(c.routes[0].backend_response, Some(Duration::from_secs(30)));
    assert_eq!(c.pools[0].backends[0].max_connections, Some(100));
    assert_eq!(c.limits.max_connections, None, "derived at startup");
}

#[test]
fn a_file_that_is_one_long_string_is_not_printed_back() {
    let key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";
    let text = Config::from_source(key, "k.pem", std::path::Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(!text.contains("MIGHAgEAMBMG"), "{text}");
    assert!(text.contains("bytes)"), "{text}");
    assert_eq!(
        elide_long_values(r#"unknown field "tls", expected "x""#),
        r#"unknown field "tls", expected "x""#
    );
    assert_eq!(elide_long_values(r#"a "b\"c" d"#), r#"a "b\"c" d"#);
}

#[test]
fn a_pool_may_come_from_dns_alone_with_the_documented_defaults() {
    let src = r#"
listeners: [{name: a, address: "127.0.0.1:1"}]
routes: [{pool: p}, {pool: s}]
pools:
  p:
    discovery: { dns: chat.ns.svc.cluster.local, port: 9001 }
  s:
    backends: [{ id: static, address: "h:1" }]
    discovery:
      dns: _ws._tcp.chat.ns.svc.cluster.local.
      type: srv
      interval: 200ms
      min_interval: 100ms
      max_interval: 1s
      nameservers: ["127.0.0.1:5353", "::1"]
      weight: 2
"#;
    let c = parse(src).unwrap();
    let p = c.pool("p").unwrap();
    assert!(p.backends.is_empty());
    assert_eq!(
        p.discovery,
        Some(Discovery {
            name: "chat.ns.svc.cluster.local".into(),
            kind: RecordKind::A { port: 9001 },
            interval: defaults::DISCOVERY_INTERVAL,
            min_interval: defaults::DISCOVERY_MIN_INTERVAL,
            max_interval: defaults::DISCOVERY_MAX_INTERVAL,
            nameservers: vec![],
            weight: defaults::DISCOVERY_WEIGHT,
        })
    );
    let s = c.pool("s").unwrap();
    assert_eq!(s.backends.len(), 1, "static and discovered backends mix");
    let d = s.discovery.as_ref().unwrap();
    assert_eq!(d.kind, RecordKind::Srv);
    assert_eq!(
        (d.interval, d.min_interval, d.max_interval, d.weight),
        (
            Duration::from_millis(200),
            Duration::from_millis(100),
            Duration::from_secs(1),
            2
        )
    );
    assert_eq!(
        d.nameservers,
        [
            "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
            "[::1]:53".parse().unwrap()
        ]
    );
}

#[test]
fn discovery_mistakes_are_reported_where_they_are() {
    let src = r#"
listeners: [{name: a, address: "127.0.0.1:1"}]
routes: [{pool: a}]
pools:
  a:
    discovery: { dns: "chat..svc", port: 9001 }
  b:
    discovery: { dns: chat.svc }
  c:
    discovery: { dns: chat.svc, type: srv, port: 1 }
  d:
    discovery: { dns: chat.svc, type: aaaa, port: 1 }
  e:
    discovery:
      dns: chat.svc
      port: 1
      min_interval: 10s
      max_interval: 1s
      nameservers: ["127.0.0.1:53", "dns.example:53"]
      weight: 0
  f:
    backends: []
"#;
    let p = problems(src);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "pools.a.discovery.dns",
            "pools.b.discovery.port",
            "pools.c.discovery.port",
            "pools.d.discovery.type",
            "pools.e.discovery.max_interval",
            "pools.e.discovery.nameservers[1]",
            "pools.e.discovery.weight",
            "pools.f.backends",
        ]
    );
    let line_of = |needle: &str| src.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for (problem, needle) in p.iter().zip([
        "chat..svc",
        "{ dns: chat.svc }",
        "type: srv",
        "aaaa",
        "max_interval: 1s",
        "nameservers",
        "weight: 0",
        "backends: []",
    ]) {
        assert!(
            problem
                .location
                .starts_with(&format!("test.yaml:{}:", line_of(needle))),
            "{problem:?} is not on the line of {needle}"
        );
    }
    assert!(p[7].message.contains("or `discovery`"), "{p:?}");
}

#[test]
fn dns_names() {
    for good in [
        "chat",
        "chat.ns.svc.cluster.local.",
        "_ws._tcp.chat.ns.svc.cluster.local",
    ] {
        assert!(valid_dns_name(good), "{good}");
    }
    let long_label = "a".repeat(64);
    for bad in ["", ".", "a..b", "a b", "a/b", long_label.as_str()] {
        assert!(!valid_dns_name(bad), "{bad:?}");
    }
}

#[test]
fn admin_peers_are_host_ports_located_when_wrong() {
    let src = format!(
        "{GOOD}admin:\n  address: \"127.0.0.1:9900\"\n  peers:\n    - \"http://10.0.0.5:9900\"\n    - \"not a host\"\n"
    );
    let p = problems(&src);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].path, "admin.peers[1]");
    let line = src.lines().position(|l| l.contains("not a host")).unwrap() + 1;
    assert!(
        p[0].location.starts_with(&format!("test.yaml:{line}:")),
        "{}",
        p[0].location
    );
    let c = parse(&format!("{GOOD}admin: {{ address: \"127.0.0.1:9900\" }}\n")).unwrap();
    assert!(c.admin.unwrap().peers.is_empty(), "no peers by default");
}

#[test]
fn balance_factor_is_off_by_default_and_validated_where_it_is() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.pools[0].balance_factor, defaults::BALANCE_FACTOR);
    assert_eq!(c.pools[0].balance_factor, None);
    let with = |v: &str| {
        GOOD.replace(
            "      - { id: chat-2, address: \"localhost:9002\", weight: 2 }\n",
            &format!(
                "      - {{ id: chat-2, address: \"localhost:9002\", weight: 2 }}\n    balance_factor: {v}\n"
            ),
        )
    };
    for (v, permille) in [
        ("1.25", 1250),
        ("1", 1000),
        ("2", 2000),
        ("100", 100_000),
        ("1.005", 1005),
    ] {
        let c = parse(&with(v)).unwrap();
        assert_eq!(
            c.pools[0].balance_factor.map(BalanceFactor::permille),
            Some(permille),
            "{v}"
        );
    }
    assert_eq!(parse(&with("~")).unwrap().pools[0].balance_factor, None);
    let line = with("1")
        .lines()
        .position(|l| l.contains("balance_factor"))
        .unwrap()
        + 1;
    for (v, says) in [
        ("0.9", "is not a factor from 1 to 100"),
        ("0", "is not a factor from 1 to 100"),
        ("101", "is not a factor from 1 to 100"),
        ("-1.5", "is not a factor from 1 to 100"),
        (".nan", "is not a factor from 1 to 100"),
        (".inf", "is not a factor from 1 to 100"),
        ("1.2345", "more than three decimals"),
    ] {
        let p = problems(&with(v));
        assert_eq!(p.len(), 1, "{v}: {p:?}");
        assert_eq!(p[0].path, "pools.chat.balance_factor", "{v}");
        assert!(p[0].message.contains(says), "{v}: {p:?}");
        assert!(
            p[0].location.starts_with(&format!("test.yaml:{line}:")),
            "{v}: {p:?}"
        );
    }
    // Not a number at all: serde's type error, with its position.
    let p = problems(&with("high"));
    assert_eq!(p[0].path, "pools.chat.balance_factor", "{p:?}");
    assert!(
        p[0].location.starts_with(&format!("test.yaml:{line}:")),
        "{p:?}"
    );
}

#[test]
fn access_log_is_off_by_default_and_typed_when_given() {
    assert_eq!(parse(GOOD).unwrap().access_log, None);
    let c = parse(&format!("{GOOD}access_log: {{ to: logs/access.log }}\n")).unwrap();
    let a = c.access_log.unwrap();
    assert_eq!(
        a.to,
        accesslog::Target::File("/etc/wsgate/logs/access.log".into())
    );
    assert_eq!(a.format, accesslog::Format::Json);
    assert!(!a.log_raw_key && !a.log_query);
    let c = parse(&format!(
        "{GOOD}access_log: {{ to: stderr, format: logfmt, log_raw_key: true }}\n"
    ))
    .unwrap();
    let a = c.access_log.unwrap();
    assert_eq!(
        (a.to, a.format),
        (accesslog::Target::Stderr, accesslog::Format::Logfmt)
    );
    assert!(a.log_raw_key);
}

#[test]
fn a_bad_access_log_format_is_located() {
    let src = format!("{GOOD}access_log:\n  to: stdout\n  format: xml\n");
    let p = problems(&src);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].path, "access_log.format");
    let line = src.lines().position(|l| l.contains("xml")).unwrap() + 1;
    assert!(
        p[0].location.starts_with(&format!("test.yaml:{line}:")),
        "{}",
        p[0].location
    );
    assert!(p[0].message.contains("logfmt"));
}
