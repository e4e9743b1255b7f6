//! The request path routes are matched on. Pure.
//!
//! A route's policy (its pool, its Origin check) must hold for every
//! spelling of a path that a backend could read as the same resource.
//! Matching the raw path let `GET /%77s` or `//ws` fall through a `/ws`
//! route to a catch-all `/` route, skipping its Origin check, while a
//! backend that normalises paths served `/ws` anyway. So requests are
//! matched on, and forwarded with, one normal form (RFC 3986 6.2.2):
//! percent-encoded unreserved characters decoded, other escapes with
//! upper-case hex. What has no single reading is refused with 400 rather
//! than guessed: empty or dot segments (also `..;x`, which Java servers
//! strip to `..`), encoded `/`, `\` or NUL, a raw `\`, and broken escapes.

use std::borrow::Cow;

/// Why a path has no single reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path has a `%` not followed by two hex digits")]
    BadEscape,
    #[error("the path encodes a `/`, `\\` or NUL (%2F, %5C, %00)")]
    EncodedSeparator,
    #[error("the path contains a `\\`")]
    Backslash,
    #[error("the path has an empty segment (`//`)")]
    EmptySegment,
    #[error("the path has a `.` or `..` segment")]
    DotSegment,
}

/// The normal form of `raw` (an origin-form path, without the query), or
/// why it is ambiguous. Borrows when `raw` is already normal, the common case.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let decoded = decode_unreserved(raw)?;
    check_segments(&decoded)?;
    Ok(decoded)
}

fn decode_unreserved(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.contains(&b'\\') {
        return Err(PathError::Backslash);
    }
    if !bytes.contains(&b'%') {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let escape = rest.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
        let byte = u8::from_str_radix(escape, 16).map_err(|_| PathError::BadEscape)?;
        // `from_str_radix` takes a leading `+`; an escape is two hex digits.
        if !escape.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PathError::BadEscape);
        }
        match byte {
            b'/' | b'\\' | 0 => return Err(PathError::EncodedSeparator),
            b if is_unreserved(b) => out.push(char::from(b)),
            b => out.push_str(&format!("%{b:02X}")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out == raw {
        Ok(Cow::Borrowed(raw))
    } else {
        Ok(Cow::Owned(out))
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Every segment but a trailing one is non-empty, and none is `.` or `..`,
/// judged on its name before any `;parameters`.
fn check_segments(path: &str) -> Result<(), PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        // `*` (OPTIONS) and the empty path of an authority have no segments.
        return Ok(());
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let name = segment.split(';').next().unwrap_or(segment);
        if name == "." || name == ".." {
            return Err(PathError::DotSegment);
        }
        let last = segments.peek().is_none();
        if name.is_empty() && (!last || !segment.is_empty()) {
            return Err(PathError::EmptySegment);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/ws",
            "/ws/",
            "/chat/room-1/x.js",
            "/a;v=1/b",
            "/%C3%A9",
        ] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(normalize("/%77s").as_deref(), Ok("/ws"));
        assert_eq!(normalize("/%57%73").as_deref(), Ok("/Ws"));
        assert_eq!(normalize("/a%7e%2d").as_deref(), Ok("/a~-"));
        assert_eq!(normalize("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(normalize("/a%20b").as_deref(), Ok("/a%20b"));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            ("//ws", PathError::EmptySegment),
            ("/a//b", PathError::EmptySegment),
            ("/;x/ws", PathError::EmptySegment),
            ("/./ws", PathError::DotSegment),
            ("/x/../ws", PathError::DotSegment),
            ("/x/..;y/ws", PathError::DotSegment),
            ("/%2e%2e/ws", PathError::DotSegment),
            ("/x/.", PathError::DotSegment),
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a%00", PathError::EncodedSeparator),
            ("/a\\b", PathError::Backslash),
            ("/a%", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/a%+f", PathError::BadEscape),
        ];
        for (path, want) in cases {
            assert_eq!(normalize(path), Err(want), "{path}");
        }
    }

    #[test]
    fn normal_form_is_a_fixed_point() {
        for p in ["/%77s", "/caf%c3%a9", "/a%20b/", "/x%7E"] {
            let once = normalize(p).unwrap().into_owned();
            assert_eq!(normalize(&once).as_deref(), Ok(once.as_str()));
        }
    }
}
