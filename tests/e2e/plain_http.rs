//! Plain HTTP is proxied to the same pool with the same stickiness, with
//! forwarding headers added.

use wsgate_tests::*;

async fn three_backends() -> (Vec<Backend>, Gate) {
    let backends: Vec<Backend> = ["b1", "b2", "b3"]
        .iter()
        .map(|id| Backend::start(id).unwrap())
        .collect();
    let spec: Vec<_> = backends
        .iter()
        .map(|b| (b.id.as_str(), b.addr, 1))
        .collect();
    let gate = Gate::start(&tls_config(&spec, ""), 1).unwrap();
    (backends, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_follow_the_websocket_backend() {
    let (_b, gate) = three_backends().await;
    for i in 0..30 {
        let user = format!("http-user-{i}");
        let ws_backend = backend_of(&gate, &user).await.unwrap();
        let (status, _, body) = https(&gate, "GET", &format!("/whoami?user={user}"), b"")
            .await
            .unwrap();
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["backend"], ws_backend.as_str(), "GET for {user}");
        let payload: Vec<u8> = (0..100_000u32).map(|n| (n % 251) as u8).collect();
        let (status, head, body) = https(&gate, "POST", &format!("/echo?user={user}"), &payload)
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert!(body == payload, "POST body changed");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("x-backend-id: {ws_backend}")),
            "{head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_reach_the_backend() {
    let (_b, gate) = three_backends().await;
    let (_, _, body) = https(&gate, "GET", "/whoami?user=z", b"").await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;proto=https;host=\"localhost\""
    );
    assert!(
        h.get("connection").is_none_or(|c| c != "close"),
        "hop-by-hop header leaked: {h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_is_rejected_when_the_route_says_so() {
    let b = Backend::start("b1").unwrap();
    let yaml = tls_config(&[("b1", b.addr, 1)], "").replace(
        "    sticky_key: [\"query:user\", \"header:x-user-id\", \"cookie:session\"]\n",
        "    sticky_key: [\"query:user\"]\n    on_missing_key: reject\n",
    );
    let gate = Gate::start(&yaml, 1).unwrap();
    let (status, _, body) = https(&gate, "GET", "/whoami", b"").await.unwrap();
    assert_eq!(status, 400);
    assert_eq!(
        String::from_utf8_lossy(&body).trim(),
        "missing sticky key (tried query:user)"
    );
    let (status, _, _) = https(&gate, "GET", "/whoami?user=a", b"").await.unwrap();
    assert_eq!(status, 200);
}
