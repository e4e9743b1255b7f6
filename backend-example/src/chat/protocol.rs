//! The chat wire protocol: JSON text frames, one message per frame, tagged by
//! `"type"`. This module owns parsing what a client sends (untrusted) and the
//! shapes of everything the server sends. The full protocol is documented in
//! `backend-example/README.md`.

use serde::{Deserialize, Serialize};

/// Longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 64;
/// Longest user name, in bytes.
pub const MAX_USER_LEN: usize = 32;
/// Longest client message id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest epoch a client may send back, in bytes.
pub const MAX_EPOCH_LEN: usize = 64;

/// A position in a room's history: everything up to and including `offset`
/// of history generation `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// What a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMessage {
    Join {
        room: String,
        #[serde(default)]
        since: Option<Position>,
    },
    Send {
        room: String,
        id: String,
        text: String,
    },
    Leave {
        room: String,
    },
}

/// Why a client frame was refused (sent back as an `error` message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("not valid JSON")]
    BadJson,
    #[error("unknown or missing message type")]
    UnknownType,
    #[error("missing or malformed field")]
    BadRequest,
    #[error("room names are 1-64 characters from A-Z a-z 0-9 _ - .")]
    BadRoom,
    #[error("message ids are 1-64 printable characters")]
    BadId,
    #[error("text is empty or too long")]
    BadText,
}

impl InputError {
    /// The `code` field of the `error` message.
    pub fn code(self) -> &'static str {
        match self {
            InputError::BadJson => "bad_json",
            InputError::UnknownType => "unknown_type",
            InputError::BadRequest => "bad_request",
            InputError::BadRoom => "bad_room",
            InputError::BadId => "bad_id",
            InputError::BadText => "bad_text",
        }
    }
}

/// Known client message types, to tell "unknown type" from "bad fields".
const KNOWN_TYPES: [&str; 3] = ["join", "send", "leave"];

/// Parses and validates one client text frame.
pub fn parse(text: &str, max_text: usize) -> Result<ClientMessage, InputError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| InputError::BadJson)?;
    let known = value
        .get("type")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|t| KNOWN_TYPES.contains(&t));
    if !known {
        return Err(InputError::UnknownType);
    }
    let msg: ClientMessage = serde_json::from_value(value).map_err(|_| InputError::BadRequest)?;
    match &msg {
        ClientMessage::Join { room, since } => {
            check_room(room)?;
            if since
                .as_ref()
                .is_some_and(|s| s.epoch.len() > MAX_EPOCH_LEN)
            {
                return Err(InputError::BadRequest);
            }
        }
        ClientMessage::Leave { room } => check_room(room)?,
        ClientMessage::Send { room, id, text } => {
            check_room(room)?;
            if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
                return Err(InputError::BadId);
            }
            if text.trim().is_empty() || text.len() > max_text {
                return Err(InputError::BadText);
            }
        }
    }
    Ok(msg)
}

/// Names (rooms, users) are short and drawn from a small alphabet, so they
/// are safe in Redis keys, channel names and space-separated members.
fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn check_room(room: &str) -> Result<(), InputError> {
    valid_name(room, MAX_ROOM_LEN)
        .then_some(())
        .ok_or(InputError::BadRoom)
}

/// True if `user` is an acceptable user name (the `?user=` query parameter).
pub fn valid_user(user: &str) -> bool {
    valid_name(user, MAX_USER_LEN)
}

/// A chat message as stored in history and delivered to clients (the wire
/// form adds `"type":"message"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub room: String,
    pub epoch: String,
    pub offset: u64,
    pub from: String,
    pub id: String,
    pub text: String,
    /// Milliseconds since the Unix epoch, stamped by the backend that stored it.
    pub ts: u64,
}

/// Everything the server sends except `message` (whose JSON is produced once
/// per message by the engine and shared by all recipients).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage<'a> {
    Hello {
        backend: &'a str,
        user: &'a str,
        /// `"redis"` (rooms shared by every backend on that Redis) or
        /// `"memory"` (rooms of this backend only).
        engine: &'a str,
        ping_interval_ms: u64,
    },
    Joined {
        room: &'a str,
        epoch: &'a str,
        offset: u64,
        presence: &'a [String],
    },
    Recovered {
        room: &'a str,
        count: usize,
        complete: bool,
    },
    Ack {
        room: &'a str,
        id: &'a str,
        epoch: &'a str,
        offset: u64,
        duplicate: bool,
    },
    Left {
        room: &'a str,
    },
    Presence(&'a Presence),
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
}

/// A presence change or snapshot in one room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<String>,
    /// Full member list; sent after a resync, when events may have been missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
}

impl ServerMessage<'_> {
    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail (no maps with non-string
        // keys, no custom serializers).
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The wire JSON of a chat message.
pub fn message_json(msg: &ChatMessage) -> String {
    #[derive(Serialize)]
    struct Wire<'a> {
        r#type: &'static str,
        #[serde(flatten)]
        msg: &'a ChatMessage,
    }
    serde_json::to_string(&Wire {
        r#type: "message",
        msg,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_client_messages() {
        let join = parse(
            r#"{"type":"join","room":"lobby","since":{"epoch":"e","offset":3}}"#,
            100,
        );
        assert!(matches!(join, Ok(ClientMessage::Join { since: Some(p), .. }) if p.offset == 3));
        let send = parse(r#"{"type":"send","room":"a","id":"1","text":"hi"}"#, 100);
        assert!(matches!(send, Ok(ClientMessage::Send { .. })));
        let leave = parse(r#"{"type":"leave","room":"a"}"#, 100);
        assert!(matches!(leave, Ok(ClientMessage::Leave { .. })));
    }

    #[test]
    fn classifies_bad_input() {
        assert_eq!(parse("{", 10).err(), Some(InputError::BadJson));
        assert_eq!(parse("[]", 10).err(), Some(InputError::UnknownType));
        assert_eq!(
            parse(r#"{"type":"nope"}"#, 10).err(),
            Some(InputError::UnknownType)
        );
        assert_eq!(
            parse(r#"{"type":7}"#, 10).err(),
            Some(InputError::UnknownType)
        );
        assert_eq!(
            parse(r#"{"type":"join"}"#, 10).err(),
            Some(InputError::BadRequest)
        );
        let bad_room = r#"{"type":"join","room":"a b"}"#;
        assert_eq!(parse(bad_room, 10).err(), Some(InputError::BadRoom));
        let long = format!(
            r#"{{"type":"send","room":"a","id":"1","text":"{}"}}"#,
            "x".repeat(11)
        );
        assert_eq!(parse(&long, 10).err(), Some(InputError::BadText));
        let no_id = r#"{"type":"send","room":"a","id":"","text":"x"}"#;
        assert_eq!(parse(no_id, 10).err(), Some(InputError::BadId));
        let neg = r#"{"type":"join","room":"a","since":{"epoch":"e","offset":-1}}"#;
        assert_eq!(parse(neg, 10).err(), Some(InputError::BadRequest));
    }

    #[test]
    fn message_json_has_type_and_fields() {
        let msg = ChatMessage {
            room: "r".into(),
            epoch: "e".into(),
            offset: 7,
            from: "u".into(),
            id: "i".into(),
            text: "t\"".into(),
            ts: 1,
        };
        let v: serde_json::Value = serde_json::from_str(&message_json(&msg)).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["offset"], 7);
        let back: ChatMessage = serde_json::from_value(v).unwrap();
        assert_eq!(back, msg);
    }
}
