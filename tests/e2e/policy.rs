//! Policies that another spelling of a request must not escape (issue 11,
//! items 3 and 6): the Origin check under path tricks and at every level,
//! and forwarding headers only from trusted proxies.

use wsgate_tests::*;

const UP: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// Status of an upgrade of `path` with `origin`, sent as raw bytes.
async fn upgrade_status(gate: &Gate, path: &str, origin: &str) -> (Option<u16>, String) {
    let mut s = tls_stream(gate).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nOrigin: {origin}\r\n{UP}\r\n");
    let resp = raw_request(&mut s, req.as_bytes()).await.unwrap();
    (status_of(&resp), resp)
}

/// The shipped layout: `/echo` checks the Origin, `/` sends everything
/// else to the same pool without a check.
fn layered(b: &Backend, pool_extra: &str, listener_extra: &str) -> String {
    tls_config(&[("b1", b.addr, 1)], pool_extra)
        .replace(
            "routes:\n",
            "routes:\n  - path_prefix: /echo\n    pool: chat\n    allowed_origins: [\"https://good.example\"]\n",
        )
        .replace("    tls:\n", &format!("{listener_extra}    tls:\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_spelling_of_a_path_cannot_skip_its_origin_check() {
    let b = Backend::start("b1").unwrap();
    let gate = Gate::start(&layered(&b, "", ""), 1).unwrap();
    assert_eq!(
        upgrade_status(&gate, "/echo", "https://good.example")
            .await
            .0,
        Some(101)
    );
    assert_eq!(
        upgrade_status(&gate, "/echo", "https://evil.example")
            .await
            .0,
        Some(403)
    );
    // Decoded, `/%65cho` is `/echo`: it is matched (and forwarded) as such,
    // so the Origin check applies. It used to fall through to `/` and 101.
    let (status, resp) = upgrade_status(&gate, "/%65cho", "https://evil.example").await;
    assert_eq!(status, Some(403), "{resp}");
    // Spellings with no single reading are refused outright.
    for path in [
        "//echo",
        "/./echo",
        "/x/../echo",
        "/%2e%2e/echo",
        "/a%2fb",
        "/..;/echo",
    ] {
        let (status, resp) = upgrade_status(&gate, path, "https://evil.example").await;
        assert_eq!(status, Some(400), "{path}: {resp}");
    }
    // And the normal form is what the backend sees.
    let (status, _, body) = https(&gate, "GET", "/%77hoami?user=a", b"").await.unwrap();
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["path"], "/whoami");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_set_on_the_pool_or_the_listener_apply_to_every_route() {
    let b = Backend::start("b1").unwrap();
    for (pool, listener) in [
        ("    allowed_origins: [\"https://good.example\"]\n", ""),
        ("", "    allowed_origins: [\"https://good.example\"]\n"),
    ] {
        let gate = Gate::start(&layered(&b, pool, listener), 1).unwrap();
        // `/ws` (the chat) matches only the catch-all route, which has no
        // list of its own.
        let (status, resp) = upgrade_status(&gate, "/ws?user=alice", "https://evil.example").await;
        assert_eq!(
            status,
            Some(403),
            "pool {pool:?} listener {listener:?}: {resp}"
        );
        let (status, resp) = upgrade_status(&gate, "/ws?user=alice", "https://good.example").await;
        assert_eq!(status, Some(101), "{resp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_replaced_unless_the_peer_is_trusted() {
    let b = Backend::start("b1").unwrap();
    let forged = "X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6\r\n";
    let seen = |gate: Gate| async move {
        let mut s = tls_stream(&gate).await.unwrap();
        let req =
            format!("GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{forged}\r\n");
        let resp = raw_request(&mut s, req.as_bytes()).await.unwrap();
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["headers"].clone()
    };
    let untrusted = Gate::start(&tls_config(&[("b1", b.addr, 1)], ""), 1).unwrap();
    let h = seen(untrusted).await;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(
        h["forwarded"], "for=127.0.0.1;proto=https;host=\"localhost\"",
        "{h}"
    );
    assert!(
        h.get("x-real-ip").is_none() && h.get("x-forwarded-host").is_none(),
        "{h}"
    );

    let trusted = Gate::start(
        &tls_config(&[("b1", b.addr, 1)], "trusted_proxies: [127.0.0.0/8]\n"),
        1,
    )
    .unwrap();
    let h = seen(trusted).await;
    assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1", "{h}");
    assert_eq!(h["x-real-ip"], "6.6.6.6", "{h}");
}
