//! The frame tracker against an independent whole-buffer model of RFC 6455
//! framing, fed in one piece, byte by byte and at arbitrary cuts, with and
//! without `stop_at_boundary`.
//!
//! Input: a flags byte (sender, limit), a 16-bit limit, a cut count and
//! 16-bit cuts, then the stream. Invariants:
//! - every feeding reports the frame ends, data-frame counts and Close
//!   frames the model finds, and the same error at the same byte;
//! - `at_boundary` is true exactly at the model's frame ends;
//! - with `stop_at_boundary`, each call stops at the next frame end (or the
//!   end of its piece) and consumes at least one byte of a non-empty piece;
//! - after an error, feeding the offending byte again repeats the error;
//! - Close frames wsgate encodes are one frame to the tracker and parse back
//!   to their code and (truncated) reason; parsing arbitrary Close payloads
//!   never panics and classifies them as the RFC says.
#![no_main]

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use wsgate::fuzzing::{
    encode_close, is_valid_close_code, parse_close_payload, CloseParseError, FrameError,
    FrameTracker, Sender, MAX_CONTROL_PAYLOAD,
};

/// What the model finds in a whole stream.
struct Model {
    /// End offset of each complete frame, and whether it was a data frame
    /// (`Some(true)`), a Close (`Some(false)`) or another control (`None`).
    ends: Vec<(usize, Option<bool>)>,
    /// The first violation: the offset of the byte revealing it, and it.
    error: Option<(usize, FrameError)>,
}

impl Model {
    fn is_end(&self, at: usize) -> bool {
        self.ends.binary_search_by_key(&at, |e| e.0).is_ok()
    }

    /// Data frames ended in `(from, to]`, and whether a Close did.
    fn ended_in(&self, from: usize, to: usize) -> (u32, bool) {
        let frames = self.ends.iter().filter(|e| e.0 > from && e.0 <= to);
        let data = frames.clone().filter(|e| e.1 == Some(true)).count() as u32;
        (data, frames.clone().any(|e| e.1 == Some(false)))
    }

    /// The error if it is revealed by a byte in `[from, to)`.
    fn error_in(&self, from: usize, to: usize) -> Option<&FrameError> {
        self.error
            .as_ref()
            .filter(|(at, _)| (from..to).contains(at))
            .map(|(_, e)| e)
    }
}

/// RFC 6455 5.2 read frame by frame from the whole buffer, with the
/// tracker's documented rules (module doc of `tunnel::frame`).
fn model(buf: &[u8], sender: Sender, limit: u64) -> Model {
    let mut ends = Vec::new();
    let mut pos = 0usize;
    let mut in_message = false;
    let mut budget = limit;
    let fail = |ends, at, e| Model {
        ends,
        error: Some((at, e)),
    };
    while pos < buf.len() {
        let start = pos;
        let b0 = buf[start];
        let fin = b0 & 0x80 != 0;
        let op = b0 & 0x0F;
        let control = match op {
            0x0..=0x2 => false,
            0x8..=0xA => true,
            _ => return fail(ends, start, FrameError::ReservedOpcode(op)),
        };
        if control && !fin {
            return fail(ends, start, FrameError::ControlFrameFragmented);
        }
        match op {
            0x0 if !in_message => return fail(ends, start, FrameError::UnexpectedContinuation),
            0x0 => in_message = !fin,
            0x1 | 0x2 if in_message => return fail(ends, start, FrameError::ExpectedContinuation),
            0x1 | 0x2 => {
                in_message = !fin;
                budget = limit;
            }
            _ => {}
        }
        let Some(&b1) = buf.get(start + 1) else { break };
        let masked = b1 & 0x80 != 0;
        let must_mask = sender == Sender::Client;
        if masked != must_mask {
            let e = FrameError::MaskMismatch {
                expected_masked: must_mask,
            };
            return fail(ends, start + 1, e);
        }
        let len7 = u64::from(b1 & 0x7F);
        if control && len7 > MAX_CONTROL_PAYLOAD as u64 {
            return fail(ends, start + 1, FrameError::ControlFrameTooLong(len7));
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        // The byte that completes the length.
        let len_at = start + 1 + ext;
        let Some(ext_bytes) = buf.get(start + 2..len_at + 1) else {
            break;
        };
        let len = if ext == 0 {
            len7
        } else {
            ext_bytes
                .iter()
                .fold(0u64, |acc, &b| acc << 8 | u64::from(b))
        };
        if len >> 63 != 0 {
            return fail(ends, len_at, FrameError::InvalidPayloadLength(len));
        }
        if !control {
            if len > budget {
                return fail(ends, len_at, FrameError::MessageTooBig { limit });
            }
            budget -= len;
        }
        let header_len = 2 + ext + if masked { 4 } else { 0 };
        // Fits: `len` < 2^63 and `buf.len()` is small; the sum is compared
        // in u64 so a huge length just means "not complete in this buffer".
        let end = start as u64 + header_len as u64 + len;
        if end > buf.len() as u64 {
            break;
        }
        pos = end as usize;
        let kind = if !control {
            Some(true)
        } else if op == 0x8 {
            Some(false)
        } else {
            None
        };
        ends.push((pos, kind));
    }
    Model { ends, error: None }
}

/// Feeds `buf` in pieces ending at `cuts` (sorted, may repeat, may be 0).
fn check_pieces(buf: &[u8], cuts: &[usize], sender: Sender, limit: u64, m: &Model, stop: bool) {
    let mut t = FrameTracker::new(sender, limit);
    let mut pos = 0;
    for &cut in cuts {
        if !stop || pos == cut {
            let piece = &buf[pos..cut];
            match t.advance(piece, stop) {
                Err(e) => {
                    assert_eq!(Some(&e), m.error_in(pos, cut), "piece {pos}..{cut}");
                    let at = m.error.as_ref().unwrap().0;
                    // The tracker stays just before the offending byte.
                    assert_eq!(t.advance(&buf[at..cut], stop), Err(e));
                    return;
                }
                Ok(adv) => {
                    assert_eq!(m.error_in(pos, cut), None, "piece {pos}..{cut}");
                    assert_eq!(adv.consumed, piece.len());
                    let (data, close) = m.ended_in(pos, cut);
                    assert_eq!(
                        (adv.data_frames_ended, adv.close_frame_ended),
                        (data, close)
                    );
                    assert_eq!(t.at_boundary(), pos == cut && pos == 0 || m.is_end(cut));
                }
            }
            pos = cut;
            continue;
        }
        // stop_at_boundary: one frame end at most per call.
        while pos < cut {
            match t.advance(&buf[pos..cut], true) {
                Err(e) => {
                    assert_eq!(Some(&e), m.error_in(pos, cut), "piece {pos}..{cut}");
                    let at = m.error.as_ref().unwrap().0;
                    assert_eq!(t.advance(&buf[at..cut], true), Err(e));
                    return;
                }
                Ok(adv) => {
                    let next_end = m.ends.iter().map(|e| e.0).find(|&e| e > pos);
                    let expect = next_end.map_or(cut, |e| e.min(cut));
                    assert!(adv.consumed >= 1);
                    assert_eq!(pos + adv.consumed, expect, "stop from {pos} in ..{cut}");
                    // No error can lie before the bytes consumed.
                    assert_eq!(m.error_in(pos, expect), None);
                    let (data, close) = m.ended_in(pos, expect);
                    assert_eq!(
                        (adv.data_frames_ended, adv.close_frame_ended),
                        (data, close)
                    );
                    assert_eq!(t.at_boundary(), m.is_end(expect));
                    pos = expect;
                }
            }
        }
    }
}

fn check_stream(buf: &[u8], cuts: &[usize], sender: Sender, limit: u64) {
    let m = model(buf, sender, limit);

    // One piece.
    let mut t = FrameTracker::new(sender, limit);
    match t.advance(buf, false) {
        Ok(adv) => {
            assert!(m.error.is_none());
            assert_eq!(adv.consumed, buf.len());
            let (data, close) = m.ended_in(0, buf.len());
            assert_eq!(
                (adv.data_frames_ended, adv.close_frame_ended),
                (data, close)
            );
            assert_eq!(t.at_boundary(), buf.is_empty() || m.is_end(buf.len()));
        }
        Err(e) => assert_eq!(Some(&e), m.error.as_ref().map(|x| &x.1)),
    }

    // Byte by byte: the error surfaces at exactly the model's byte.
    let mut t = FrameTracker::new(sender, limit);
    for (i, b) in buf.iter().enumerate() {
        match t.advance(std::slice::from_ref(b), false) {
            Ok(adv) => {
                assert_eq!(adv.consumed, 1);
                assert_eq!(m.error_in(i, i + 1), None, "byte {i}");
                let (data, close) = m.ended_in(i, i + 1);
                assert_eq!(
                    (adv.data_frames_ended, adv.close_frame_ended),
                    (data, close)
                );
                assert_eq!(t.at_boundary(), m.is_end(i + 1), "after byte {i}");
            }
            Err(e) => {
                assert_eq!(Some(&e), m.error_in(i, i + 1), "byte {i}");
                assert_eq!(t.advance(std::slice::from_ref(b), true), Err(e));
                break;
            }
        }
    }

    // Arbitrary pieces, both modes.
    check_pieces(buf, cuts, sender, limit, &m, false);
    check_pieces(buf, cuts, sender, limit, &m, true);
}

/// Close frames wsgate writes, and Close payloads peers write.
fn check_close(u: &mut Unstructured) -> ArbResult<()> {
    let code: u16 = u.arbitrary()?;
    let masked: bool = u.arbitrary()?;
    let key: [u8; 4] = u.arbitrary()?;
    let reason: &str = u.arbitrary()?;
    let (mask, sender) = if masked {
        (Some(key), Sender::Client)
    } else {
        (None, Sender::Server)
    };
    let frame = encode_close(code, reason, mask);
    let bytes = frame.as_bytes();
    let mut t = FrameTracker::new(sender, 0);
    let adv = t.advance(bytes, true).unwrap();
    assert_eq!(adv.consumed, bytes.len());
    assert!(adv.close_frame_ended && t.at_boundary());
    let mut payload = bytes[if masked { 6 } else { 2 }..].to_vec();
    if let Some(key) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
    match parse_close_payload(&payload) {
        Ok((got, r)) => {
            assert!(is_valid_close_code(code));
            assert_eq!(got, Some(code));
            assert!(reason.starts_with(r));
            // Cut only at the last char boundary that fits 123 bytes.
            let fits = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
            assert!(r.len() <= fits && r.len() + 4 > fits);
        }
        Err(e) => {
            assert!(!is_valid_close_code(code));
            assert_eq!(e, CloseParseError::InvalidCode(code));
        }
    }

    let raw: &[u8] = u.arbitrary()?;
    match parse_close_payload(raw) {
        Ok((None, "")) => assert!(raw.is_empty()),
        Ok((Some(c), r)) => {
            assert!(is_valid_close_code(c) && raw.len() <= MAX_CONTROL_PAYLOAD);
            assert_eq!(u16::from_be_bytes([raw[0], raw[1]]), c);
            assert_eq!(r.as_bytes(), &raw[2..]);
        }
        Ok((None, _)) => unreachable!("a reason without a code"),
        Err(CloseParseError::TooLong(n)) => assert!(n == raw.len() && n > MAX_CONTROL_PAYLOAD),
        Err(CloseParseError::Truncated) => assert_eq!(raw.len(), 1),
        Err(CloseParseError::InvalidCode(c)) => assert!(!is_valid_close_code(c)),
        Err(e @ CloseParseError::InvalidUtf8) => {
            assert!(std::str::from_utf8(&raw[2..]).is_err());
            assert_eq!(e.close_code(), 1007);
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(flags) = u.arbitrary::<u8>() else {
        return;
    };
    let Ok(limit16) = u.arbitrary::<u16>() else {
        return;
    };
    let Ok(ncuts) = u.int_in_range(0..=16u8) else {
        return;
    };
    let mut cuts = Vec::new();
    for _ in 0..ncuts {
        let Ok(c) = u.arbitrary::<u16>() else { return };
        cuts.push(usize::from(c));
    }
    if flags & 0x80 != 0 {
        // Rarely: the Close encoder and parser instead of a stream.
        let _ = check_close(&mut u);
        return;
    }
    let sender = if flags & 1 != 0 {
        Sender::Client
    } else {
        Sender::Server
    };
    let limit = match flags >> 1 & 3 {
        0 => u64::MAX,
        1 => u64::from(limit16),
        2 => u64::from(limit16 & 0xFF),
        _ => u64::from(limit16) << 16,
    };
    let buf = u.take_rest();
    for c in &mut cuts {
        *c %= buf.len() + 1;
    }
    cuts.push(buf.len());
    cuts.sort_unstable();
    check_stream(buf, &cuts, sender, limit);
});
