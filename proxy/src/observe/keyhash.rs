//! The sticky key as the access log shows it: by default a keyed hash, so
//! the log can tell one user's sessions apart from another's without
//! holding the key (often a user id or a session cookie).
//!
//! HMAC-SHA256 (from `ring`, which rustls already builds) truncated to 64
//! bits, keyed with 32 random bytes drawn once per process. The same key
//! hashes the same within one process's log, so "all sessions of this
//! user" is one grep; across restarts and replicas the hashes differ,
//! which is the point: a log line alone never lets anyone test a guessed
//! user id. The ring's own `key_hash` (xxh3 with a fixed seed) is not used:
//! anyone could compute it for a guessed key. Who needs the key itself sets
//! `access_log.log_raw_key: true`.

use ring::hmac;

pub(crate) struct KeyHasher {
    key: hmac::Key,
}

impl Default for KeyHasher {
    fn default() -> Self {
        let bytes: [u8; 32] = rand::random();
        KeyHasher::with_key(&bytes)
    }
}

impl KeyHasher {
    pub fn with_key(bytes: &[u8]) -> Self {
        KeyHasher {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// 16 hex digits: the first 64 bits of HMAC-SHA256(key, sticky key).
    pub fn hash(&self, sticky_key: &[u8]) -> String {
        let tag = hmac::sign(&self.key, sticky_key);
        tag.as_ref()[..8]
            .iter()
            .fold(String::with_capacity(16), |mut s, b| {
                use std::fmt::Write as _;
                let _ = write!(s, "{b:02x}");
                s
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_stable_within_a_key_and_different_across_keys() {
        // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for
        // nothing?") begins 5bdcc146bf60754e.
        let h = KeyHasher::with_key(b"Jefe");
        assert_eq!(h.hash(b"what do ya want for nothing?"), "5bdcc146bf60754e");
        assert_eq!(h.hash(b"alice"), h.hash(b"alice"));
        assert_ne!(h.hash(b"alice"), h.hash(b"bob"));
        let other = KeyHasher::default();
        assert_ne!(other.hash(b"alice"), h.hash(b"alice"), "per-process key");
    }
}
