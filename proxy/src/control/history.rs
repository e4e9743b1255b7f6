//! What the status page shows of the recent past, kept by the control
//! task in bounded rings: the last reloads, and Close frames by side and
//! code per sampling interval. Pure: the task feeds it the outcomes and
//! the cumulative counters (`observe::stats`), read once per
//! [`SAMPLE_INTERVAL`], so the data path does nothing extra.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::api::{CloseCount, CloseHistory, CloseSample, ReloadEntry, ReloadOutcome};

/// Reloads remembered.
pub const RELOADS: usize = 20;
/// How often the close counters are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: ten minutes.
pub const SAMPLES: usize = 120;

/// A ring that forgets its oldest entry once it holds `cap`.
#[derive(Debug, Clone)]
pub struct Ring<T> {
    items: VecDeque<T>,
    cap: usize,
}

impl<T: Clone> Ring<T> {
    pub fn new(cap: usize) -> Self {
        Ring {
            items: VecDeque::with_capacity(cap),
            cap,
        }
    }

    pub fn push(&mut self, item: T) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    /// Oldest first.
    pub fn to_vec(&self) -> Vec<T> {
        self.items.iter().cloned().collect()
    }
}

/// One line about a reload.
pub fn reload_entry(outcome: &ReloadOutcome) -> ReloadEntry {
    let summary = match &outcome.error {
        // The first line: a config error's position and message.
        Some(e) => e.lines().next().unwrap_or_default().to_string(),
        None => {
            let mut parts = Vec::new();
            if !outcome.added.is_empty() {
                parts.push(format!("added {}", outcome.added.join(", ")));
            }
            if !outcome.removed.is_empty() {
                parts.push(format!("removed {}", outcome.removed.join(", ")));
            }
            let problems = outcome.certificate_errors.len() + outcome.listener_errors.len();
            if problems > 0 {
                parts.push(format!("{problems} certificate or listener errors"));
            }
            if !outcome.notes.is_empty() {
                parts.push(outcome.notes.join("; "));
            }
            if parts.is_empty() {
                "no change".to_string()
            } else {
                parts.join("; ")
            }
        }
    };
    ReloadEntry {
        at_unix: outcome.at_unix,
        ok: outcome.ok,
        summary,
    }
}

/// Close frames per interval, from samples of cumulative counters.
#[derive(Debug, Clone)]
pub struct CloseSeries {
    last: BTreeMap<(String, String), u64>,
    samples: Ring<CloseSample>,
}

impl Default for CloseSeries {
    fn default() -> Self {
        CloseSeries {
            last: BTreeMap::new(),
            samples: Ring::new(SAMPLES),
        }
    }
}

impl CloseSeries {
    /// Records the closes since the previous sample; `totals` are the
    /// counters since start, by (side, code); the first sample counts
    /// from zero, the start.
    pub fn sample(&mut self, at_unix: u64, totals: BTreeMap<(String, String), u64>) {
        let counts = totals
            .iter()
            .filter_map(|(key, &n)| {
                let delta = n.saturating_sub(self.last.get(key).copied().unwrap_or(0));
                (delta > 0).then(|| CloseCount {
                    side: key.0.clone(),
                    code: key.1.clone(),
                    count: delta,
                })
            })
            .collect();
        self.last = totals;
        self.samples.push(CloseSample { at_unix, counts });
    }

    pub fn history(&self) -> CloseHistory {
        CloseHistory {
            interval_secs: SAMPLE_INTERVAL.as_secs(),
            samples: self.samples.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_newest() {
        let mut r = Ring::new(3);
        assert!(r.to_vec().is_empty());
        for i in 0..5 {
            r.push(i);
        }
        assert_eq!(r.to_vec(), vec![2, 3, 4]);
    }

    fn totals(list: &[(&str, &str, u64)]) -> BTreeMap<(String, String), u64> {
        list.iter()
            .map(|(s, c, n)| ((s.to_string(), c.to_string()), *n))
            .collect()
    }

    #[test]
    fn samples_hold_the_closes_of_their_interval() {
        let mut s = CloseSeries::default();
        s.sample(100, totals(&[]));
        s.sample(105, totals(&[("client", "1000", 3)]));
        s.sample(110, totals(&[("client", "1000", 3), ("wsgate", "1012", 2)]));
        let h = s.history();
        assert_eq!(h.interval_secs, 5);
        let counts: Vec<Vec<(String, String, u64)>> = h
            .samples
            .iter()
            .map(|x| {
                x.counts
                    .iter()
                    .map(|c| (c.side.clone(), c.code.clone(), c.count))
                    .collect()
            })
            .collect();
        assert_eq!(
            counts,
            vec![
                vec![],
                vec![("client".into(), "1000".into(), 3)],
                vec![("wsgate".into(), "1012".into(), 2)],
            ]
        );
        assert_eq!(h.samples[2].at_unix, 110);
        for t in 0..SAMPLES as u64 {
            s.sample(200 + t, totals(&[]));
        }
        assert_eq!(s.history().samples.len(), SAMPLES, "bounded");
    }

    #[test]
    fn reloads_are_summarised_in_a_line() {
        let ok = ReloadOutcome {
            ok: true,
            at_unix: 7,
            error: None,
            added: vec!["chat/b3".into()],
            removed: vec![],
            notes: vec![],
            certificate_errors: vec![],
            listener_errors: vec![],
        };
        let e = reload_entry(&ok);
        assert_eq!(
            (e.at_unix, e.ok, e.summary.as_str()),
            (7, true, "added chat/b3")
        );
        let none = ReloadOutcome {
            added: vec![],
            ..ok.clone()
        };
        assert_eq!(reload_entry(&none).summary, "no change");
        let bad = ReloadOutcome {
            ok: false,
            error: Some("wsgate.yaml:3:5: unknown field\n  detail".into()),
            ..none
        };
        let e = reload_entry(&bad);
        assert!(!e.ok);
        assert_eq!(e.summary, "wsgate.yaml:3:5: unknown field");
    }
}
