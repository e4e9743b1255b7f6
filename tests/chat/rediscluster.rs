//! A real Redis Cluster for the chat tests: six `redis-server
//! --cluster-enabled yes` (three masters, three replicas, so a master can
//! fail over) on free loopback ports, joined by `redis-cli --cluster
//! create`, with their files in a scratch directory removed on drop. Every
//! wait polls the nodes' own state (`CLUSTER INFO`, `ROLE`) with a deadline;
//! the servers are killed by PID on drop. Admin commands go through
//! `redis-cli` (bounded by coreutils' `timeout`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use wsgate_tests::{scratch, Proc, STEP};

use crate::cluster::spawn_until;

/// Masters, and one replica for each.
const MASTERS: usize = 3;
/// How long a master may be unreachable before its replica takes over;
/// short, so a failover test is quick.
const NODE_TIMEOUT_MS: &str = "1000";

/// One `redis-server` of the cluster.
pub struct Node {
    pub port: u16,
    proc: Option<Proc>,
}

/// One line of `CLUSTER NODES`.
struct NodeLine {
    id: String,
    port: u16,
    flags: String,
    /// The master's id, for a replica.
    master: String,
    slots: Vec<(u16, u16)>,
}

/// The cluster; see the module docs.
pub struct RedisCluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `redis-cli -p PORT ARGS…`, bounded; its stdout, trimmed.
pub fn cli(port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new("timeout")
        .args([
            "10",
            "redis-cli",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(args)
        .output()
        .context("redis-cli must be on PATH (Debian's redis-tools)")?;
    if !out.status.success() {
        bail!(
            "redis-cli -p {port} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Polls `check` every 50 ms until it is true, for at most `limit`.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out waiting for {what}")
}

impl RedisCluster {
    pub fn start() -> Result<RedisCluster> {
        let dir = scratch("redis-cluster");
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
        };
        for i in 0..2 * MASTERS {
            let node = cluster.start_node(i)?;
            cluster.nodes.push(node);
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new("timeout");
        create
            .args(["30", "redis-cli", "--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = create.output().context("redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster.wait_healthy()?;
        Ok(cluster)
    }

    /// Starts node `i` on a free client port and a free cluster-bus port
    /// (retrying if another process took one before Redis bound it).
    fn start_node(&self, i: usize) -> Result<Node> {
        let mut last = anyhow!("no attempt");
        for attempt in 0..5 {
            let (port, bus) = (free_port()?, free_port()?);
            if port == bus {
                continue;
            }
            let dir = self.dir.join(format!("node{i}-{attempt}"));
            std::fs::create_dir_all(&dir)?;
            let mut cmd = Command::new("redis-server");
            cmd.current_dir(&dir)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", NODE_TIMEOUT_MS])
                .args(["--save", "", "--appendonly", "no", "--logfile", ""]);
            match spawn_until(cmd, |l| {
                l.contains("Ready to accept connections").then_some(())
            }) {
                Ok((proc, ())) => {
                    return Ok(Node {
                        port,
                        proc: Some(proc),
                    })
                }
                Err(e) => last = e,
            }
        }
        Err(last.context("redis-server (7.0 or later) must be on PATH"))
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.proc.is_some())
    }

    /// Every live node reports `cluster_state:ok`, and every replica's
    /// link to its master is up (so a failover can happen).
    pub fn wait_healthy(&self) -> Result<()> {
        wait_for("cluster_state:ok on every node", STEP, || {
            self.live().all(|(_, n)| {
                cli(n.port, &["CLUSTER", "INFO"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            })
        })?;
        wait_for("every replica in sync", STEP, || {
            self.live().all(|(_, n)| {
                cli(n.port, &["INFO", "replication"]).is_ok_and(|info| {
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
            })
        })
    }

    /// `CLUSTER NODES` as seen by a live node.
    fn topology(&self) -> Result<Vec<NodeLine>> {
        let (_, seed) = self.live().next().ok_or_else(|| anyhow!("no live node"))?;
        let text = cli(seed.port, &["CLUSTER", "NODES"])?;
        let mut out = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                continue;
            }
            let port = f[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| anyhow!("bad CLUSTER NODES line {line}"))?;
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect();
            out.push(NodeLine {
                id: f[0].into(),
                port,
                flags: f[2].into(),
                master: f[3].into(),
                slots,
            });
        }
        Ok(out)
    }

    fn index_of(&self, port: u16) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .ok_or_else(|| anyhow!("unknown port {port}"))
    }

    /// The hash slot of `key`.
    pub fn slot(&self, key: &str) -> Result<u16> {
        let (_, seed) = self.live().next().ok_or_else(|| anyhow!("no live node"))?;
        Ok(cli(seed.port, &["CLUSTER", "KEYSLOT", key])?.parse()?)
    }

    /// The node (index) that is master of `key`'s slot now.
    pub fn master_of(&self, key: &str) -> Result<usize> {
        let slot = self.slot(key)?;
        let nodes = self.topology()?;
        let master = nodes
            .iter()
            .find(|n| {
                n.flags.contains("master")
                    && !n.flags.contains("fail")
                    && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .ok_or_else(|| anyhow!("no master serves slot {slot}"))?;
        self.index_of(master.port)
    }

    /// The replica (index) of master `i`.
    pub fn replica_of(&self, i: usize) -> Result<usize> {
        let nodes = self.topology()?;
        let port = self.nodes[i].port;
        let id = &nodes
            .iter()
            .find(|n| n.port == port)
            .ok_or_else(|| anyhow!("node {port} not in the topology"))?
            .id;
        let replica = nodes
            .iter()
            .find(|n| &n.master == id && !n.flags.contains("fail"))
            .ok_or_else(|| anyhow!("node {port} has no replica"))?;
        self.index_of(replica.port)
    }

    /// Kills node `i` (SIGKILL, by PID) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut proc) = self.nodes[i].proc.take() {
            proc.signal("KILL");
            proc.wait_exit(STEP);
        }
    }

    /// Waits until node `i` says it is a master.
    pub fn wait_master(&self, i: usize, limit: Duration) -> Result<()> {
        let port = self.nodes[i].port;
        wait_for(&format!("node {port} to become master"), limit, || {
            cli(port, &["ROLE"]).is_ok_and(|r| r.starts_with("master"))
        })
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Proc's own drop kills each server by PID.
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
