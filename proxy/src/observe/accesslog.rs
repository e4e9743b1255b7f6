//! The access log's I/O: a bounded queue from the data path to one writer
//! thread, which owns the file.
//!
//! A worker thread hands over an [`Entry`], the line's facts, with
//! `try_send`: it never waits for a disk, and the writer formats the line
//! (JSON or logfmt, the key's keyed hash), which keeps about 25,000
//! instructions per session off the data path (callgrind, `bench/README.md`).
//! When the queue is full (the disk is slower than
//! the sessions ending) the line is dropped and counted
//! (`wsgate_access_log_dropped_total`), like the data path's reports to
//! the control task. The writer is a plain thread, not a task on the
//! control runtime, so a slow `write` stalls neither the admin API nor a
//! drain.
//!
//! Rotation: SIGUSR1 and every reload bump a generation; the writer sees
//! it before its next batch and reopens the path (after `mv`, the new file
//! is created). A reload may also point the log elsewhere or turn it off.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

use super::keyhash::KeyHasher;
use super::record::{self, HttpRequest, WsSession};
use crate::config::accesslog::{Format, Target};
use crate::tunnel::TunnelReport;

/// One line's facts, queued to the writer thread, which formats them.
pub(crate) enum Entry {
    Ws {
        format: Format,
        session: Box<WsSession>,
        pool: String,
        backend: String,
        report: TunnelReport,
    },
    Http {
        format: Format,
        request: HttpRequest,
    },
}

impl Entry {
    fn render(&self, hasher: &KeyHasher) -> String {
        match self {
            Entry::Ws {
                format,
                session,
                pool,
                backend,
                report,
            } => record::ws_line(*format, session, pool, backend, report, hasher),
            Entry::Http { format, request } => record::http_line(*format, request),
        }
    }
}

/// Lines that may wait for the writer: a few seconds of a reconnect wave.
pub const CAPACITY: usize = 16 * 1024;

#[derive(Default)]
pub(crate) struct AccessLog {
    /// Set once, when the log is first turned on; the writer thread lives
    /// from then on (idle on its queue while the log is off).
    /// Boxed: a queue slot is a pointer, not a whole entry.
    tx: OnceLock<SyncSender<Box<Entry>>>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Where lines go now; `None` while the log is off.
    target: Mutex<Option<Target>>,
    /// Bumped to make the writer (re)open `target`.
    generation: AtomicU64,
    dropped: AtomicU64,
    /// The sticky key's hash, keyed once per process (see `keyhash`).
    hasher: KeyHasher,
}

impl AccessLog {
    /// Points the log at `target` (or turns it off), and reopens it: at
    /// start and on every reload. Called on the control thread.
    pub fn configure(&self, target: Option<&Target>) {
        {
            let mut t = self.shared.target.lock().unwrap_or_else(|p| p.into_inner());
            *t = target.cloned();
        }
        self.reopen();
        if target.is_some() && self.tx.get().is_none() {
            let (tx, rx) = sync_channel(CAPACITY);
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("wsgate-accesslog".into())
                .spawn(move || write_lines(&rx, &shared));
            match spawned {
                Ok(_) => {
                    let _ = self.tx.set(tx);
                }
                Err(e) => tracing::error!(error = %e, "cannot start the access log writer"),
            }
        }
    }

    /// Makes the writer reopen its file before the next line (SIGUSR1).
    pub fn reopen(&self) {
        self.shared.generation.fetch_add(1, Relaxed);
    }

    /// Queues one line's facts. Never waits.
    pub fn send(&self, entry: Entry) {
        let Some(tx) = self.tx.get() else {
            return;
        };
        match tx.try_send(Box::new(entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Lines dropped because the queue was full, for `/metrics`.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Relaxed)
    }
}

/// Where the writer is writing.
enum Sink {
    Off,
    Stdout,
    Stderr,
    File(std::io::BufWriter<std::fs::File>),
}

impl Sink {
    fn open(target: Option<&Target>) -> Sink {
        match target {
            None => Sink::Off,
            Some(Target::Stdout) => Sink::Stdout,
            Some(Target::Stderr) => Sink::Stderr,
            Some(Target::File(path)) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(f) => Sink::File(std::io::BufWriter::with_capacity(64 * 1024, f)),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot open the access log; its lines are dropped until the next reopen");
                    Sink::Off
                }
            },
        }
    }

    fn write(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Sink::Off => Ok(()),
            // One locked write per line: the readiness lines on stdout
            // never land inside an access line.
            Sink::Stdout => writeln!(std::io::stdout().lock(), "{line}"),
            Sink::Stderr => writeln!(std::io::stderr().lock(), "{line}"),
            Sink::File(f) => writeln!(f, "{line}"),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.flush(),
            Sink::Stdout => std::io::stdout().flush(),
            _ => Ok(()),
        }
    }
}

/// The writer thread: waits for a line, reopens if asked to, writes every
/// line already queued, flushes (so `tail -f` and tests see whole lines
/// promptly), and waits again. Ends when the process does.
fn write_lines(rx: &Receiver<Box<Entry>>, shared: &Shared) {
    let mut sink = Sink::Off;
    let mut generation = None;
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let now = shared.generation.load(Relaxed);
        if generation != Some(now) {
            generation = Some(now);
            let _ = sink.flush();
            let target = shared
                .target
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            sink = Sink::open(target.as_ref());
        }
        let mut result = sink.write(&first.render(&shared.hasher));
        while let Ok(entry) = rx.try_recv() {
            result = result.and_then(|()| sink.write(&entry.render(&shared.hasher)));
        }
        result = result.and_then(|()| sink.flush());
        match result {
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot write the access log");
            }
            Err(_) => {}
            Ok(()) => failing = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(path: &std::path::Path, lines: usize) -> String {
        // Bounded: the writer flushes after every batch.
        for _ in 0..500 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= lines {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{path:?} never got {lines} lines");
    }

    /// A plain request's entry whose line says `path=/NAME`.
    fn entry(name: &str) -> Entry {
        Entry::Http {
            format: Format::Logfmt,
            request: HttpRequest {
                start: std::time::SystemTime::UNIX_EPOCH,
                listener: "l".into(),
                client: "127.0.0.1:1".parse().unwrap(),
                http_version: "HTTP/1.1",
                method: "GET".into(),
                path: format!("/{name}"),
                status: 200,
                bytes: 0,
                duration: std::time::Duration::ZERO,
            },
        }
    }

    /// The `path` of each line of `text`.
    fn paths(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("path=/")))
            .collect()
    }

    #[test]
    fn writes_lines_and_reopens_a_rotated_file() {
        let dir = std::env::temp_dir().join(format!("wsgate-accesslog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let log = AccessLog::default();
        log.send(entry("before")); // off: nothing, no writer yet
        log.configure(Some(&Target::File(path.clone())));
        log.send(entry("one"));
        log.send(entry("two"));
        assert_eq!(paths(&wait_for(&path, 2)), ["one", "two"]);
        // Rotation: move the file away, reopen, write.
        let rotated = dir.join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        log.send(entry("three"));
        assert_eq!(paths(&wait_for(&path, 1)), ["three"]);
        let old = std::fs::read_to_string(&rotated).unwrap();
        assert_eq!(paths(&old), ["one", "two"]);
        assert!(
            old.starts_with("type=http "),
            "formatted by the writer: {old}"
        );
        assert_eq!(log.dropped(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
