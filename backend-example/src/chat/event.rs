//! What flows from a room to the sessions in it: a chat message (with its
//! history position) or a presence change, each carrying its wire JSON so
//! it is serialised once and shared by every recipient.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::protocol::{message_json, ChatMessage, Presence, ServerMessage};

/// One event in a room, ready to send.
#[derive(Debug, Clone)]
pub struct Event {
    pub room: String,
    pub kind: EventKind,
    /// The JSON text sent to clients (cheap to clone).
    pub wire: Utf8Bytes,
}

/// The parts of an event the session logic looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A stored chat message at this history position.
    Message { epoch: String, offset: u64 },
    /// A presence change (not stored in history).
    Presence,
}

impl Event {
    /// An event for a chat message.
    pub fn message(msg: &ChatMessage) -> Arc<Event> {
        Event::message_with_wire(msg, message_json(msg))
    }

    /// An event for a chat message whose wire JSON was produced elsewhere
    /// (by the Redis script).
    pub fn message_with_wire(msg: &ChatMessage, wire: String) -> Arc<Event> {
        Arc::new(Event {
            room: msg.room.clone(),
            kind: EventKind::Message {
                epoch: msg.epoch.clone(),
                offset: msg.offset,
            },
            wire: wire.into(),
        })
    }

    /// An event for a presence change.
    pub fn presence(p: &Presence) -> Arc<Event> {
        Arc::new(Event {
            room: p.room.clone(),
            kind: EventKind::Presence,
            wire: ServerMessage::Presence(p).to_json().into(),
        })
    }

    /// Parses an event from its wire JSON (as published through Redis).
    /// Returns `None` for anything that is not a well-formed event.
    pub fn from_wire(wire: String) -> Option<Arc<Event>> {
        #[derive(serde::Deserialize)]
        struct Tag<'a> {
            r#type: &'a str,
        }
        let tag: Tag = serde_json::from_str(&wire).ok()?;
        match tag.r#type {
            "message" => {
                let msg: ChatMessage = serde_json::from_str(&wire).ok()?;
                Some(Event::message_with_wire(&msg, wire))
            }
            "presence" => {
                let p: Presence = serde_json::from_str(&wire).ok()?;
                Some(Arc::new(Event {
                    room: p.room,
                    kind: EventKind::Presence,
                    wire: wire.into(),
                }))
            }
            _ => None,
        }
    }

    /// The history offset, for chat messages.
    pub fn offset(&self) -> Option<u64> {
        match &self.kind {
            EventKind::Message { offset, .. } => Some(*offset),
            EventKind::Presence => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        let msg = ChatMessage {
            room: "r".into(),
            epoch: "e".into(),
            offset: 9,
            from: "a".into(),
            id: "1".into(),
            text: "hi".into(),
            ts: 5,
        };
        let ev = Event::message(&msg);
        let back = Event::from_wire(ev.wire.to_string()).unwrap();
        assert_eq!(back.kind, ev.kind);
        assert_eq!(back.room, "r");
        let p = Presence {
            room: "r".into(),
            joined: Some("a".into()),
            left: None,
            members: None,
        };
        let ev = Event::presence(&p);
        assert_eq!(
            Event::from_wire(ev.wire.to_string()).unwrap().kind,
            EventKind::Presence
        );
        assert!(Event::from_wire("{\"type\":\"x\"}".into()).is_none());
    }
}
