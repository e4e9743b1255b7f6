//! Reading a backend's answer to an upgrade: the response head
//! (`parse_head`) and a refusal's chunked body (`dechunk`), both fed bytes
//! a broken or hostile backend controls.
//!
//! Input, first byte even: raw bytes, parsed as a head (with a head limit
//! from the second byte) and as a chunked body. First byte odd: a body of
//! arbitrary bytes cut into arbitrary chunks and encoded, which reaches the
//! decoder's happy path that random bytes rarely do.
//!
//! Invariants:
//! - neither function panics;
//! - a complete head ends within the input and within the limit, and
//!   parsing exactly those bytes gives the same head; any shorter prefix of
//!   it is incomplete, never an error or a different head;
//! - a decoded body is at most `MAX_RELAYED_BODY` bytes;
//! - an encoded body decodes to itself, and every strict prefix of its
//!   encoding asks for more bytes.
#![no_main]

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use wsgate::fuzzing::{dechunk, parse_head, HeadError, MAX_RELAYED_BODY};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        raw(rest);
    } else {
        let _ = encoded(&mut Unstructured::new(rest));
    }
});

fn raw(data: &[u8]) {
    let Some((&limit, input)) = data.split_first() else {
        return;
    };
    let max_head = 16 + usize::from(limit) * 16;
    if let Ok(Some((head, used))) = parse_head(input, max_head) {
        assert!(used <= input.len() && used <= max_head);
        let again = parse_head(&input[..used], max_head);
        let Ok(Some((same, n))) = again else {
            panic!("the head's own bytes did not parse the same");
        };
        assert_eq!(n, used);
        assert_eq!(same.status(), head.status());
        assert_eq!(same.headers(), head.headers());
        for cut in [0, used / 3, used / 2, used.saturating_sub(1)] {
            if cut < used {
                assert!(
                    matches!(parse_head(&input[..cut], max_head), Ok(None)),
                    "a prefix of a valid head was not just incomplete"
                );
            }
        }
    }
    if let Ok(Some(body)) = dechunk(input) {
        assert!(body.len() <= MAX_RELAYED_BODY);
    }
}

fn encoded(u: &mut Unstructured<'_>) -> ArbResult<()> {
    let body: Vec<u8> = u.arbitrary()?;
    let mut wire = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let n = u.int_in_range(1..=body.len() - at)?;
        if u.arbitrary()? {
            wire.extend_from_slice(format!("{n:X};ext=v\r\n").as_bytes());
        } else {
            wire.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        }
        wire.extend_from_slice(&body[at..at + n]);
        wire.extend_from_slice(b"\r\n");
        at += n;
    }
    wire.extend_from_slice(b"0\r\n");
    if u.arbitrary()? {
        wire.extend_from_slice(b"x-trailer: 1\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    match dechunk(&wire) {
        Ok(Some(decoded)) => assert_eq!(decoded, body),
        Err(HeadError::TooLarge(_)) => assert!(body.len() > MAX_RELAYED_BODY),
        other => panic!("a valid encoding decoded to {other:?}"),
    }
    for cut in 0..wire.len() {
        assert!(
            matches!(dechunk(&wire[..cut]), Ok(None)),
            "a prefix of a valid encoding was not just incomplete"
        );
    }
    Ok(())
}
