//! The status page's login sessions: random session ids held here with an
//! expiry, the cookie that carries one, and the pieces of a request that
//! name one. Pure: the caller passes the time and the random bytes.
//!
//! Why a random id held server-side rather than the token, or an HMAC of
//! it, in the cookie: a cookie that leaks (a copied browser profile, a
//! proxy log) then grants at most [`SESSION_LIFETIME`] of access, `POST
//! /logout` really ends it (the id is forgotten, not just unset in one
//! browser), and a restart ends every session. The price is this small
//! table, bounded by [`MAX_SESSIONS`].

use std::time::{Duration, Instant};

/// The cookie's name.
pub const COOKIE: &str = "wsgate_session";
/// How long a login lasts; the cookie's `Max-Age` says the same.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at once; a login past it ends the one closest to its
/// expiry, so logins can never grow memory.
pub const MAX_SESSIONS: usize = 32;
/// The header a cookie-authenticated request that changes state must
/// carry. A cross-site page cannot set a custom header without a CORS
/// preflight, which the admin API never approves.
pub const CSRF_HEADER: &str = "x-wsgate-csrf";

/// Random bytes of a session id (hex in the cookie).
pub type SessionId = [u8; 32];

struct Session {
    id: SessionId,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    live: Vec<Session>,
}

impl Sessions {
    /// Starts a session with `id` (fresh random bytes) at `now`; returns
    /// its cookie value.
    pub fn create(&mut self, id: SessionId, now: Instant) -> String {
        self.live.retain(|s| s.expires > now);
        if self.live.len() >= MAX_SESSIONS {
            if let Some(oldest) = (0..self.live.len()).min_by_key(|&i| self.live[i].expires) {
                self.live.swap_remove(oldest);
            }
        }
        self.live.push(Session {
            id,
            expires: now + SESSION_LIFETIME,
        });
        hex(&id)
    }

    /// Whether `value` (a cookie value) names a live session. Every held id
    /// is compared in full, so the time taken says nothing about how close
    /// a guess was.
    pub fn check(&self, value: &str, now: Instant) -> bool {
        let Some(id) = unhex(value) else {
            return false;
        };
        self.live.iter().fold(false, |found, s| {
            found | (constant_time_eq(&s.id, &id) && s.expires > now)
        })
    }

    /// Forgets the session `value` names, if any.
    pub fn end(&mut self, value: &str) {
        if let Some(id) = unhex(value) {
            self.live.retain(|s| s.id != id);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.live.len()
    }
}

/// The `Set-Cookie` value that stores `value`. HttpOnly: page scripts
/// cannot read it; SameSite=Strict: no other site's page sends it; Secure
/// when the admin listener is TLS.
pub fn set_cookie(value: &str, secure: bool) -> String {
    let secs = SESSION_LIFETIME.as_secs();
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Max-Age={secs}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that deletes the cookie.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict{secure}")
}

/// Our cookie's value among the `Cookie` headers' `name=value; ...` pairs.
pub fn cookie_value<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    headers
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
}

/// The `token` field of a form-encoded login body.
pub fn form_token(body: &[u8]) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.trim().to_string())
}

/// Compares without an early exit, so response timing does not reveal how
/// much of a guessed token was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<SessionId> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut id = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let digits = std::str::from_utf8(pair).ok()?;
        id[i] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn a_session_is_checked_until_it_expires_or_ends() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let a = s.create([7; 32], t0);
        let b = s.create([9; 32], t0);
        assert_eq!(a.len(), 64);
        assert!(s.check(&a, t0) && s.check(&b, t0));
        assert!(!s.check(&hex(&[8; 32]), t0), "an id never issued");
        assert!(!s.check("not hex", t0) && !s.check("", t0));
        assert!(!s.check(&a[..62], t0), "a truncated id");
        assert!(!s.check(&a, t0 + SESSION_LIFETIME), "expired");
        s.end(&a);
        assert!(!s.check(&a, t0) && s.check(&b, t0), "only `a` ended");
    }

    #[test]
    fn sessions_are_bounded() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let first = s.create([0; 32], t0);
        for i in 1..=MAX_SESSIONS {
            s.create([i as u8; 32], t0 + Duration::from_secs(i as u64));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(!s.check(&first, t0), "the oldest made room");
        // Expired sessions are dropped before any live one.
        let later = t0 + SESSION_LIFETIME + Duration::from_secs(MAX_SESSIONS as u64 + 1);
        s.create([200; 32], later);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn cookies_are_built_and_found() {
        let set = set_cookie("abc", false);
        assert_eq!(
            set,
            "wsgate_session=abc; Max-Age=43200; Path=/; HttpOnly; SameSite=Strict"
        );
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert!(clear_cookie(false).starts_with("wsgate_session=; Max-Age=0;"));
        assert_eq!(
            cookie_value(["theme=dark; wsgate_session=abc ; x=1"]),
            Some("abc")
        );
        assert_eq!(cookie_value(["a=1", "wsgate_session=\"q\""]), Some("q"));
        assert_eq!(cookie_value(["wsgate_sessionx=1; other=2"]), None);
        assert_eq!(cookie_value(["garbage"]), None);
        assert_eq!(cookie_value([]), None);
    }

    #[test]
    fn the_login_form_is_decoded() {
        assert_eq!(
            form_token(b"token=s3cr%2Bt%20x").as_deref(),
            Some("s3cr+t x")
        );
        assert_eq!(form_token(b"a=1&token=+abc+&b=2").as_deref(), Some("abc"));
        assert_eq!(form_token(b"tok=1"), None);
        assert_eq!(form_token(b""), None);
        assert_eq!(form_token(&[0xff, b'=', 0xfe]), None, "no panic on bytes");
    }
}
