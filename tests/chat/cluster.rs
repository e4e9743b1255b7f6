//! Real processes for the chat tests: a `redis-server` on a free loopback
//! port, `chat-backend`s pointed at it, wsgate in front, and [`Chatter`], a
//! chat client over wss that keeps what it receives so tests can assert on
//! order, gaps and duplicates. Every network await is bounded by `STEP`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;
use wsgate::routing::ring::{key_hash, Ring};
use wsgate_tests::{bin, client_tls, tls_config, Backend, Gate, Proc, Ws, STEP};

/// Spawns `cmd` and waits (bounded) for a stdout line `ready` accepts.
pub fn spawn_until<T>(mut cmd: Command, ready: impl Fn(&str) -> Option<T>) -> Result<(Proc, T)> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut proc = Proc { child, lines };
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match proc.lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(found) = ready(&line) {
                    return Ok((proc, found));
                }
            }
            Err(_) => {
                let status = proc.child.try_wait().ok().flatten();
                bail!("{cmd:?} did not become ready (exit status {status:?})");
            }
        }
    }
}

/// A `redis-server` of our own on a free loopback port, without
/// persistence; killed (by PID) when dropped.
pub struct Redis {
    pub port: u16,
    _proc: Proc,
}

impl Redis {
    pub fn start() -> Result<Redis> {
        // The port is free when we look; another process could take it
        // before Redis binds, so retry a few times.
        let mut last = anyhow!("no attempt");
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--logfile", ""]);
            match spawn_until(cmd, |l| {
                l.contains("Ready to accept connections").then_some(())
            }) {
                Ok((proc, ())) => return Ok(Redis { port, _proc: proc }),
                Err(e) => last = e,
            }
        }
        Err(last.context("redis-server must be on PATH (scripts/test.sh installs it)"))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// Starts a chat backend on `listen` with Redis (if given) and extra flags.
pub fn backend(id: &str, listen: &str, redis: Option<&Redis>, extra: &[&str]) -> Result<Backend> {
    backend_at(id, listen, redis.map(Redis::url).as_deref(), extra)
}

/// Starts a chat backend on `listen` with the Redis URL `redis_url` (if
/// given, e.g. a `redis+cluster://` one) and extra flags.
pub fn backend_at(
    id: &str,
    listen: &str,
    redis_url: Option<&str>,
    extra: &[&str],
) -> Result<Backend> {
    let mut cmd = Command::new(bin("chat-backend"));
    cmd.args(["--listen", listen, "--id", id]).args(extra).env(
        "RUST_LOG",
        std::env::var("CHAT_TEST_LOG").unwrap_or("warn".into()),
    );
    match redis_url {
        Some(url) => cmd.env("CHAT_REDIS_URL", url),
        None => cmd.env_remove("CHAT_REDIS_URL"),
    };
    let (proc, addr) = spawn_until(cmd, |line| {
        line.rsplit_once(" listening on ")
            .and_then(|(_, a)| a.trim().parse::<SocketAddr>().ok())
    })?;
    Ok(Backend {
        id: id.to_string(),
        addr,
        proc,
    })
}

/// wsgate in front of `backends` (weight 1 each).
pub fn gate(backends: &[&Backend]) -> Result<Gate> {
    let pool: Vec<(&str, SocketAddr, u32)> = backends
        .iter()
        .map(|b| (b.id.as_str(), b.addr, 1))
        .collect();
    Gate::start(&tls_config(&pool, ""), 1)
}

/// The first `{prefix}-{i}` that wsgate's ring maps to backend `want` of
/// `ids` (the same pure function wsgate uses).
pub fn user_on(ids: &[&str], want: &str, prefix: &str) -> String {
    let ring = Ring::new(ids.iter().map(|id| (*id, 1)));
    let index = ids.iter().position(|id| *id == want).expect("known id");
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|u| ring.pick(key_hash(u.as_bytes())) == Some(index))
        .expect("some user maps to every backend")
}

/// A delivered chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub room: String,
    pub epoch: String,
    pub offset: u64,
    pub from: String,
    pub id: String,
    pub text: String,
}

impl Msg {
    fn from_json(v: &Value) -> Result<Msg> {
        let s = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("message without {k}: {v}"))
        };
        Ok(Msg {
            room: s("room")?,
            epoch: s("epoch")?,
            offset: v["offset"]
                .as_u64()
                .ok_or_else(|| anyhow!("no offset: {v}"))?,
            from: s("from")?,
            id: s("id")?,
            text: s("text")?,
        })
    }
}

/// A room position as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pos {
    pub epoch: String,
    pub offset: u64,
}

/// The reply to a join: `joined`, then (with `since`) the recovered
/// messages and `recovered`.
#[derive(Debug)]
pub struct Joined {
    pub pos: Pos,
    pub presence: Vec<String>,
    pub recovered: Vec<Msg>,
    pub complete: Option<bool>,
}

/// Where clients connect: wsgate's port and a TLS config trusting its dev
/// certificate. Unlike [`Gate`] it can be shared between tasks.
#[derive(Clone)]
pub struct Target {
    pub port: u16,
    pub tls: std::sync::Arc<rustls::ClientConfig>,
}

impl Target {
    pub fn of(gate: &Gate) -> Result<Target> {
        Ok(Target {
            port: gate.addr().port(),
            tls: client_tls(&gate.cert())?,
        })
    }

    /// Opens `wss://localhost:PORT{path}`.
    pub async fn open(&self, path: &str) -> Result<Ws> {
        let url = format!("wss://localhost:{}{path}", self.port);
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            url,
            None,
            false,
            Some(Connector::Rustls(self.tls.clone())),
        );
        let (ws, _) = tokio::time::timeout(STEP, connect)
            .await
            .context("connect timed out")??;
        Ok(ws)
    }
}

/// A chat client: messages go to `messages` in arrival order, everything
/// else to `events` until a test takes it.
pub struct Chatter {
    pub ws: Ws,
    pub user: String,
    pub backend: String,
    pub messages: Vec<Msg>,
    pub events: VecDeque<Value>,
    /// Close code received from the server, once the connection ended.
    pub closed: Option<Option<u16>>,
}

impl Chatter {
    /// Connects through wsgate as `user` and reads the hello.
    pub async fn connect(gate: &Gate, user: &str) -> Result<Chatter> {
        Chatter::connect_to(&Target::of(gate)?, user).await
    }

    /// Connects to `target` as `user` and reads the hello.
    pub async fn connect_to(target: &Target, user: &str) -> Result<Chatter> {
        let ws = target.open(&format!("/ws?user={user}")).await?;
        let mut c = Chatter {
            ws,
            user: user.to_string(),
            backend: String::new(),
            messages: Vec::new(),
            events: VecDeque::new(),
            closed: None,
        };
        let hello = c.expect("hello").await?;
        c.backend = hello["backend"].as_str().unwrap_or_default().to_string();
        Ok(c)
    }

    pub async fn send_json(&mut self, v: Value) -> Result<()> {
        tokio::time::timeout(STEP, self.ws.send(Message::text(v.to_string())))
            .await
            .context("send timed out")??;
        Ok(())
    }

    pub async fn send_raw(&mut self, msg: Message) -> Result<()> {
        tokio::time::timeout(STEP, self.ws.send(msg))
            .await
            .context("send timed out")??;
        Ok(())
    }

    /// Reads one frame and files it. Errors when the connection is over.
    pub async fn pump(&mut self) -> Result<()> {
        if self.closed.is_some() {
            bail!("{} is closed ({:?})", self.user, self.closed);
        }
        let next = tokio::time::timeout(STEP, self.ws.next())
            .await
            .with_context(|| format!("{} waited too long for a frame", self.user))?;
        match next {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["type"] == "message" {
                    self.messages.push(Msg::from_json(&v)?);
                } else {
                    self.events.push_back(v);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                self.closed = Some(frame.map(|f| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                self.closed = Some(None);
                bail!("{}: {e}", self.user);
            }
            None => {
                self.closed.get_or_insert(None);
            }
        }
        Ok(())
    }

    /// Takes the first pending event of type `ty`, reading until one comes.
    pub async fn expect(&mut self, ty: &str) -> Result<Value> {
        loop {
            if let Some(i) = self.events.iter().position(|e| e["type"] == ty) {
                return Ok(self.events.remove(i).unwrap_or_default());
            }
            self.pump()
                .await
                .with_context(|| format!("waiting for {ty}; have {:?}", self.events))?;
        }
    }

    /// Takes the first pending event matching `pred`, reading until one comes.
    pub async fn expect_where(
        &mut self,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        loop {
            if let Some(i) = self.events.iter().position(&pred) {
                return Ok(self.events.remove(i).unwrap_or_default());
            }
            self.pump()
                .await
                .with_context(|| format!("waiting for {what}; have {:?}", self.events))?;
        }
    }

    /// Reads until at least `n` messages have arrived in total.
    pub async fn until_messages(&mut self, n: usize) -> Result<()> {
        while self.messages.len() < n {
            self.pump().await.with_context(|| {
                format!("{} has {} of {n} messages", self.user, self.messages.len())
            })?;
        }
        Ok(())
    }

    /// Reads until the server closes; returns its close code.
    pub async fn until_closed(&mut self) -> Result<Option<u16>> {
        while self.closed.is_none() {
            self.pump().await?;
        }
        Ok(self.closed.flatten())
    }

    /// Joins `room` (resuming from `since`) and collects the whole reply.
    pub async fn join(&mut self, room: &str, since: Option<&Pos>) -> Result<Joined> {
        let mut req = json!({"type": "join", "room": room});
        if let Some(p) = since {
            req["since"] = json!({"epoch": p.epoch, "offset": p.offset});
        }
        self.send_json(req).await?;
        let before = self.messages.len();
        let joined = self.expect("joined").await?;
        let pos = Pos {
            epoch: joined["epoch"].as_str().unwrap_or_default().to_string(),
            offset: joined["offset"]
                .as_u64()
                .ok_or_else(|| anyhow!("bad {joined}"))?,
        };
        let presence = joined["presence"]
            .as_array()
            .ok_or_else(|| anyhow!("bad {joined}"))?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let (recovered, complete) = if since.is_some() {
            let done = self.expect("recovered").await?;
            let count = done["count"].as_u64().unwrap_or(u64::MAX) as usize;
            // The recovered messages precede `recovered`; live ones may follow.
            let got: Vec<Msg> = self.messages[before..]
                .iter()
                .take(count)
                .cloned()
                .collect();
            if got.len() != count {
                bail!("recovered says {count}, got {}", got.len());
            }
            (got, done["complete"].as_bool())
        } else {
            (Vec::new(), None)
        };
        Ok(Joined {
            pos,
            presence,
            recovered,
            complete,
        })
    }

    /// Sends a chat message and waits for its ack; returns the ack.
    pub async fn say(&mut self, room: &str, id: &str, text: &str) -> Result<Value> {
        self.send_json(json!({"type": "send", "room": room, "id": id, "text": text}))
            .await?;
        self.expect_where(&format!("ack {id}"), |e| {
            e["type"] == "ack" && e["id"] == id
        })
        .await
    }

    /// Position after the last message received.
    pub fn cursor(&self) -> Option<Pos> {
        self.messages.last().map(|m| Pos {
            epoch: m.epoch.clone(),
            offset: m.offset,
        })
    }

    /// Closes the connection (bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(STEP, self.ws.close(None)).await;
        let _ = tokio::time::timeout(STEP, async { while self.ws.next().await.is_some() {} }).await;
    }
}

/// Asserts that `messages` have the contiguous offsets `first..` in one epoch.
pub fn assert_contiguous(who: &str, messages: &[Msg], first: u64) {
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(
            m.offset,
            first + i as u64,
            "{who}: message {i} has offset {} (gap or duplicate): {messages:?}",
            m.offset
        );
        assert_eq!(m.epoch, messages[0].epoch, "{who}: epoch changed mid-run");
    }
}
