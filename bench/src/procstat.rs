//! CPU time and resident memory of other processes (`--pid`), read from
//! Linux `/proc`, so a run can report the proxy's CPU per message or per
//! handshake and its memory per connection.
//!
//! CPU comes from `/proc/PID/stat` (utime + stime, all threads, in clock
//! ticks of 10 ms: Linux fixes USER_HZ at 100 on common architectures).
//! Memory is `VmRSS` from `/proc/PID/status`. Several pids are summed, for
//! proxies that run a master and workers.

use crate::summary::{round, ProcReport};
use std::fs;
use std::io;

/// Clock ticks per second in `/proc/PID/stat` (USER_HZ).
const TICKS_PER_S: f64 = 100.0;

/// Reading `/proc` failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading /proc/{pid}: {source} (is the --pid process running, and is this Linux?)")]
    Read { pid: u32, source: io::Error },
    #[error("unexpected format in /proc/{pid}/{file}")]
    Format { pid: u32, file: &'static str },
}

/// Summed usage of the watched processes at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub cpu_ticks: u64,
    pub rss_kib: u64,
}

/// The processes to watch; empty means "measure nothing".
#[derive(Debug, Clone, Default)]
pub struct Watch {
    pids: Vec<u32>,
}

impl Watch {
    pub fn new(pids: Vec<u32>) -> Self {
        Self { pids }
    }

    /// Samples every pid; `Ok(None)` when no pid was given.
    pub fn sample(&self) -> Result<Option<Sample>, ProcError> {
        if self.pids.is_empty() {
            return Ok(None);
        }
        let mut total = Sample::default();
        for &pid in &self.pids {
            let read = |file: &str| {
                fs::read_to_string(format!("/proc/{pid}/{file}"))
                    .map_err(|source| ProcError::Read { pid, source })
            };
            total.cpu_ticks +=
                parse_stat_ticks(&read("stat")?).ok_or(ProcError::Format { pid, file: "stat" })?;
            total.rss_kib += parse_rss_kib(&read("status")?).ok_or(ProcError::Format {
                pid,
                file: "status",
            })?;
        }
        Ok(Some(total))
    }

    /// The report between two samples (both present when pids were given).
    pub fn report(&self, start: Option<Sample>, end: Option<Sample>) -> Option<ProcReport> {
        let (start, end) = (start?, end?);
        Some(ProcReport {
            pids: self.pids.clone(),
            cpu_s: round(cpu_seconds(start, end), 2),
            rss_kib_start: start.rss_kib,
            rss_kib_end: end.rss_kib,
        })
    }
}

/// CPU seconds this process has used so far (`None` without `/proc`).
pub fn own_cpu_seconds() -> Option<f64> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    Some(parse_stat_ticks(&stat)? as f64 / TICKS_PER_S)
}

/// CPU seconds used between two samples.
pub fn cpu_seconds(start: Sample, end: Sample) -> f64 {
    end.cpu_ticks.saturating_sub(start.cpu_ticks) as f64 / TICKS_PER_S
}

/// utime + stime from a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may contain spaces, so fields are counted after
/// the last `)`: utime and stime are fields 14 and 15 of the line.
fn parse_stat_ticks(line: &str) -> Option<u64> {
    let rest = &line[line.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 is index 0
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` in KiB from `/proc/PID/status`.
fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_name() {
        let line = "4242 (my proxy) S 1 4242 4242 0 -1 4194560 900 0 0 0 731 96 0 0 20 0 3 0 1234 10000 500 18446744073709551615";
        assert_eq!(parse_stat_ticks(line), Some(827));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn rss_from_status() {
        let status = "Name:\twsgate\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_rss_kib(status), Some(12345));
        assert_eq!(parse_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn own_process() {
        let watch = Watch::new(vec![std::process::id()]);
        let s = watch.sample().unwrap().unwrap();
        assert!(s.rss_kib > 0);
        let r = watch.report(Some(s), Some(s)).unwrap();
        assert_eq!(r.cpu_s, 0.0);
        assert!(Watch::default().sample().unwrap().is_none());
    }
}
