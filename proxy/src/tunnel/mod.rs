//! The tunnel: everything that happens to a WebSocket after the 101.
//!
//! This folder is the inner data path and depends on nothing else in the
//! crate: it moves bytes between two already-open connections, knows where
//! every frame starts, and closes with a WebSocket Close frame when wsgate
//! itself ends the session.
//!
//! | module | owns |
//! |---|---|
//! | [`pump`] | the two pumps of one tunnel, their timers and every close wsgate starts |
//! | [`frame`] | the incremental frame-header tracker and Close encoding (pure) |
//! | [`closesignal`] | [`CloseCause`] and the one-word mailbox through which a tunnel learns it |
//! | [`bufpool`] | per-thread read buffers, held only while bytes are in flight |

pub(crate) mod bufpool;
pub(crate) mod closesignal;
pub(crate) mod frame;
pub(crate) mod pump;

pub(crate) use closesignal::{CloseCause, CloseSignal};
/// For the benchmarks, and for the end-to-end tests' WebSocket client.
pub use frame::{parse_close_payload, CloseParseError, FrameTracker, PeerClose, Sender};
pub(crate) use pump::{run, Early, First, Side, TunnelConfig, TunnelReport};
pub use pump::{Heartbeat, HEARTBEAT_PAYLOAD};
