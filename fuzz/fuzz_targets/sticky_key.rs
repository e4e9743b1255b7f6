//! Sticky-key extraction and sticky-key sources.
//!
//! First input byte even: arbitrary sources (as `KeySource::parse` reads
//! them), query and headers. Invariants: no panic; a source that parses
//! prints back to itself; the key found for a list of sources is the key of
//! the first source that finds one alone; a key is never empty; a header
//! key is the header's bytes; a cookie key is a piece of a Cookie line; a
//! query key is no longer than the query.
//!
//! First byte odd: one user's key written the ways clients write it. A
//! value percent-encoded byte by byte at random (`%xx` in either case, `+`
//! for space, or literal) after other pairs, a cookie among others across
//! several Cookie lines, with optional whitespace and quotes, and a header:
//! whichever source comes first must give back exactly the value, so a
//! user hashes to the same backend however the request was spelled.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue, COOKIE};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use wsgate::fuzzing::{sticky_extract, KeySource};

const NAMES: &[&str] = &["cookie", "x-user-id", "x-session", "authorization"];

fn arbitrary_mode(u: &mut Unstructured) -> ArbResult<()> {
    let mut sources = Vec::new();
    for _ in 0..u.int_in_range(0..=4u8)? {
        let text: &str = u.arbitrary()?;
        if let Ok(s) = KeySource::parse(text) {
            assert_eq!(KeySource::parse(&s.to_string()), Ok(s.clone()));
            sources.push(s);
        }
    }
    let query: Option<&str> = u.arbitrary()?;
    let mut headers = HeaderMap::new();
    for _ in 0..u.int_in_range(0..=6u8)? {
        let name = if u.ratio(3, 4)? {
            HeaderName::from_static(u.choose(NAMES)?)
        } else {
            match HeaderName::from_bytes(u.arbitrary::<&[u8]>()?) {
                Ok(n) => n,
                Err(_) => continue,
            }
        };
        if let Ok(v) = HeaderValue::from_bytes(u.arbitrary::<&[u8]>()?) {
            headers.append(name, v);
        }
    }

    let key = sticky_extract(&sources, query, &headers);
    let alone: Vec<Option<Vec<u8>>> = sources
        .iter()
        .map(|s| sticky_extract(std::slice::from_ref(s), query, &headers))
        .collect();
    assert_eq!(
        key,
        alone.iter().find_map(Clone::clone),
        "first source wins"
    );
    for (s, k) in sources.iter().zip(&alone) {
        let Some(k) = k else { continue };
        assert!(!k.is_empty());
        match s {
            KeySource::Header(name) => assert_eq!(headers[name].as_bytes(), &k[..]),
            KeySource::Cookie(_) => assert!(headers
                .get_all(COOKIE)
                .iter()
                .any(|v| v.as_bytes().windows(k.len()).any(|w| w == &k[..]))),
            KeySource::Query(_) => assert!(k.len() <= query.map_or(0, str::len)),
        }
    }
    Ok(())
}

/// `bytes` as a query component, each byte spelled one of the ways a
/// client may spell it.
fn encode(u: &mut Unstructured, bytes: &[u8], out: &mut String) -> ArbResult<()> {
    for &b in bytes {
        let literal_ok = b.is_ascii_graphic() && !b"&=+%#".contains(&b);
        match u.int_in_range(0..=2u8)? {
            0 if literal_ok => out.push(char::from(b)),
            0 | 1 if b == b' ' => out.push('+'),
            1 => out.push_str(&format!("%{b:02X}")),
            _ => out.push_str(&format!("%{b:02x}")),
        }
    }
    Ok(())
}

/// Optional whitespace around cookie pairs.
fn ows(u: &mut Unstructured) -> ArbResult<&'static str> {
    u.choose(&["", " ", "  ", "\t", " \t"]).copied()
}

/// A cookie name: visible ASCII without `;`, `=`, or `"`; never empty.
fn cookie_name(u: &mut Unstructured) -> ArbResult<String> {
    let raw: &[u8] = u.arbitrary()?;
    let mut name: String = raw
        .iter()
        .map(|&b| char::from(b'!' + b % 94))
        .filter(|c| !";=\"".contains(*c))
        .take(16)
        .collect();
    if name.is_empty() {
        name.push('s');
    }
    Ok(name)
}

fn spelled_mode(u: &mut Unstructured) -> ArbResult<()> {
    // The user's key: non-empty bytes a header value and a cookie can hold.
    let raw: &[u8] = u.arbitrary()?;
    let value: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|&b| b.is_ascii_graphic() && b != b';' && b != b'"' || b >= 0x80)
        .take(64)
        .collect();
    if value.is_empty() {
        return Ok(());
    }

    // Query: other pairs first (a different name, or this name with an
    // empty value, which does not count), then the key, then anything.
    let qname: &str = u.arbitrary()?;
    if qname.is_empty() {
        return Ok(());
    }
    let mut query = String::new();
    for _ in 0..u.int_in_range(0..=3u8)? {
        let other: &str = u.arbitrary()?;
        if other == qname {
            encode(u, other.as_bytes(), &mut query)?;
            if u.arbitrary()? {
                query.push('=');
            }
        } else {
            encode(u, other.as_bytes(), &mut query)?;
            query.push('=');
            let v: &[u8] = u.arbitrary()?;
            encode(u, v, &mut query)?;
        }
        query.push('&');
    }
    encode(u, qname.as_bytes(), &mut query)?;
    query.push('=');
    encode(u, &value, &mut query)?;
    if u.arbitrary()? {
        query.push('&');
        query.push_str(u.arbitrary()?);
    }

    // Cookies: other pairs, then the key (maybe quoted), over 1-3 lines.
    let cname = cookie_name(u)?;
    let mut pairs = Vec::new();
    for _ in 0..u.int_in_range(0..=3u8)? {
        let other = cookie_name(u)?;
        if other == cname {
            pairs.push(format!(
                "{other}={}",
                if u.arbitrary()? { "" } else { "\"\"" }
            ));
        } else {
            pairs.push(format!("{other}={}", cookie_name(u)?));
        }
        if u.arbitrary()? {
            pairs.push(cookie_name(u)?); // no `=`: not a pair, ignored
        }
    }
    let cookie_value_bytes = if u.arbitrary()? {
        [&b"\""[..], &value, b"\""].concat()
    } else {
        value.clone()
    };
    let lines = u.int_in_range(1..=3usize)?;
    let mut cookie_lines: Vec<Vec<u8>> = vec![Vec::new(); lines];
    let target_line = u.int_in_range(0..=lines - 1)?;
    for p in &pairs {
        // Pairs before the key go on its line or an earlier one.
        let line = u.int_in_range(0..=target_line)?;
        let l = &mut cookie_lines[line];
        l.extend_from_slice(format!("{}{p}{};", ows(u)?, ows(u)?).as_bytes());
    }
    {
        let l = &mut cookie_lines[target_line];
        l.extend_from_slice(format!("{}{cname}{}=", ows(u)?, ows(u)?).as_bytes());
        l.extend_from_slice(&cookie_value_bytes);
        l.extend_from_slice(format!("{};", ows(u)?).as_bytes());
    }

    let header = HeaderName::from_static(u.choose(&NAMES[1..])?);
    let mut headers = HeaderMap::new();
    for l in &cookie_lines {
        if let Ok(v) = HeaderValue::from_bytes(l) {
            headers.append(COOKIE, v);
        } else {
            return Ok(());
        }
    }
    headers.append(header.clone(), HeaderValue::from_bytes(&value).unwrap());

    let mut sources = vec![
        KeySource::Query(qname.to_string()),
        KeySource::Cookie(cname),
        KeySource::Header(header),
    ];
    let first = u.int_in_range(0..=2usize)?;
    sources.rotate_left(first);
    // A source that finds nothing in front of the others changes nothing.
    if u.arbitrary()? {
        sources.insert(0, KeySource::Header(HeaderName::from_static("x-absent")));
    }
    assert_eq!(
        sticky_extract(&sources, Some(&query), &headers),
        Some(value),
        "sources {sources:?}, query {query:?}, headers {headers:?}"
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    let _ = if mode & 1 == 0 {
        arbitrary_mode(&mut u)
    } else {
        spelled_mode(&mut u)
    };
});
