//! Proof that a room's sharded subscription really delivers: a probe event
//! published through the room's master, which the subscriber must see come
//! back on its own subscription.
//!
//! Why it is needed: while a shard changes hands, the Redis crate can route
//! an `SSUBSCRIBE` by a slot map that is a moment old, to the old master
//! that has just become a replica. Redis accepts it there (replicas serve
//! sharded Pub/Sub), the call succeeds, and yet nothing published on the new
//! master ever arrives on it (seen with Redis 7.0: the subscription sits on
//! the replica, `PUBSUB SHARDNUMSUB` counts it, and no message comes). A
//! successful `SSUBSCRIBE` therefore proves nothing; a message that went
//! through the master and came back does.
//!
//! The probe is published by a script keyed on the room's meta key, so it
//! runs on the slot's master whatever slot map the client holds (a replica
//! answers `MOVED` to a script, unlike to `SPUBLISH`). Other backends
//! subscribed to the room receive it too and ignore it: its `type` is not an
//! event type (see [`crate::chat::event::Event::from_wire`]).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The script: `KEYS[1]` the room's meta key (routing only), `ARGV[1]` the
/// channel, `ARGV[2]` the probe. Returns the receiver count.
pub const SCRIPT: &str = "return redis.call('SPUBLISH', ARGV[1], ARGV[2])";

/// The wire form of a probe.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    r#type: Cow<'a, str>,
    #[serde(borrow)]
    room: Cow<'a, str>,
    nonce: u64,
}

const TYPE: &str = "probe";

/// The payload of a probe for `room` carrying `nonce`.
pub fn payload(room: &str, nonce: u64) -> String {
    let wire = Wire {
        r#type: TYPE.into(),
        room: room.into(),
        nonce,
    };
    // Serialising a struct of strings and an integer cannot fail.
    serde_json::to_string(&wire).unwrap_or_default()
}

/// How every probe begins (serde writes the fields in order), so telling
/// a probe from an event costs a prefix compare, not a parse of each
/// message.
const PREFIX: &str = "{\"type\":\"probe\"";

/// The room and nonce of a probe payload; `None` for anything else.
pub fn parse(payload: &str) -> Option<(Cow<'_, str>, u64)> {
    if !payload.starts_with(PREFIX) {
        return None;
    }
    let wire: Wire = serde_json::from_str(payload).ok()?;
    (wire.r#type == TYPE).then_some((wire.room, wire.nonce))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::event::Event;

    #[test]
    fn round_trip_and_ignored_as_an_event() {
        let p = payload("r\"oom", 42);
        assert_eq!(parse(&p), Some(("r\"oom".into(), 42)));
        assert!(Event::from_wire(p).is_none(), "not an event for the hub");
        assert_eq!(parse(r#"{"type":"message","room":"r","nonce":1}"#), None);
        assert_eq!(parse("not json"), None);
    }
}
