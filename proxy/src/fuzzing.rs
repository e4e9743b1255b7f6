//! Entry points for the `cargo fuzz` targets in `fuzz/` (not a stable API).
//!
//! The parsers of untrusted input are crate-private; this module re-exports
//! them as they are, without wrappers that could hide a panic or change
//! a verdict, so the targets exercise exactly the code the data path runs:
//!
//! - the frame tracker ([`FrameTracker`], plus Close encoding and parsing);
//! - handshake validation ([`validate`] of a client's upgrade request,
//!   [`check_backend_101`] of a backend's answer) and Host normalisation;
//! - reading a backend's answer to an upgrade ([`parse_head`], and
//!   [`dechunk`] for a refusal's chunked body);
//! - sticky-key extraction ([`sticky_extract`]) and its sources
//!   ([`KeySource::parse`]);
//! - config parsing and validation from text ([`Config::from_source`]).
//!
//! Nothing here does I/O. `fuzz/README.md` says how to run the targets.

pub use crate::config::{Config, ConfigError, KeySource, Problem};
pub use crate::gateway::handshake::{
    accept_value, check_backend_101, header_has_token, is_upgrade_attempt, validate,
    BackendHandshakeError, HandshakeError,
};
pub use crate::gateway::upgrade::{dechunk, parse_head, HeadError, MAX_RELAYED_BODY};
pub use crate::routing::route::normalize_host;
pub use crate::routing::sticky::extract as sticky_extract;
pub use crate::tunnel::frame::{
    encode_close, is_valid_close_code, parse_close_payload, Advance, CloseParseError, FrameError,
    FrameTracker, Opcode, Sender, MAX_CONTROL_PAYLOAD,
};
