//! `sticky`: does each user always land on the same backend?
//!
//! For `--rounds` rounds, every user connects (one connection per user at
//! a time, `--concurrency` in flight), reads which backend served it, and
//! closes. The backend id comes from a JSON field of the hello
//! (`--id-field`, default `backend`, as the example backend sends) or from
//! a 101 response header (`--id-header`). A user seen on two backends is a
//! violation; the check passes when there are none and no attempt failed.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{check_positive, Outcome};
use crate::chart::{Panel, Series};
use crate::cli::StickyArgs;
use crate::client::{close, ConnectError, Connected, Target};
use crate::summary::Errors;
use crate::{BenchError, Ctx};

/// How many moved users the summary lists.
const EXAMPLES: usize = 5;

#[derive(Debug, Serialize)]
struct Moved {
    user: String,
    backends: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Detail {
    users: u64,
    rounds: u32,
    connections: u64,
    failed: u64,
    /// Users seen on exactly one backend in every round.
    sticky_users: u64,
    /// Users seen on more than one backend.
    moved_users: u64,
    moved_examples: Vec<Moved>,
    /// Users per backend, by the first backend each user was seen on.
    backends: BTreeMap<String, u64>,
}

/// Where the backend id is read from.
#[derive(Clone)]
enum IdSource {
    HelloField(String),
    Header(String),
}

/// The backend id in a hello message: the field's string value, or its
/// JSON text for other types.
fn id_from_hello(hello: &str, field: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(hello).ok()?;
    match value.get(field)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn backend_id(conn: &Connected, source: &IdSource) -> Result<String, String> {
    match source {
        IdSource::Header(name) => conn
            .headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| format!("the 101 response has no {name} header")),
        IdSource::HelloField(field) => {
            let hello = conn.hello.as_deref().unwrap_or_default();
            id_from_hello(hello, field)
                .ok_or_else(|| format!("hello has no `{field}` field: {hello:.80}"))
        }
    }
}

/// Checks per-user observations (one list per user, in round order).
fn assess(seen: &[Vec<String>]) -> (u64, Vec<usize>) {
    let mut sticky = 0;
    let mut moved = Vec::new();
    for (user, ids) in seen.iter().enumerate() {
        match ids.first() {
            Some(first) if ids.iter().all(|id| id == first) => sticky += 1,
            Some(_) => moved.push(user),
            None => {}
        }
    }
    (sticky, moved)
}

pub async fn run(ctx: &Ctx, args: &StickyArgs) -> Result<Outcome, BenchError> {
    check_positive("--concurrency", args.concurrency)?;
    if args.users == 0 || args.rounds == 0 {
        return Err(BenchError::BadArgs(
            "--users and --rounds must be at least 1".into(),
        ));
    }
    let source = match &args.id_header {
        Some(h) => IdSource::Header(h.clone()),
        None if args.conn.no_hello => {
            return Err(BenchError::BadArgs(
                "with --no-hello, name the backend-id header with --id-header".into(),
            ))
        }
        None => IdSource::HelloField(args.id_field.clone()),
    };
    let users = usize::try_from(args.users)
        .map_err(|_| BenchError::BadArgs("--users is too large".into()))?;
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); users];
    let mut errors = Errors::default();
    let gate = Arc::new(Semaphore::new(args.concurrency));
    ctx.progress
        .phase("sticky", args.users * u64::from(args.rounds));
    let mut done = 0;
    for _round in 0..args.rounds {
        if ctx.stop.is_set() {
            break;
        }
        let mut set = JoinSet::new();
        for user in 0..args.users {
            let (target, gate, source) = (ctx.target.clone(), gate.clone(), source.clone());
            set.spawn(async move {
                // The semaphore is never closed, so acquire cannot fail.
                let _permit = gate.acquire_owned().await;
                (user, observe(&target, user, &source).await)
            });
        }
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((user, Ok(id))) => seen[user as usize].push(id),
                Ok((_, Err(Failure::Connect(e)))) => errors.add(&e.kind(), || e.to_string()),
                Ok((_, Err(Failure::NoId(msg)))) => errors.add("no_id", || msg),
                Err(e) => errors.add("task", || e.to_string()),
            }
            done += 1;
            ctx.progress.set(done);
        }
    }

    let (sticky_users, moved) = assess(&seen);
    let mut backends = BTreeMap::new();
    for first in seen.iter().filter_map(|ids| ids.first()) {
        *backends.entry(first.clone()).or_insert(0) += 1;
    }
    let name = |user: usize| ctx.target.url_for(user as u64);
    let detail = Detail {
        users: args.users,
        rounds: args.rounds,
        connections: seen.iter().map(|ids| ids.len() as u64).sum(),
        failed: errors.total,
        sticky_users,
        moved_users: moved.len() as u64,
        moved_examples: moved
            .iter()
            .take(EXAMPLES)
            .map(|&u| Moved {
                user: name(u),
                backends: seen[u].clone(),
            })
            .collect(),
        backends,
    };
    let panels = vec![Panel::new(
        "Users per backend",
        "backend",
        "users",
        detail
            .backends
            .iter()
            .enumerate()
            .map(|(i, (id, n))| Series::bars(id, vec![(i as f64, *n as f64)]))
            .collect(),
    )];
    let ok = moved.is_empty() && errors.total == 0 && sticky_users == args.users;
    let report = super::report(ctx, "sticky", ok, detail, errors, None);
    Ok(Outcome {
        report,
        title: format!(
            "wsgate-bench sticky: {} users x {} rounds",
            args.users, args.rounds
        ),
        panels,
    })
}

enum Failure {
    Connect(ConnectError),
    NoId(String),
}

async fn observe(target: &Target, user: u64, source: &IdSource) -> Result<String, Failure> {
    let mut conn = target.connect(user).await.map_err(Failure::Connect)?;
    let id = backend_id(&conn, source).map_err(Failure::NoId);
    close(&mut conn.ws, target.timeout)
        .await
        .map_err(Failure::Connect)?;
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_hello() {
        let hello = r#"{"type":"hello","backend":"b1","n":3}"#;
        assert_eq!(id_from_hello(hello, "backend").as_deref(), Some("b1"));
        assert_eq!(id_from_hello(hello, "n").as_deref(), Some("3"));
        assert_eq!(id_from_hello(hello, "missing"), None);
        assert_eq!(id_from_hello("not json", "backend"), None);
    }

    #[test]
    fn assess_users() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let seen = vec![s(&["a", "a", "a"]), s(&["b", "a"]), s(&[]), s(&["c"])];
        let (sticky, moved) = assess(&seen);
        assert_eq!(sticky, 2);
        assert_eq!(moved, vec![1]);
    }
}
