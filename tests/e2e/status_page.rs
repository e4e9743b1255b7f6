//! The status page's login (issue 15, item 3), against a real wsgate: the
//! page itself is open, its data is not; the login form trades the token
//! for an HttpOnly session cookie that is not the token; the cookie opens
//! the JSON API but a state change made with it needs the CSRF header;
//! logout ends the session on the server. Wrong tokens get the same 401
//! as a wrong bearer token.

use anyhow::{anyhow, Result};
use tokio::net::TcpStream;
use wsgate_tests::*;

const ADMIN: &str = "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n";

/// One admin call on a fresh connection: (status, head, body).
async fn call(
    gate: &Gate,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String, String)> {
    let admin = gate.admin.ok_or_else(|| anyhow!("no admin API"))?;
    let mut s = tokio::time::timeout(STEP, TcpStream::connect(admin)).await??;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let resp = raw_request(&mut s, req.as_bytes()).await?;
    let status = status_of(&resp).ok_or_else(|| anyhow!("no answer: {resp:?}"))?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    Ok((status, head.to_string(), body.to_string()))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");
const CSRF: (&str, &str) = ("X-Wsgate-Csrf", "1");
const DRAIN: &str = "/v1/pools/chat/backends/b1/drain";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_cookie_csrf_and_logout() -> Result<()> {
    let backends = start_backends(&["b1"]);
    let gate = Gate::start(&tls_config(&weight_one(&backends), ADMIN), 1)?;
    let token = std::fs::read_to_string(gate.dir.join("admin.token"))?;
    let token = token.trim();

    // The page is open, and locked down against framing and inline script.
    let (status, head, body) = call(&gate, "GET", "/", &[], "").await?;
    assert_eq!(status, 200, "{head}");
    assert!(header(&head, "content-type").is_some_and(|t| t.starts_with("text/html")));
    assert!(
        header(&head, "content-security-policy").is_some_and(|p| p.contains("script-src 'self'"))
    );
    assert_eq!(header(&head, "x-frame-options"), Some("DENY"));
    assert!(body.contains("<form id=\"login\" method=\"post\" action=\"/login\">"));
    let (status, _, js) = call(&gate, "GET", "/status.js", &[], "").await?;
    assert!(status == 200 && js.contains("/v1/activity"));

    // Its data is not.
    assert_eq!(call(&gate, "GET", "/v1/status", &[], "").await?.0, 401);
    let forged = format!("wsgate_session={}", "ab".repeat(32));
    let cookie_only = [("Cookie", forged.as_str())];
    assert_eq!(
        call(&gate, "GET", "/v1/activity", &cookie_only, "")
            .await?
            .0,
        401
    );

    // A wrong token in the form: 401 as for a bearer token, no cookie.
    let (status, head, body) = call(&gate, "POST", "/login", &[FORM], "token=guess").await?;
    assert_eq!(status, 401, "{head}");
    assert!(header(&head, "set-cookie").is_none(), "{head}");
    let (_, _, bearer_body) = call(
        &gate,
        "GET",
        "/v1/status",
        &[("Authorization", "Bearer guess")],
        "",
    )
    .await?;
    assert_eq!(body, bearer_body, "the same refusal");

    // The right one: a session cookie that is not the token, and back to the page.
    let form = format!("token={token}");
    let (status, head, _) = call(&gate, "POST", "/login", &[FORM], &form).await?;
    assert_eq!(status, 303, "{head}");
    assert_eq!(header(&head, "location"), Some("/"));
    let set = header(&head, "set-cookie").ok_or_else(|| anyhow!("no cookie: {head}"))?;
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.split("; ").any(|a| a == attr), "{attr} missing: {set}");
    }
    let pair = set.split(';').next().unwrap_or_default().to_string();
    let value = pair.strip_prefix("wsgate_session=").unwrap_or_default();
    assert_eq!(value.len(), 64, "{set}");
    assert!(!set.contains(token), "the token is not in the cookie");
    let with_cookie = [("Cookie", pair.as_str())];

    // The cookie opens the JSON API.
    let (status, _, body) = call(&gate, "GET", "/v1/status", &with_cookie, "").await?;
    assert_eq!(status, 200, "{body}");
    let s: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(s["pools"][0]["backends"][0]["state"], "active");
    let (status, _, body) = call(&gate, "GET", "/v1/activity", &with_cookie, "").await?;
    assert_eq!(status, 200, "{body}");
    let a: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(a["closes"]["interval_secs"], 5);
    assert_eq!(a["reloads"], serde_json::json!([]));
    assert_eq!(a["drains"], serde_json::json!([]));

    // A state change with the cookie alone is refused, and changes nothing.
    let (status, _, body) = call(&gate, "POST", DRAIN, &with_cookie, "").await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("X-Wsgate-Csrf"), "{body}");
    let (_, _, body) = call(&gate, "GET", "/v1/status", &with_cookie, "").await?;
    let s: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(
        s["pools"][0]["backends"][0]["state"], "active",
        "not drained"
    );
    // With the header it goes through, and the drain shows in the activity.
    let cookie_and_csrf = [with_cookie[0], CSRF];
    let (status, _, body) = call(&gate, "POST", DRAIN, &cookie_and_csrf, "").await?;
    assert_eq!(status, 200, "{body}");
    let (_, _, body) = call(&gate, "GET", "/v1/activity", &with_cookie, "").await?;
    let a: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(a["drains"][0]["backend"], "chat/b1", "{a}");
    assert_eq!(a["drains"][0]["kind"], "drain", "{a}");
    // A bearer call needs no CSRF header (no browser sends it on its own).
    let bearer = format!("Bearer {token}");
    let (status, _, body) = call(
        &gate,
        "POST",
        "/v1/reload",
        &[("Authorization", bearer.as_str())],
        "",
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let (_, _, body) = call(&gate, "GET", "/v1/activity", &with_cookie, "").await?;
    let a: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(a["reloads"][0]["ok"], true, "{a}");
    assert_eq!(a["reloads"][0]["summary"], "no change", "{a}");
    // A wrong bearer token is refused even next to a good cookie.
    let both = [with_cookie[0], ("Authorization", "Bearer guess")];
    assert_eq!(call(&gate, "GET", "/v1/status", &both, "").await?.0, 401);

    // Logout: needs the header too, clears the cookie, ends the session.
    assert_eq!(
        call(&gate, "POST", "/logout", &with_cookie, "").await?.0,
        403
    );
    let (status, head, _) = call(&gate, "POST", "/logout", &cookie_and_csrf, "").await?;
    assert_eq!(status, 204, "{head}");
    let cleared = header(&head, "set-cookie").unwrap_or_default();
    assert!(
        cleared.starts_with("wsgate_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(
        call(&gate, "GET", "/v1/status", &with_cookie, "").await?.0,
        401,
        "ended"
    );
    Ok(())
}
