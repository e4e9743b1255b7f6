//! Sticky-key extraction: which part of a request identifies the user.
//!
//! A route lists sources in order (`query:user`, `header:x-user-id`,
//! `cookie:session`); the first one present wins. Pure: works on
//! `http::request::Parts`-like inputs, no I/O. Values are taken as raw bytes
//! (query values percent-decoded) so the same user hashes the same however
//! the client spelled the request.

use http::header::{HeaderMap, COOKIE};

use crate::config::KeySource;

/// Returns the first non-empty key found, in source order.
pub fn extract(sources: &[KeySource], query: Option<&str>, headers: &HeaderMap) -> Option<Vec<u8>> {
    extract_with_source(sources, query, headers).map(|(_, key)| key)
}

/// [`extract`], with the source the key came from (for `wsgate route`).
pub fn extract_with_source<'s>(
    sources: &'s [KeySource],
    query: Option<&str>,
    headers: &HeaderMap,
) -> Option<(&'s KeySource, Vec<u8>)> {
    sources.iter().find_map(|s| {
        let key = match s {
            KeySource::Query(name) => query.and_then(|q| query_value(q, name)),
            KeySource::Header(name) => headers
                .get(name)
                .map(|v| v.as_bytes().to_vec())
                .filter(|v| !v.is_empty()),
            KeySource::Cookie(name) => headers
                .get_all(COOKIE)
                .iter()
                .find_map(|v| cookie_value(v.as_bytes(), name.as_bytes())),
        };
        key.map(|k| (s, k))
    })
}

fn query_value(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k.as_bytes()) == name.as_bytes())
            .then(|| percent_decode(v.as_bytes()))
            .filter(|v| !v.is_empty())
    })
}

fn cookie_value(header: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (k, v) = (&pair[..eq], &pair[eq + 1..]);
        // Cookie values may be quoted (RFC 6265 4.1.1); the quotes are not part of the key.
        let v = v
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(v);
        (trim(k) == name && !v.is_empty()).then(|| v.to_vec())
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `+` means space in form-encoded queries; `%XY` is a byte. A malformed
/// escape is kept literally rather than rejected: the key only has to be
/// stable, not pretty.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let escape = input
                    .get(i + 1)
                    .copied()
                    .and_then(hex)
                    .zip(input.get(i + 2).copied().and_then(hex));
                if let Some((high, low)) = escape {
                    out.push(high << 4 | low);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn sources() -> Vec<KeySource> {
        ["query:user", "header:x-user-id", "cookie:session"]
            .iter()
            .map(|s| KeySource::parse(s).unwrap())
            .collect()
    }

    #[test]
    fn first_present_source_wins() {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_static("bob"));
        h.insert(COOKIE, HeaderValue::from_static("a=1; session=carol"));
        let s = sources();
        assert_eq!(
            extract(&s, Some("user=alice&x=1"), &h),
            Some(b"alice".to_vec())
        );
        assert_eq!(extract(&s, Some("x=1"), &h), Some(b"bob".to_vec()));
        h.remove("x-user-id");
        assert_eq!(extract(&s, None, &h), Some(b"carol".to_vec()));
        assert_eq!(
            extract_with_source(&s, Some("user="), &h),
            Some((&s[2], b"carol".to_vec())),
            "an empty query value is absent, so the cookie is used"
        );
        h.remove(COOKIE);
        assert_eq!(extract(&s, Some("user="), &h), None);
    }

    #[test]
    fn query_decoding_is_stable() {
        let s = vec![KeySource::Query("user".into())];
        let h = HeaderMap::new();
        assert_eq!(
            extract(&s, Some("user=al%69ce"), &h),
            Some(b"alice".to_vec())
        );
        assert_eq!(extract(&s, Some("u%73er=a+b"), &h), Some(b"a b".to_vec()));
        assert_eq!(extract(&s, Some("user=100%"), &h), Some(b"100%".to_vec()));
        assert_eq!(extract(&s, Some("user=%zz"), &h), Some(b"%zz".to_vec()));
        assert_eq!(extract(&s, Some("user=%4"), &h), Some(b"%4".to_vec()));
        assert_eq!(extract(&s, Some("user"), &h), None);
    }

    #[test]
    fn cookies_with_quotes_and_multiple_headers() {
        let s = vec![KeySource::Cookie("sid".into())];
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        h.append(COOKIE, HeaderValue::from_static(" sid=\"xyz\" ; b=2"));
        assert_eq!(extract(&s, None, &h), Some(b"xyz".to_vec()));
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("sidx=1; sid="));
        assert_eq!(extract(&s, None, &h), None);
    }
}
