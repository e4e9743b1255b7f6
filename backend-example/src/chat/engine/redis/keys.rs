//! Names of a room's Redis keys and Pub/Sub channel. Every name carries the
//! room in a `{R}` hash tag, so on a Redis Cluster a room's history,
//! offsets, de-duplication keys, presence and (sharded) channel all map to
//! one slot: the Lua scripts that touch several of them at once stay legal,
//! and `SPUBLISH` reaches only the shard that owns the room.

pub fn meta_key(room: &str) -> String {
    format!("chat:{{{room}}}:meta")
}

pub fn log_key(room: &str) -> String {
    format!("chat:{{{room}}}:log")
}

pub fn presence_key(room: &str) -> String {
    format!("chat:{{{room}}}:presence")
}

pub fn dedup_key(room: &str, from: &str, id: &str) -> String {
    format!("chat:{{{room}}}:dedup:{from}:{id}")
}

pub fn channel(room: &str) -> String {
    format!("chat:{{{room}}}:events")
}

pub fn room_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("chat:{")?.strip_suffix("}:events")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        assert_eq!(room_of_channel(&channel("lobby")), Some("lobby"));
        assert_eq!(room_of_channel("other"), None);
    }

    /// The part between the first `{` and the next `}` is what Redis
    /// Cluster hashes; it must be the room for every name.
    #[test]
    fn every_name_is_tagged_with_the_room() {
        fn tag(key: &str) -> &str {
            let open = key.find('{').map(|i| i + 1).unwrap_or(0);
            let close = key[open..].find('}').map(|i| open + i).unwrap_or(key.len());
            &key[open..close]
        }
        for name in [
            meta_key("a.b"),
            log_key("a.b"),
            presence_key("a.b"),
            dedup_key("a.b", "alice", "c-1"),
            channel("a.b"),
        ] {
            assert_eq!(tag(&name), "a.b", "{name}");
        }
    }
}
