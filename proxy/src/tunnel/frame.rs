//! Incremental RFC 6455 frame-header tracking for one direction of a spliced
//! WebSocket connection, plus encoding of the few frames the proxy writes
//! itself (Close, and Ping).
//!
//! The proxy copies payload bytes unchanged and never gathers messages. A
//! [`FrameTracker`] reads only the 2-14 header bytes of each frame, enough to
//! know where the next frame starts, and skips payloads arithmetically (a
//! 16 MiB payload costs the same as a 16 byte one). That way the proxy always
//! knows whether its output stream is at a frame boundary, which is the only
//! place it may inject a Close frame of its own.
//!
//! Everything here is pure: no I/O, and no allocation. A header split across
//! reads is decoded byte by byte into the tracker's own fields, so nothing
//! has to be staged or copied.
//!
//! What the tracker checks, and what it deliberately does not:
//! - opcodes (reserved ones are errors), control-frame rules (FIN set,
//!   payload <= 125), the masking rule for the side that sends (RFC 6455
//!   5.1), fragmentation order, the most significant bit of a 64-bit length,
//!   and an optional per-message size limit;
//! - RSV bits are passed through unchecked: extensions such as
//!   permessage-deflate are negotiated end to end between the client and the
//!   backend, so only they know what the bits mean;
//! - a length encoded in more bytes than needed (e.g. 5 in the 16-bit form) is
//!   accepted: the RFC forbids it, but the frame is still unambiguous, and a
//!   transparent proxy should not break conversations that would work
//!   without it; the endpoints enforce the rule if they care;
//! - data payloads (UTF-8 of text) are never looked at: that would mean
//!   gathering and unmasking them. The one exception is the first two
//!   payload bytes of a Close frame, unmasked as they pass (no gathering),
//!   so the tunnel can say which code each side closed with.
//!
//! Besides boundaries, a tracker counts what it saw end, for the session's
//! access line and metrics: complete data messages (a data frame with FIN)
//! and the first Close frame's code and reason length. Plain integers in
//! the tracker: a tunnel's two pumps run in one task, so counting per
//! message touches nothing shared.

use thiserror::Error;

/// Close status codes (RFC 6455 7.4.1 and the IANA registry) the proxy uses.
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Payload inconsistent with its type, e.g. a Close reason that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const BAD_GATEWAY: u16 = 1014;
}

/// Largest payload of a control frame (RFC 6455 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcode. Built from the 4-bit field; reserved values are errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    /// Decodes the 4-bit opcode field.
    pub fn from_u8(v: u8) -> Result<Self, FrameError> {
        Ok(match v {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            other => return Err(FrameError::ReservedOpcode(other)),
        })
    }

    /// The 4-bit opcode field.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, Ping and Pong.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }

    /// Text, Binary and Continuation: the frames that make up messages.
    pub fn is_data(self) -> bool {
        !self.is_control()
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1..RSV3 as the low 3 bits (RSV1 = 0b100); passed through unchecked.
    pub rsv: u8,
    pub opcode: Opcode,
    pub masked: bool,
    pub payload_len: u64,
    /// 2 to 14: base, extended length, mask key.
    pub header_len: u8,
}

/// Which side sends the frames a tracker sees. Client frames MUST be masked
/// and server frames MUST NOT be (RFC 6455 5.1); a violation is a protocol
/// error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

impl Sender {
    /// Whether this side's frames must carry a mask key.
    pub fn must_mask(self) -> bool {
        self == Self::Client
    }
}

/// A protocol violation found in a frame header. After one, close the
/// connection with [`FrameError::close_code`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Opcode 3-7 or 0xB-0xF: a peer using an extension opcode nobody
    /// negotiated, or a stream that is not (or no longer) WebSocket framing,
    /// e.g. after a byte was lost or a non-WebSocket server answered.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A Close, Ping or Pong announcing more than 125 payload bytes. The
    /// value is the 7-bit length field, so 126 or 127 when an extended length
    /// was announced (its value is not waited for). Usually a broken peer.
    #[error("control frame payload too long (length field {0})")]
    ControlFrameTooLong(u64),
    /// A control frame without FIN: control frames cannot be fragmented.
    #[error("fragmented control frame")]
    ControlFrameFragmented,
    /// A client frame without mask key, or a server frame with one. Usually a
    /// peer that does not implement RFC 6455 5.1, or the tracker built with
    /// the wrong [`Sender`].
    #[error("frame masking is wrong for its sender (expected masked: {expected_masked})")]
    MaskMismatch { expected_masked: bool },
    /// A 64-bit length with its most significant bit set (RFC 6455 5.2);
    /// garbage rather than a real 8 EiB frame.
    #[error("invalid 64-bit payload length {0:#x}")]
    InvalidPayloadLength(u64),
    /// A Continuation frame with no fragmented message in progress: a peer
    /// bug, or a tracker that started mid-stream.
    #[error("continuation frame outside a fragmented message")]
    UnexpectedContinuation,
    /// A new Text or Binary frame while a fragmented message awaits its FIN
    /// continuation: the peer interleaved two messages.
    #[error("new data frame inside a fragmented message")]
    ExpectedContinuation,
    /// The data frames of one message announce more than the configured
    /// limit in total.
    #[error("message exceeds {limit} bytes")]
    MessageTooBig { limit: u64 },
}

impl FrameError {
    /// The close code to send when closing because of this error.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::MessageTooBig { .. } => close_code::TOO_BIG,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

/// A framing error found by [`FrameTracker::advance_to_error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub error: FrameError,
    /// Offset in the buffer of the last frame boundary before the error,
    /// or `None` when the buffer began mid-frame and no frame ended before
    /// the error (nothing of it can be forwarded at a boundary).
    pub boundary: Option<usize>,
}

/// What one [`FrameTracker::advance`] call consumed and saw complete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Advance {
    pub consumed: usize,
    /// Frames that ended within the consumed bytes, counted by kind (so the
    /// proxy can count data frames it discards after sending Close, and
    /// notice the peer's Close). Data = Text, Binary, Continuation.
    pub data_frames_ended: u32,
    /// A Close frame ended in the consumed bytes.
    pub close_frame_ended: bool,
}

/// Tracks frame boundaries in one direction of a WebSocket byte stream.
///
/// Invariant: `seen` header bytes of the current frame have been fed; the
/// frame's header is complete once `seen == hdr.header_len` (`header_len` is
/// 2 until the second byte tells the real value). `seen == 0` is a boundary.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    /// Header of the current frame, filled in as its bytes arrive.
    hdr: FrameHeader,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// Payload bytes the current message may still announce.
    budget: u32,
    /// The limit, or [`UNLIMITED`]. 32 bits (the config caps it at 1 GiB)
    /// leave room in the tracker's 48 bytes for the counts below.
    max_message_bytes: u32,
    seen: u8,
    sender: Sender,
    in_message: bool,
    /// The first Close frame's progress: [`CLOSE_NONE`] until its header
    /// is complete, then [`CLOSE_CODE_START`] + payload bytes of the code
    /// taken (0-2), then [`CLOSE_DONE`] + its payload length (at most 125)
    /// once it ended. Later Close frames (a broken peer) change nothing.
    /// One byte for both keeps the tracker at 48 bytes.
    close_state: u8,
    /// The first two bytes of a Close frame's mask key (client frames):
    /// all that unmasking its code takes.
    close_mask: [u8; 2],
    /// The code's bytes as unmasked so far, big-endian.
    close_code: u16,
    /// Complete data messages: data frames with FIN that ended.
    messages: u64,
}

/// `max_message_bytes` for no limit: any limit of 4 GiB or more.
const UNLIMITED: u32 = u32::MAX;

/// `close_state` values; see [`FrameTracker`].
const CLOSE_NONE: u8 = 0;
const CLOSE_CODE_START: u8 = 1;
/// Plus the payload length.
const CLOSE_DONE: u8 = 4;

/// The Close frame one side of a session sent, as the tracker saw it pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerClose {
    /// The status code; `None` for a Close with an empty payload (which the
    /// receiver reports as 1005) or a 1-byte one.
    pub code: Option<u16>,
    /// Bytes of the reason (the payload after the code).
    pub reason_len: u8,
}

impl FrameTracker {
    /// `max_message_bytes` bounds the sum of the payload lengths of the data
    /// frames of one message (first frame plus continuations until FIN);
    /// exceeding it is [`FrameError::MessageTooBig`]. `u64::MAX` (or any
    /// value of 4 GiB - 1 or more) = unlimited.
    /// Control frames interleaved in a message do not count.
    pub fn new(sender: Sender, max_message_bytes: u64) -> Self {
        let max_message_bytes = u32::try_from(max_message_bytes).unwrap_or(UNLIMITED);
        Self {
            hdr: FrameHeader {
                fin: true,
                rsv: 0,
                opcode: Opcode::Continuation,
                masked: false,
                payload_len: 0,
                header_len: 2,
            },
            remaining: 0,
            budget: max_message_bytes,
            max_message_bytes,
            seen: 0,
            sender,
            in_message: false,
            close_state: CLOSE_NONE,
            close_mask: [0; 2],
            close_code: 0,
            messages: 0,
        }
    }

    /// Complete data messages seen so far (a message ends with the data
    /// frame that has FIN; control frames are not messages).
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// The first Close frame that ended in this direction, if any.
    pub fn peer_close(&self) -> Option<PeerClose> {
        (self.close_state >= CLOSE_DONE).then(|| {
            let len = self.close_state - CLOSE_DONE;
            PeerClose {
                code: (len >= 2).then_some(self.close_code),
                reason_len: len.saturating_sub(2),
            }
        })
    }

    /// Takes what a Close payload chunk holds of the code: called only in
    /// the payload of the first Close frame, before `remaining` shrinks.
    fn take_close_code(&mut self, payload: &[u8]) {
        let done = self.hdr.payload_len - self.remaining;
        for (i, &b) in payload.iter().enumerate().take(2) {
            let at = done + i as u64;
            if at >= 2 {
                break;
            }
            // `at` is 0 or 1 here.
            let b = b ^ self.close_mask[at as usize];
            self.close_code = self.close_code << 8 | u16::from(b);
            self.close_state += 1;
        }
    }

    /// True when every byte fed so far ends exactly at the end of a frame (or
    /// nothing was fed yet).
    pub fn at_boundary(&self) -> bool {
        self.seen == 0
    }

    /// Header of the frame whose payload is being passed through (tests
    /// observe the tracker through this and the next two): `Some`
    /// from the moment its header is complete until its last payload byte.
    /// `None` at a boundary and while a header is still incomplete, so never
    /// for zero-length frames, which end with their header.
    #[cfg(test)]
    pub fn current(&self) -> Option<&FrameHeader> {
        (self.seen != 0 && self.seen == self.hdr.header_len).then_some(&self.hdr)
    }

    /// Bytes until the next boundary: `Some(0)` at a boundary, the rest of
    /// the payload once a header is complete, `None` mid-header.
    #[cfg(test)]
    pub fn bytes_to_boundary(&self) -> Option<u64> {
        match self.seen {
            0 => Some(0),
            s if s == self.hdr.header_len => Some(self.remaining),
            _ => None,
        }
    }

    /// True while inside a fragmented data message: from the first header
    /// byte of a Text/Binary frame without FIN up to the first header byte of
    /// the Continuation with FIN. Control frames may be interleaved.
    #[cfg(test)]
    pub fn in_message(&self) -> bool {
        self.in_message
    }

    /// Feeds bytes that are about to be forwarded, in stream order.
    ///
    /// With `stop_at_boundary == false`, consumes all of `buf` unless an
    /// error occurs. With `true`, consumes bytes up to and including the end
    /// of the first frame that ends inside `buf`, and all of `buf` if none
    /// does. From a boundary that means the whole next frame if it fits; in
    /// the middle of a frame, the rest of that frame. A non-empty `buf`
    /// always consumes at least one byte, an empty one none. (Use: a proxy
    /// asked to close forwards up to the next boundary, then writes Close.)
    ///
    /// Errors are reported as soon as the header byte revealing them is fed.
    /// The bytes before it count as fed and the tracker stays just before
    /// it, so feeding it again repeats the error. Close the connection with
    /// [`FrameError::close_code`]; [`Self::advance_to_error`] also says
    /// which complete frames came before the error.
    pub fn advance(&mut self, buf: &[u8], stop_at_boundary: bool) -> Result<Advance, FrameError> {
        self.advance_inner(buf, stop_at_boundary)
            .map_err(|broken| broken.error)
    }

    /// [`Self::advance`] of all of `buf`, reporting on error where the last
    /// frame boundary before the offending byte was: those bytes hold only
    /// whole, valid frames (after the rest of a frame begun earlier), so a
    /// proxy can forward them and then close at that boundary.
    pub fn advance_to_error(&mut self, buf: &[u8]) -> Result<Advance, Broken> {
        self.advance_inner(buf, false)
    }

    fn advance_inner(&mut self, buf: &[u8], stop_at_boundary: bool) -> Result<Advance, Broken> {
        let mut adv = Advance::default();
        let mut pos = 0;
        let mut boundary = self.at_boundary().then_some(0);
        while pos < buf.len() {
            if self.seen < self.hdr.header_len {
                // Header bytes are decoded one at a time (a header may be
                // split anywhere), in an inner loop to keep this one short.
                let n = self
                    .header_bytes(&buf[pos..])
                    .map_err(|error| Broken { error, boundary })?;
                pos += n;
                if self.seen < self.hdr.header_len || self.remaining > 0 {
                    continue;
                }
            } else {
                // Payload: skipped, never looked at. `take` fits in usize
                // because it is at most the length of the rest of `buf`.
                let take = self.remaining.min((buf.len() - pos) as u64);
                if self.close_state > CLOSE_NONE && self.close_state < CLOSE_CODE_START + 2 {
                    // The code of the first Close, unmasked as it passes.
                    self.take_close_code(&buf[pos..pos + take as usize]);
                }
                pos += take as usize;
                self.remaining -= take;
                if self.remaining > 0 {
                    continue;
                }
            }
            // The current frame ended at `pos`.
            if self.hdr.opcode.is_data() {
                adv.data_frames_ended = adv.data_frames_ended.saturating_add(1);
                if self.hdr.fin {
                    self.messages += 1;
                }
            } else if self.hdr.opcode == Opcode::Close {
                adv.close_frame_ended = true;
                if self.close_state > CLOSE_NONE && self.close_state < CLOSE_DONE {
                    // At most 125 (the control-frame rule was checked at
                    // the header's second byte), so 4 + 125 fits a byte.
                    let len = self.hdr.payload_len.min(MAX_CONTROL_PAYLOAD as u64) as u8;
                    self.close_state = CLOSE_DONE + len;
                }
            }
            self.seen = 0;
            boundary = Some(pos);
            if stop_at_boundary {
                break;
            }
        }
        adv.consumed = pos;
        Ok(adv)
    }

    /// Feeds header bytes from the start of `buf` (non-empty) until the
    /// header is complete or `buf` runs out; returns how many were used.
    /// Each byte's checks run before its effects are kept, so on error the
    /// tracker is left as it was before the offending byte.
    fn header_bytes(&mut self, buf: &[u8]) -> Result<usize, FrameError> {
        let mut used = 0;
        for &b in buf {
            let i = self.seen;
            match i {
                0 => self.first_byte(b)?,
                1 => self.second_byte(b)?,
                _ => {
                    let ext_end = self.hdr.header_len - if self.hdr.masked { 4 } else { 0 };
                    if i < ext_end {
                        let len = self.hdr.payload_len << 8 | u64::from(b);
                        if i + 1 == ext_end {
                            self.check_length(len)?;
                        }
                        self.hdr.payload_len = len;
                    }
                    // Mask key bytes need no decoding (the payload is
                    // forwarded still masked), but a Close's code is read.
                    else if self.hdr.opcode == Opcode::Close && i - ext_end < 2 {
                        self.close_mask[usize::from(i - ext_end)] = b;
                    }
                }
            }
            self.seen = i + 1;
            used += 1;
            if self.seen == self.hdr.header_len {
                self.remaining = self.hdr.payload_len;
                if self.hdr.opcode == Opcode::Close && self.close_state == CLOSE_NONE {
                    self.close_state = CLOSE_CODE_START;
                    self.close_code = 0;
                    if !self.hdr.masked {
                        self.close_mask = [0; 2];
                    }
                }
                break;
            }
        }
        Ok(used)
    }

    /// FIN, RSV, opcode; fragmentation order.
    fn first_byte(&mut self, b: u8) -> Result<(), FrameError> {
        let opcode = Opcode::from_u8(b & 0x0F)?;
        let fin = b & 0x80 != 0;
        match opcode {
            Opcode::Close | Opcode::Ping | Opcode::Pong if !fin => {
                return Err(FrameError::ControlFrameFragmented)
            }
            Opcode::Close | Opcode::Ping | Opcode::Pong => {}
            Opcode::Continuation if !self.in_message => {
                return Err(FrameError::UnexpectedContinuation)
            }
            Opcode::Continuation => self.in_message = !fin,
            Opcode::Text | Opcode::Binary if self.in_message => {
                return Err(FrameError::ExpectedContinuation)
            }
            Opcode::Text | Opcode::Binary => {
                self.in_message = !fin;
                self.budget = self.max_message_bytes;
            }
        }
        self.hdr = FrameHeader {
            fin,
            rsv: (b >> 4) & 0b111,
            opcode,
            masked: false,
            payload_len: 0,
            header_len: 2,
        };
        Ok(())
    }

    /// Mask bit and 7-bit length, which fix the header length.
    fn second_byte(&mut self, b: u8) -> Result<(), FrameError> {
        let masked = b & 0x80 != 0;
        if masked != self.sender.must_mask() {
            return Err(FrameError::MaskMismatch {
                expected_masked: self.sender.must_mask(),
            });
        }
        let len7 = b & 0x7F;
        if self.hdr.opcode.is_control() && usize::from(len7) > MAX_CONTROL_PAYLOAD {
            return Err(FrameError::ControlFrameTooLong(len7.into()));
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => {
                self.check_length(len7.into())?;
                0
            }
        };
        self.hdr.masked = masked;
        self.hdr.payload_len = if ext == 0 { len7.into() } else { 0 };
        self.hdr.header_len = 2 + ext + if masked { 4 } else { 0 };
        Ok(())
    }

    /// Called once the payload length is known; charges data frames to the
    /// message budget.
    fn check_length(&mut self, len: u64) -> Result<(), FrameError> {
        if len >> 63 != 0 {
            return Err(FrameError::InvalidPayloadLength(len));
        }
        if self.hdr.opcode.is_data() && self.max_message_bytes != UNLIMITED {
            if len > u64::from(self.budget) {
                return Err(FrameError::MessageTooBig {
                    limit: self.max_message_bytes.into(),
                });
            }
            // Fits: len <= budget, a u32.
            self.budget -= len as u32;
        }
        Ok(())
    }
}

/// An encoded control frame in a stack buffer: 2 header bytes, an optional
/// 4-byte mask key, up to 125 payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlFrame {
    bytes: [u8; 2 + 4 + MAX_CONTROL_PAYLOAD],
    len: u8,
}

impl ControlFrame {
    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        // `len` never exceeds the array size by construction.
        &self.bytes[..usize::from(self.len)]
    }
}

/// A FIN control frame with `payload` truncated to 125 bytes. The payload is
/// staged in a stack array so the frame can be built without allocating.
fn encode_control(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> ControlFrame {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    let mut f = ControlFrame {
        bytes: [0; 2 + 4 + MAX_CONTROL_PAYLOAD],
        len: 0,
    };
    f.bytes[0] = 0x80 | opcode.as_u8();
    // payload.len() <= 125, so it fits the 7-bit length.
    f.bytes[1] = payload.len() as u8 | if mask.is_some() { 0x80 } else { 0 };
    let start = if let Some(key) = mask {
        f.bytes[2..6].copy_from_slice(&key);
        6
    } else {
        2
    };
    let end = start + payload.len();
    f.bytes[start..end].copy_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut f.bytes[start..end], key, 0);
    }
    f.len = end as u8;
    f
}

/// A Close frame with `code` and `reason`, the reason truncated to fit the
/// 125-byte control payload (at most 123 bytes, cut at a char boundary).
///
/// `mask`: `Some(key)` for frames the proxy sends to a backend (the proxy
/// acts as a client there; the caller supplies a fresh random key), `None`
/// toward a client. The caller picks a code that may be sent (not 1005,
/// 1006 or 1015); it is not checked.
pub fn encode_close(code: u16, reason: &str, mask: Option<[u8; 4]>) -> ControlFrame {
    let mut reason_len = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(reason_len) {
        reason_len -= 1; // terminates: 0 is always a char boundary
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + reason_len].copy_from_slice(&reason.as_bytes()[..reason_len]);
    encode_control(Opcode::Close, &payload[..2 + reason_len], mask)
}

/// An unmasked Ping frame with `payload` (at most 125 bytes), as a server
/// sends it to a client.
pub fn encode_ping(payload: &[u8]) -> ControlFrame {
    encode_control(Opcode::Ping, payload, None)
}

/// The byte range of the first masked Pong frame in `buf` whose unmasked
/// payload is `payload`, looking only at complete frames from the start of
/// `buf` (which must be at a frame boundary) and stopping at the first
/// incomplete one. Pure; used to take wsgate's own heartbeat Pong out of
/// the client's stream before it reaches the backend.
pub fn find_pong(buf: &[u8], payload: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut pos = 0usize;
    loop {
        let b0 = *buf.get(pos)?;
        let b1 = *buf.get(pos + 1)?;
        let masked = b1 & 0x80 != 0;
        let (len, ext) = match b1 & 0x7F {
            126 => (
                u64::from(u16::from_be_bytes([*buf.get(pos + 2)?, *buf.get(pos + 3)?])),
                2,
            ),
            127 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(buf.get(pos + 2..pos + 10)?);
                (u64::from_be_bytes(n), 8)
            }
            n => (u64::from(n), 0),
        };
        let header = 2 + ext + if masked { 4 } else { 0 };
        let end = u64::try_from(pos + header).ok()?.checked_add(len)?;
        let end = usize::try_from(end).ok().filter(|&e| e <= buf.len())?;
        if b0 == 0x80 | Opcode::Pong.as_u8() && masked && len == payload.len() as u64 {
            let mut key = [0u8; 4];
            key.copy_from_slice(buf.get(pos + header - 4..pos + header)?);
            let mut staged = [0u8; MAX_CONTROL_PAYLOAD];
            let body = staged.get_mut(..payload.len())?;
            body.copy_from_slice(buf.get(pos + header..end)?);
            apply_mask(body, key, 0);
            if body == payload {
                return Some(pos..end);
            }
        }
        pos = end;
    }
}

/// Why a Close payload is invalid.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CloseParseError {
    /// One byte: half a status code.
    #[error("close payload of 1 byte")]
    Truncated,
    /// Over 125 bytes, impossible for a control frame.
    #[error("close payload of {0} bytes")]
    TooLong(usize),
    /// A code that must not appear on the wire (see [`is_valid_close_code`]).
    #[error("invalid close code {0}")]
    InvalidCode(u16),
    #[error("close reason is not UTF-8")]
    InvalidUtf8,
}

impl CloseParseError {
    pub fn close_code(&self) -> u16 {
        match self {
            Self::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

/// Codes a peer may send: 1000-1003, 1007-1014 (RFC 6455 plus the
/// IANA-registered 1012-1014), and 3000-4999 (registered and private use).
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses a Close payload (already unmasked) into its code (`None` for an
/// empty payload) and reason.
pub fn parse_close_payload(payload: &[u8]) -> Result<(Option<u16>, &str), CloseParseError> {
    if payload.len() > MAX_CONTROL_PAYLOAD {
        return Err(CloseParseError::TooLong(payload.len()));
    }
    match payload {
        [] => Ok((None, "")),
        [_] => Err(CloseParseError::Truncated),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(CloseParseError::InvalidCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| CloseParseError::InvalidUtf8)?;
            Ok((Some(code), reason))
        }
    }
}

/// XORs `buf` with the mask `key` (RFC 6455 5.3), `buf` starting `offset`
/// bytes into the payload, so a payload can be (un)masked in pieces.
fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let mut k = key;
    k.rotate_left(offset % 4);
    // Whole 4-byte chunks first: the compiler vectorizes this loop.
    let mut chunks = buf.chunks_exact_mut(4);
    for c in &mut chunks {
        for (b, m) in c.iter_mut().zip(k) {
            *b ^= m;
        }
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(k) {
        *b ^= m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// How a test frame encodes its payload length.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Form {
        /// The shortest encoding.
        Minimal,
        Ext16,
        Ext64,
    }

    /// Serialises one frame; the payload is a pattern full of bytes that
    /// would look like headers, so a tracker peeking at payloads would fail.
    fn frame(b0: u8, mask: Option<[u8; 4]>, len: u64, form: Form) -> Vec<u8> {
        let m = if mask.is_some() { 0x80 } else { 0 };
        let mut v = vec![b0];
        match form {
            Form::Minimal if len <= 125 => v.push(m | len as u8),
            Form::Minimal | Form::Ext16 if len <= 0xFFFF => {
                v.push(m | 126);
                v.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                v.push(m | 127);
                v.extend_from_slice(&len.to_be_bytes());
            }
        }
        if let Some(key) = mask {
            v.extend_from_slice(&key);
        }
        v.extend((0..len).map(|i| [0x81, 0x88, 0x7f, 0x00, 0xfe][i as usize % 5]));
        v
    }

    #[test]
    fn an_error_reports_the_last_boundary_before_it() {
        // Two good frames, then a reserved opcode.
        let mut bytes = frame(0x81, None, 3, Form::Minimal);
        let first_end = bytes.len();
        bytes.extend(frame(0x82, None, 200, Form::Minimal));
        let good_end = bytes.len();
        bytes.extend(frame(0x83, None, 1, Form::Minimal));
        let mut t = tracker_for(None);
        let broken = t.advance_to_error(&bytes).unwrap_err();
        assert_eq!(broken.error, FrameError::ReservedOpcode(3));
        assert_eq!(broken.boundary, Some(good_end));

        // Begun mid-frame: the boundary is where that frame ends.
        let mut t = tracker_for(None);
        t.advance(&bytes[..2], false).unwrap();
        let broken = t.advance_to_error(&bytes[2..]).unwrap_err();
        assert_eq!(broken.boundary, Some(good_end - 2));
        assert!(first_end < good_end);
        // Mid-header with no frame ending before the error: no boundary.
        let mut split = tracker_for(None);
        split.advance(&[0x81], false).unwrap();
        assert_eq!(
            split.advance_to_error(&[0x80]).unwrap_err().boundary,
            None,
            "a masked server frame, its header begun in an earlier chunk"
        );
    }

    #[test]
    fn find_pong_finds_only_a_complete_masked_pong_with_that_payload() {
        let ours = b"wsgate-heartbeat";
        let pong = |payload: &[u8], mask| encode_control(Opcode::Pong, payload, mask);
        let mut stream = frame(0x81, Some(KEY), 300, Form::Minimal);
        stream.extend_from_slice(pong(b"theirs", Some(KEY)).as_bytes());
        let start = stream.len();
        stream.extend_from_slice(pong(ours, Some([1, 2, 3, 4])).as_bytes());
        let end = stream.len();
        stream.extend(frame(0x82, Some(KEY), 5, Form::Minimal));
        assert_eq!(find_pong(&stream, ours), Some(start..end));
        assert_eq!(find_pong(&stream[..end - 1], ours), None, "incomplete");
        assert_eq!(
            find_pong(pong(ours, None).as_bytes(), ours),
            None,
            "unmasked"
        );
        assert_eq!(find_pong(&stream[..start], ours), None);
        assert_eq!(find_pong(&[], ours), None);
        let ping = encode_ping(ours);
        assert_eq!(&ping.as_bytes()[..2], &[0x89, ours.len() as u8]);
    }

    fn tracker_for(mask: Option<[u8; 4]>) -> FrameTracker {
        let sender = if mask.is_some() {
            Sender::Client
        } else {
            Sender::Server
        };
        FrameTracker::new(sender, u64::MAX)
    }

    #[test]
    fn counts_messages_and_reads_the_first_close_at_every_split() {
        for mask in [None, Some(KEY)] {
            // A whole message, a fragmented one with a Ping inside, then a
            // Close 1011 with a 4-byte reason, then a second Close (ignored).
            let mut bytes = frame(0x81, mask, 5, Form::Minimal);
            bytes.extend(frame(0x02, mask, 300, Form::Minimal));
            bytes.extend(frame(0x89, mask, 2, Form::Minimal));
            bytes.extend(frame(0x80, mask, 7, Form::Minimal));
            bytes.extend_from_slice(encode_close(1011, "oops", mask).as_bytes());
            bytes.extend_from_slice(encode_close(1000, "", mask).as_bytes());
            let want = PeerClose {
                code: Some(1011),
                reason_len: 4,
            };
            for cut in 0..bytes.len() {
                let mut t = tracker_for(mask);
                t.advance(&bytes[..cut], false).unwrap();
                t.advance(&bytes[cut..], false).unwrap();
                assert_eq!(t.messages(), 2, "cut {cut}");
                assert_eq!(t.peer_close(), Some(want), "cut {cut}, mask {mask:?}");
            }
            // Byte by byte, as a slow peer sends it.
            let mut t = tracker_for(mask);
            for b in &bytes {
                t.advance(std::slice::from_ref(b), false).unwrap();
            }
            assert_eq!((t.messages(), t.peer_close()), (2, Some(want)));
        }
    }

    #[test]
    fn a_close_without_a_code_or_before_its_end_is_reported_as_such() {
        let mut t = tracker_for(None);
        t.advance(encode_control(Opcode::Close, &[], None).as_bytes(), false)
            .unwrap();
        assert_eq!(
            t.peer_close(),
            Some(PeerClose {
                code: None,
                reason_len: 0
            })
        );
        // Not yet ended: nothing to report.
        let mut t = tracker_for(Some(KEY));
        let close = encode_close(1000, "bye", Some(KEY));
        t.advance(&close.as_bytes()[..7], false).unwrap();
        assert_eq!(t.peer_close(), None);
        assert_eq!(t.messages(), 0);
    }

    /// Feeds `bytes` in the given pieces with stop_at_boundary == false and
    /// returns at_boundary() after each piece.
    fn feed_pieces(t: &mut FrameTracker, bytes: &[u8], cuts: &[usize]) -> Vec<bool> {
        let mut out = Vec::new();
        let mut prev = 0;
        for &cut in cuts.iter().chain([bytes.len()].iter()) {
            let adv = t.advance(&bytes[prev..cut], false).unwrap();
            assert_eq!(adv.consumed, cut - prev);
            out.push(t.at_boundary());
            prev = cut;
        }
        out
    }

    #[test]
    fn every_length_form_masked_and_unmasked() {
        let cases = [
            (0, Form::Minimal, 2),
            (5, Form::Minimal, 2),
            (125, Form::Minimal, 2),
            (126, Form::Minimal, 4),
            (300, Form::Ext16, 4),
            (65_535, Form::Minimal, 4),
            (65_536, Form::Minimal, 10),
            (70_000, Form::Ext64, 10),
        ];
        for (len, form, base_len) in cases {
            for mask in [None, Some(KEY)] {
                let bytes = frame(0x82, mask, len, form);
                let header_len = base_len + if mask.is_some() { 4 } else { 0 };
                assert_eq!(bytes.len() as u64, header_len + len);
                let expected = FrameHeader {
                    fin: true,
                    rsv: 0,
                    opcode: Opcode::Binary,
                    masked: mask.is_some(),
                    payload_len: len,
                    header_len: header_len as u8,
                };

                // Whole.
                let mut t = tracker_for(mask);
                assert!(t.at_boundary());
                let adv = t.advance(&bytes, false).unwrap();
                assert_eq!(
                    adv,
                    Advance {
                        consumed: bytes.len(),
                        data_frames_ended: 1,
                        close_frame_ended: false
                    }
                );
                assert!(t.at_boundary() && t.current().is_none());

                // Byte by byte.
                let mut t = tracker_for(mask);
                for (i, b) in bytes.iter().enumerate() {
                    let adv = t.advance(std::slice::from_ref(b), false).unwrap();
                    assert_eq!(adv.consumed, 1);
                    let end = i + 1 == bytes.len();
                    assert_eq!(t.at_boundary(), end, "len {len} byte {i}");
                    assert_eq!(adv.data_frames_ended, u32::from(end));
                    if !end && i + 1 >= header_len as usize {
                        assert_eq!(t.current(), Some(&expected));
                        assert_eq!(t.bytes_to_boundary(), Some(header_len + len - i as u64 - 1));
                    } else if !end {
                        assert_eq!(t.current(), None);
                        assert_eq!(t.bytes_to_boundary(), None);
                    }
                }

                // Split in two at every position in and just after the header.
                for cut in 0..bytes.len().min(40) {
                    let mut t = tracker_for(mask);
                    let b = feed_pieces(&mut t, &bytes, &[cut]);
                    assert_eq!(b, [cut == 0, true]);
                }
            }
        }
    }

    #[test]
    fn large_payload_is_skipped_arithmetically() {
        let mut t = FrameTracker::new(Sender::Client, u64::MAX);
        let mut hdr = frame(0x82, Some(KEY), 0, Form::Minimal);
        hdr[1] = 0x80 | 127;
        hdr.splice(2..2, (16u64 << 20).to_be_bytes());
        assert_eq!(t.advance(&hdr, false).unwrap().consumed, 14);
        assert_eq!(t.current().unwrap().payload_len, 16 << 20);
        let chunk = vec![0xAB; 1 << 20];
        for i in 0..16 {
            let adv = t.advance(&chunk, true).unwrap();
            assert_eq!(adv.consumed, chunk.len());
            assert_eq!(adv.data_frames_ended, u32::from(i == 15));
        }
        assert!(t.at_boundary());

        // An 8 EiB - 1 frame: fine, and only its header is ever needed.
        let mut t = FrameTracker::new(Sender::Server, u64::MAX);
        let mut hdr = vec![0x82, 127];
        hdr.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        t.advance(&hdr, false).unwrap();
        assert_eq!(t.bytes_to_boundary(), Some(u64::MAX >> 1));
    }

    #[test]
    fn stop_at_boundary() {
        let a = frame(0x81, None, 3, Form::Minimal);
        let b = frame(0x89, None, 0, Form::Minimal);
        let c = frame(0x82, None, 200, Form::Minimal);
        let stream = [a.clone(), b.clone(), c.clone()].concat();
        let mut t = FrameTracker::new(Sender::Server, u64::MAX);
        // From a boundary: exactly the next whole frame.
        assert_eq!(t.advance(&stream, true).unwrap().consumed, a.len());
        // A zero-length frame ends with its header.
        let adv = t.advance(&stream[a.len()..], true).unwrap();
        assert_eq!(
            adv,
            Advance {
                consumed: 2,
                data_frames_ended: 0,
                close_frame_ended: false
            }
        );
        // No frame ends within the buffer: all of it.
        let rest = &stream[a.len() + b.len()..];
        assert_eq!(t.advance(&rest[..10], true).unwrap().consumed, 10);
        assert!(!t.at_boundary());
        // Mid-frame: up to the end of the current frame.
        let more = [&rest[10..], &a[..]].concat();
        let adv = t.advance(&more, true).unwrap();
        assert_eq!(adv.consumed, c.len() - 10);
        assert_eq!(adv.data_frames_ended, 1);
        assert!(t.at_boundary());
        // Empty input: nothing.
        assert_eq!(t.advance(&[], true).unwrap(), Advance::default());
        assert_eq!(t.advance(&[], false).unwrap(), Advance::default());
    }

    /// Feeds `bytes` one at a time; every byte but the last must be
    /// accepted, and the last must fail with `err`.
    fn fails_on_last_byte(sender: Sender, limit: u64, bytes: &[u8], err: FrameError, code: u16) {
        let mut t = FrameTracker::new(sender, limit);
        let (last, init) = bytes.split_last().unwrap();
        for b in init {
            t.advance(std::slice::from_ref(b), false).unwrap();
        }
        assert_eq!(t.advance(&[*last], false), Err(err.clone()));
        assert_eq!(err.close_code(), code);
        // Whole.
        let mut t = FrameTracker::new(sender, limit);
        assert_eq!(t.advance(bytes, false), Err(err.clone()));
        // Frame by frame.
        let mut t = FrameTracker::new(sender, limit);
        let mut rest = bytes;
        let got = loop {
            match t.advance(rest, true) {
                Ok(adv) if adv.consumed < rest.len() => rest = &rest[adv.consumed..],
                Ok(_) => panic!("all of {bytes:?} accepted"),
                Err(e) => break e,
            }
        };
        assert_eq!(got, err);
    }

    #[test]
    fn each_error_with_its_close_code() {
        use FrameError::*;
        use Sender::*;
        const P: u16 = close_code::PROTOCOL_ERROR;
        for op in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            fails_on_last_byte(Server, u64::MAX, &[0x80 | op], ReservedOpcode(op), P);
        }
        fails_on_last_byte(Server, u64::MAX, &[0x89, 126], ControlFrameTooLong(126), P);
        fails_on_last_byte(
            Client,
            u64::MAX,
            &[0x88, 0x80 | 127],
            ControlFrameTooLong(127),
            P,
        );
        fails_on_last_byte(Server, u64::MAX, &[0x0A], ControlFrameFragmented, P);
        fails_on_last_byte(Server, u64::MAX, &[0x08], ControlFrameFragmented, P);
        fails_on_last_byte(
            Server,
            u64::MAX,
            &[0x82, 0x80],
            MaskMismatch {
                expected_masked: false,
            },
            P,
        );
        fails_on_last_byte(
            Client,
            u64::MAX,
            &[0x82, 0x00],
            MaskMismatch {
                expected_masked: true,
            },
            P,
        );
        let mut huge = vec![0x82, 127, 0x80];
        huge.extend_from_slice(&[0; 7]);
        fails_on_last_byte(Server, u64::MAX, &huge, InvalidPayloadLength(1 << 63), P);
        fails_on_last_byte(Server, u64::MAX, &[0x80], UnexpectedContinuation, P);
        fails_on_last_byte(
            Server,
            u64::MAX,
            &[0x01, 0x00, 0x81],
            ExpectedContinuation,
            P,
        );
        fails_on_last_byte(
            Server,
            10,
            &[0x81, 11],
            MessageTooBig { limit: 10 },
            close_code::TOO_BIG,
        );
        // The length is known, and too big, before the mask key arrives.
        fails_on_last_byte(
            Client,
            10,
            &[0x82, 0x80 | 126, 0x01, 0x00],
            MessageTooBig { limit: 10 },
            1009,
        );
        // Errors from FrameTracker are Display-able for logs.
        assert_eq!(ReservedOpcode(3).to_string(), "reserved opcode 0x3");
    }

    #[test]
    fn error_leaves_tracker_before_the_offending_byte() {
        let mut t = FrameTracker::new(Sender::Server, 10);
        t.advance(&[0x01, 4, 1, 2, 3, 4], false).unwrap();
        assert!(t.in_message());
        let err = t.advance(&[0x80, 7], false).unwrap_err();
        assert_eq!(err, FrameError::MessageTooBig { limit: 10 });
        assert_eq!(t.advance(&[7], false), Err(err));
        assert!(!t.at_boundary() && t.current().is_none());
    }

    #[test]
    fn non_minimal_length_is_accepted() {
        for (mask, form) in [(None, Form::Ext16), (Some(KEY), Form::Ext64)] {
            let mut t = tracker_for(mask);
            let bytes = frame(0x81, mask, 5, form);
            assert_eq!(t.advance(&bytes, false).unwrap().data_frames_ended, 1);
            assert!(t.at_boundary());
        }
    }

    #[test]
    fn mask_rule_per_sender() {
        for sender in [Sender::Client, Sender::Server] {
            for mask in [None, Some(KEY)] {
                let mut t = FrameTracker::new(sender, u64::MAX);
                let r = t.advance(&frame(0x89, mask, 4, Form::Minimal), false);
                if mask.is_some() == sender.must_mask() {
                    assert_eq!(r.unwrap().consumed, if mask.is_some() { 10 } else { 6 });
                } else {
                    assert_eq!(
                        r,
                        Err(FrameError::MaskMismatch {
                            expected_masked: sender.must_mask()
                        })
                    );
                }
            }
        }
    }

    #[test]
    fn fragmentation_order_with_interleaved_control_frames() {
        let mut t = FrameTracker::new(Sender::Client, u64::MAX);
        let steps: [(u8, bool); 8] = [
            (0x01, true),  // Text without FIN
            (0x89, true),  // Ping
            (0x00, true),  // Continuation without FIN
            (0x8A, true),  // Pong
            (0x88, true),  // Close: still in the message
            (0x80, false), // Continuation with FIN
            (0x82, false), // Binary, unfragmented
            (0x02, true),  // Binary without FIN
        ];
        let mut data = 0;
        for (b0, in_message) in steps {
            let adv = t
                .advance(&frame(b0, Some(KEY), 3, Form::Minimal), false)
                .unwrap();
            assert_eq!(t.in_message(), in_message, "after {b0:#x}");
            assert_eq!(adv.close_frame_ended, b0 == 0x88);
            data += adv.data_frames_ended;
        }
        assert_eq!(data, 5);
        let err = t.advance(&frame(0x81, Some(KEY), 1, Form::Minimal), false);
        assert_eq!(err, Err(FrameError::ExpectedContinuation));
    }

    #[test]
    fn message_too_big_across_fragments() {
        let mut t = FrameTracker::new(Sender::Server, 10);
        for b0 in [0x01, 0x00, 0x89, 0x80] {
            // 4 + 3 + 3 = 10 data bytes; the 3-byte Ping does not count.
            let len = if b0 == 0x01 { 4 } else { 3 };
            t.advance(&frame(b0, None, len, Form::Minimal), false)
                .unwrap();
        }
        // A new message gets a fresh budget.
        t.advance(&frame(0x82, None, 10, Form::Minimal), false)
            .unwrap();
        t.advance(&frame(0x02, None, 6, Form::Minimal), false)
            .unwrap();
        let err = t
            .advance(&frame(0x80, None, 5, Form::Ext64), false)
            .unwrap_err();
        assert_eq!(err, FrameError::MessageTooBig { limit: 10 });
        assert_eq!(err.close_code(), close_code::TOO_BIG);
        // Limit 0 allows only empty data frames.
        let mut t = FrameTracker::new(Sender::Server, 0);
        t.advance(&frame(0x81, None, 0, Form::Minimal), false)
            .unwrap();
        assert!(t
            .advance(&frame(0x81, None, 1, Form::Minimal), false)
            .is_err());
    }

    #[test]
    fn encode_close_round_trips() {
        for (mask, sender) in [(None, Sender::Server), (Some(KEY), Sender::Client)] {
            let f = encode_close(close_code::GOING_AWAY, "bye", mask);
            let bytes = f.as_bytes();
            assert_eq!(bytes.len(), 2 + 2 + 3 + if mask.is_some() { 4 } else { 0 });
            let mut t = FrameTracker::new(sender, 0);
            let adv = t.advance(bytes, true).unwrap();
            assert_eq!(
                adv,
                Advance {
                    consumed: bytes.len(),
                    data_frames_ended: 0,
                    close_frame_ended: true
                }
            );
            let mut payload = bytes[bytes.len() - 5..].to_vec();
            if let Some(key) = mask {
                assert_eq!(&bytes[2..6], &key);
                apply_mask(&mut payload, key, 0);
            }
            assert_eq!(parse_close_payload(&payload), Ok((Some(1001), "bye")));
        }
        assert_eq!(
            encode_close(1000, "", None).as_bytes(),
            [0x88, 2, 0x03, 0xE8]
        );
    }

    #[test]
    fn close_reason_truncated_at_char_boundary() {
        let ascii = "a".repeat(200);
        let f = encode_close(1000, &ascii, None);
        assert_eq!(f.as_bytes().len(), 2 + 125);
        assert_eq!(
            parse_close_payload(&f.as_bytes()[2..]),
            Ok((Some(1000), &ascii[..123]))
        );
        // 'é' is 2 bytes: 61 of them (122 bytes) fit, the 62nd would split.
        let accents = "é".repeat(100);
        let f = encode_close(1001, &accents, Some(KEY));
        let mut payload = f.as_bytes()[6..].to_vec();
        apply_mask(&mut payload, KEY, 0);
        assert_eq!(
            parse_close_payload(&payload),
            Ok((Some(1001), &accents[..122]))
        );
        // 3-byte chars: 41 fit exactly (123 bytes).
        let euros = "€".repeat(50);
        let f = encode_close(1001, &euros, None);
        assert_eq!(
            parse_close_payload(&f.as_bytes()[2..]),
            Ok((Some(1001), &euros[..123]))
        );
    }

    #[test]
    fn parse_close_payload_errors() {
        use CloseParseError::*;
        assert_eq!(parse_close_payload(&[]), Ok((None, "")));
        assert_eq!(parse_close_payload(&[3]), Err(Truncated));
        assert_eq!(parse_close_payload(&[0; 126]), Err(TooLong(126)));
        for code in [
            0u16,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            2999,
            5000,
            u16::MAX,
        ] {
            assert_eq!(
                parse_close_payload(&code.to_be_bytes()),
                Err(InvalidCode(code))
            );
            assert_eq!(InvalidCode(code).close_code(), close_code::PROTOCOL_ERROR);
        }
        for code in [1000u16, 1003, 1007, 1011, 1012, 1014, 3000, 4999] {
            assert_eq!(
                parse_close_payload(&code.to_be_bytes()),
                Ok((Some(code), ""))
            );
        }
        assert_eq!(parse_close_payload(&[0x03, 0xE8, 0xFF]), Err(InvalidUtf8));
        assert_eq!(InvalidUtf8.close_code(), close_code::INVALID_PAYLOAD);
    }

    #[test]
    fn ping_round_trips() {
        let f = encode_control(Opcode::Ping, b"12345678", Some(KEY));
        let mut t = FrameTracker::new(Sender::Client, 0);
        assert_eq!(t.advance(f.as_bytes(), false).unwrap().consumed, 14);
        let mut payload = f.as_bytes()[6..].to_vec();
        apply_mask(&mut payload, KEY, 0);
        assert_eq!(payload, b"12345678");
        assert_eq!(
            encode_control(Opcode::Ping, &[7; 300], None)
                .as_bytes()
                .len(),
            2 + 125
        );
    }

    #[test]
    fn apply_mask_in_pieces_matches_whole() {
        let data: Vec<u8> = (0..=255).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, KEY, 0);
        assert!(whole
            .iter()
            .enumerate()
            .all(|(i, b)| *b == data[i] ^ KEY[i % 4]));
        for cut in 0..12 {
            let mut pieces = data.clone();
            let (a, b) = pieces.split_at_mut(cut);
            apply_mask(a, KEY, 0);
            apply_mask(b, KEY, cut);
            assert_eq!(pieces, whole);
        }
    }

    #[test]
    fn tracker_is_small() {
        // Still 48 with the message count and the Close code.
        let size = std::mem::size_of::<FrameTracker>();
        assert!(size <= 48, "FrameTracker is {size} bytes");
        assert!(std::mem::size_of::<ControlFrame>() <= 2 + 4 + 125 + 1);
    }

    /// One generated frame: `kind` picks control vs data, `len` its payload.
    #[derive(Debug, Clone)]
    struct Spec {
        control: bool,
        pick: u8,
        fin: bool,
        rsv: u8,
        len: u64,
        form: Form,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        let len = prop_oneof![8 => 0u64..=125, 3 => 126u64..=400, 1 => 65_530u64..=65_600];
        let form = prop_oneof![Just(Form::Minimal), Just(Form::Ext16), Just(Form::Ext64)];
        (any::<bool>(), any::<u8>(), any::<bool>(), 0u8..8, len, form).prop_map(
            |(control, pick, fin, rsv, len, form)| Spec {
                control: control && pick % 2 == 0,
                pick,
                fin,
                rsv,
                len,
                form,
            },
        )
    }

    /// A valid stream: bytes, and per frame its end offset and header.
    fn build_stream(specs: &[Spec], mask: Option<[u8; 4]>) -> (Vec<u8>, Vec<(usize, FrameHeader)>) {
        let mut bytes = Vec::new();
        let mut frames = Vec::new();
        let mut in_message = false;
        for s in specs {
            let (opcode, fin, len, form) = if s.control {
                let op = [Opcode::Close, Opcode::Ping, Opcode::Pong][usize::from(s.pick % 3)];
                (op, true, s.len % 126, Form::Minimal)
            } else if in_message {
                (Opcode::Continuation, s.fin, s.len, s.form)
            } else {
                (
                    [Opcode::Text, Opcode::Binary][usize::from(s.pick % 2)],
                    s.fin,
                    s.len,
                    s.form,
                )
            };
            if opcode.is_data() {
                in_message = !fin;
            }
            let b0 = u8::from(fin) << 7 | s.rsv << 4 | opcode.as_u8();
            let f = frame(b0, mask, len, form);
            bytes.extend_from_slice(&f);
            let header_len = (f.len() as u64 - len) as u8;
            let masked = mask.is_some();
            let h = FrameHeader {
                fin,
                rsv: s.rsv,
                opcode,
                masked,
                payload_len: len,
                header_len,
            };
            frames.push((bytes.len(), h));
        }
        (bytes, frames)
    }

    proptest! {
        #[test]
        fn boundaries_of_valid_streams(
            specs in prop::collection::vec(spec(), 1..16),
            masked in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
        ) {
            let mask = masked.then_some(KEY);
            let (bytes, frames) = build_stream(&specs, mask);
            let ends: Vec<usize> = frames.iter().map(|f| f.0).collect();
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let ended_in = |from: usize, to: usize| {
                let fs = frames.iter().filter(|f| f.0 > from && f.0 <= to);
                let data = fs.clone().filter(|f| f.1.opcode.is_data()).count() as u32;
                (data, fs.clone().any(|f| f.1.opcode == Opcode::Close))
            };

            // Random pieces, stop_at_boundary == false.
            let mut t = tracker_for(mask);
            let mut prev = 0;
            for &cut in &cuts {
                let adv = t.advance(&bytes[prev..cut], false).unwrap();
                prop_assert_eq!(adv.consumed, cut - prev);
                let (data, close) = ended_in(prev, cut);
                prop_assert_eq!(adv.data_frames_ended, data);
                prop_assert_eq!(adv.close_frame_ended, close);
                prop_assert_eq!(t.at_boundary(), cut == 0 || ends.binary_search(&cut).is_ok());
                prev = cut;
            }

            // Same pieces, stop_at_boundary == true: each call stops exactly
            // at the next frame end if it is in the piece.
            let mut t = tracker_for(mask);
            let mut pos = 0;
            for &cut in &cuts {
                while pos < cut {
                    let adv = t.advance(&bytes[pos..cut], true).unwrap();
                    let next_end = ends[ends.partition_point(|&e| e <= pos)];
                    let expect = next_end.min(cut);
                    prop_assert_eq!(pos + adv.consumed, expect);
                    prop_assert_eq!(t.at_boundary(), expect == next_end);
                    let (data, close) = ended_in(pos, expect);
                    prop_assert_eq!((adv.data_frames_ended, adv.close_frame_ended), (data, close));
                    pos = expect;
                }
            }

            // Byte by byte: boundaries, and current() inside each payload.
            let mut t = tracker_for(mask);
            let mut frame_start = 0;
            let mut frames_iter = frames.iter();
            let mut cur = frames_iter.next();
            for (i, b) in bytes.iter().enumerate() {
                t.advance(std::slice::from_ref(b), false).unwrap();
                let (end, h) = cur.copied().unwrap();
                let fed = i + 1;
                prop_assert_eq!(t.at_boundary(), fed == end);
                if fed == end {
                    frame_start = end;
                    cur = frames_iter.next();
                } else if fed >= frame_start + usize::from(h.header_len) {
                    prop_assert_eq!(t.current(), Some(&h));
                    prop_assert_eq!(t.bytes_to_boundary(), Some((end - fed) as u64));
                } else {
                    prop_assert_eq!(t.current(), None);
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..4096),
            chunks in prop::collection::vec(1usize..200, 1..40),
            client in any::<bool>(),
            stop in any::<bool>(),
            limit in prop_oneof![Just(u64::MAX), 0u64..2000],
        ) {
            let sender = if client { Sender::Client } else { Sender::Server };
            let mut t = FrameTracker::new(sender, limit);
            let mut pos = 0;
            for &n in chunks.iter().cycle() {
                if pos >= bytes.len() {
                    break;
                }
                let piece = &bytes[pos..(pos + n).min(bytes.len())];
                match t.advance(piece, stop) {
                    Ok(adv) => {
                        prop_assert!(adv.consumed >= 1 && adv.consumed <= piece.len());
                        if !stop {
                            prop_assert_eq!(adv.consumed, piece.len());
                        }
                        pos += adv.consumed;
                    }
                    // Keep going in the unspecified state: still no panic.
                    Err(e) => {
                        prop_assert!(matches!(e.close_code(), 1002 | 1009));
                        pos += piece.len();
                    }
                }
                let _ = (t.at_boundary(), t.current(), t.in_message(), t.bytes_to_boundary());
            }
        }
    }
}
