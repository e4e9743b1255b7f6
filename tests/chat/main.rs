//! Chat cluster tests (issue 3): real `redis-server`, real `chat-backend`s,
//! real wsgate, real WebSocket clients over wss, all on loopback.
//!
//! - `rooms`: two users on different backends share a room: same messages,
//!   same order, presence lists both;
//! - `resume`: reconnecting with `since` yields exactly the missed messages,
//!   also when the backend died and another one serves the user; resends
//!   are stored once; trimmed history says `complete: false`;
//! - `restart`: SIGTERM one backend under load (20 senders, 1,000 messages):
//!   1012 closes, reconnects through wsgate, nothing lost or duplicated;
//! - `abuse`: bad input, floods, oversize, silent clients, health checks;
//! - `sharded`: the same backends on a real Redis Cluster (`rediscluster`
//!   starts it): rooms on every shard across backends, resume on the other
//!   backend, and a failover of a room's master during traffic.

mod abuse;
mod cluster;
mod rediscluster;
mod restart;
mod resume;
mod rooms;
mod sharded;
