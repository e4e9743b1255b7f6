//! Resuming a room from a client's last position: which messages to send
//! and whether they are everything the client missed.
//!
//! The rule (Centrifugo-style offsets plus epoch): with the same epoch and an
//! offset not ahead of the room, the client gets every retained message
//! after its offset, and `complete` says whether history still reached back
//! that far. With another epoch (history was lost since) or an impossible
//! offset, it gets all retained history and `complete: false`.

use std::sync::Arc;

use super::engine::{Engine, EngineError};
use super::event::{Event, EventKind};
use super::protocol::Position;

/// What to read from history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The client asked for nothing (a fresh join).
    Nothing,
    /// Messages from this offset on; complete if the first one is it.
    From(u64),
    /// The client's position means nothing now: send what is retained.
    Everything,
}

/// Decides what to read given the client's `since` and the room's position.
pub fn plan(since: Option<&Position>, current: &Position) -> Plan {
    match since {
        None => Plan::Nothing,
        Some(s) if s.epoch == current.epoch && s.offset <= current.offset => {
            Plan::From(s.offset + 1)
        }
        Some(_) => Plan::Everything,
    }
}

/// True if `events` (read with `Plan::From(from)`) start exactly at `from`
/// and all belong to `epoch`, or if nothing was missed at all.
pub fn is_complete(from: u64, top: u64, epoch: &str, events: &[Arc<Event>]) -> bool {
    let same_epoch = events
        .iter()
        .all(|e| matches!(&e.kind, EventKind::Message { epoch: ep, .. } if ep == epoch));
    match events.first().and_then(|e| e.offset()) {
        Some(first) => same_epoch && first == from,
        None => top < from,
    }
}

/// The outcome of a join.
pub struct Recovery {
    /// The room's position when the join was served.
    pub position: Position,
    /// Messages to send before live ones, oldest first.
    pub events: Vec<Arc<Event>>,
    pub complete: bool,
}

impl Recovery {
    /// The position the client is at after receiving `events`.
    pub fn cursor(&self) -> Position {
        let last = self.events.last().and_then(|e| e.offset()).unwrap_or(0);
        Position {
            epoch: self.position.epoch.clone(),
            offset: self.position.offset.max(last),
        }
    }
}

/// Reads the room's position and the messages `since` calls for.
pub async fn recover(
    engine: &Engine,
    room: &str,
    since: Option<&Position>,
) -> Result<Recovery, EngineError> {
    let position = engine.position(room).await?;
    let (events, complete) = match plan(since, &position) {
        Plan::Nothing => (Vec::new(), true),
        Plan::From(from) if from > position.offset => (Vec::new(), true),
        Plan::From(from) => {
            let events = engine.range(room, from).await?;
            let complete = is_complete(from, position.offset, &position.epoch, &events);
            (events, complete)
        }
        Plan::Everything => (engine.range(room, 1).await?, false),
    };
    Ok(Recovery {
        position,
        events,
        complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::protocol::ChatMessage;

    fn pos(epoch: &str, offset: u64) -> Position {
        Position {
            epoch: epoch.into(),
            offset,
        }
    }

    fn msg(epoch: &str, offset: u64) -> Arc<Event> {
        Event::message(&ChatMessage {
            room: "r".into(),
            epoch: epoch.into(),
            offset,
            from: "a".into(),
            id: offset.to_string(),
            text: "t".into(),
            ts: 0,
        })
    }

    #[test]
    fn plans() {
        let now = pos("e", 10);
        assert_eq!(plan(None, &now), Plan::Nothing);
        assert_eq!(plan(Some(&pos("e", 4)), &now), Plan::From(5));
        assert_eq!(plan(Some(&pos("e", 10)), &now), Plan::From(11));
        assert_eq!(plan(Some(&pos("e", 11)), &now), Plan::Everything);
        assert_eq!(plan(Some(&pos("old", 4)), &now), Plan::Everything);
    }

    #[test]
    fn completeness() {
        assert!(is_complete(5, 6, "e", &[msg("e", 5), msg("e", 6)]));
        assert!(
            !is_complete(5, 6, "e", &[msg("e", 6)]),
            "history was trimmed"
        );
        assert!(!is_complete(5, 6, "e", &[]), "history expired");
        assert!(is_complete(7, 6, "e", &[]), "nothing missed");
        assert!(!is_complete(5, 5, "e", &[msg("x", 5)]), "epoch changed");
    }
}
