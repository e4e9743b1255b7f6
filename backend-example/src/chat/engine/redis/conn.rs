//! The command connection of the Redis engine, for one server or a
//! cluster, behind one type the Redis crate's commands and scripts accept;
//! and the time bound every Redis call gets.
//!
//! Both sides are the Redis crate's own reconnecting clients: a
//! `ConnectionManager` for one server, and the crate's async cluster client
//! (`cluster-async`) for a cluster, which routes each command and script by
//! its first key's slot, follows `MOVED`/`ASK`, and refreshes the slot map
//! when a node fails or a replica takes over.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::super::EngineError;

/// Upper bound for one Redis command or script.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a Redis call with [`COMMAND_TIMEOUT`].
pub async fn bounded<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, EngineError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(EngineError::Timeout(COMMAND_TIMEOUT)),
    }
}

/// A command connection (cheap to clone; clones share it).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// How the Lua scripts publish: `SPUBLISH` (sharded Pub/Sub, Redis 7)
    /// on a cluster, where a plain `PUBLISH` would be broadcast to every
    /// node; `PUBLISH` on one server, as before cluster support, so any
    /// Redis version keeps working there.
    pub fn publish_command(&self) -> &'static str {
        match self {
            Conn::Single(_) => "PUBLISH",
            Conn::Cluster(_) => "SPUBLISH",
        }
    }
}

/// The cluster client's builder with this engine's timeouts; each node
/// connection gets the same bounds as the single-server one.
pub fn cluster_builder(nodes: &[String]) -> ClusterClientBuilder {
    ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(COMMAND_TIMEOUT)
        .response_timeout(COMMAND_TIMEOUT)
}

/// Connects to a cluster, failing fast (within [`COMMAND_TIMEOUT`]) when no
/// seed node answers.
pub async fn connect_cluster(nodes: &[String]) -> Result<ClusterConnection, EngineError> {
    let client = cluster_builder(nodes).build()?;
    bounded(client.get_async_connection()).await
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
