//! Which running listener a connection belongs to. Each listener the edge
//! starts gets a [`ListenerId`]; tunnels register under it, so a reload
//! that removes the listener closes exactly its tunnels.
//!
//! A listener renamed on the same address hands its socket to its
//! successor, and the old accept loop may take one last connection just
//! before it stops. That connection is the successor's: its id points on
//! to the successor's, so when it becomes a tunnel after the reload it
//! registers there and is not closed with the removed listener's.

use std::sync::{Arc, OnceLock};

#[derive(Debug)]
pub struct ListenerId {
    id: u32,
    successor: OnceLock<Arc<ListenerId>>,
}

impl ListenerId {
    pub fn new(id: u32) -> Arc<ListenerId> {
        Arc::new(ListenerId {
            id,
            successor: OnceLock::new(),
        })
    }

    /// This listener's own id, whatever took over its socket.
    pub fn own(&self) -> u32 {
        self.id
    }

    /// The id of the listener that now accepts on this one's socket.
    pub fn current(&self) -> u32 {
        let mut at = self;
        while let Some(next) = at.successor.get() {
            at = next;
        }
        at.id
    }

    /// `next` took over this listener's socket. Set once; a second call is
    /// ignored (a socket is handed over once, when its listener stops).
    pub fn hand_over_to(&self, next: Arc<ListenerId>) {
        let _ = self.successor.set(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_follows_every_handover() {
        let a = ListenerId::new(1);
        assert_eq!((a.own(), a.current()), (1, 1));
        let b = ListenerId::new(2);
        a.hand_over_to(b.clone());
        let c = ListenerId::new(3);
        b.hand_over_to(c);
        assert_eq!((a.own(), a.current()), (1, 3));
        a.hand_over_to(ListenerId::new(9));
        assert_eq!(a.current(), 3, "a socket is handed over once");
    }
}
