//! The open-loop send schedule: slot `i` is due at `i / rate` seconds after
//! the start, whatever happened to earlier slots.
//!
//! Integer math throughout (the rate is kept in thousandths of a slot per
//! second), so `due_by` and `at_ns` agree exactly and tests can say so.

/// Nanoseconds times thousandths: `at_ns(i) = i * SCALE / rate_milli`.
const SCALE: u128 = 1_000_000_000_000;

/// A fixed-rate schedule of numbered slots (messages, or connection starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    rate_milli: u128,
}

impl Schedule {
    /// A schedule of `rate` slots per second; `None` unless `0.001 <= rate <= 1e9`.
    pub fn new(rate: f64) -> Option<Self> {
        if !(0.001..=1e9).contains(&rate) {
            return None;
        }
        Some(Self {
            // In range by the check above, so the cast neither saturates nor truncates to 0.
            rate_milli: (rate * 1000.0).round() as u128,
        })
    }

    /// When slot `i` is due, in nanoseconds after the start (rounded down).
    pub fn at_ns(&self, i: u64) -> u64 {
        clamp_u64(i as u128 * SCALE / self.rate_milli)
    }

    /// How many slots are due at `elapsed_ns`: the count of `i` with
    /// `at_ns(i) <= elapsed_ns`.
    pub fn due_by(&self, elapsed_ns: u64) -> u64 {
        // at_ns(i) <= e  <=>  i * SCALE < (e + 1) * rate_milli
        clamp_u64(((elapsed_ns as u128 + 1) * self.rate_milli).div_ceil(SCALE))
    }

    /// How many slots fall before `window_ns`: the count of `i` with
    /// `at_ns(i) < window_ns`.
    pub fn slots_within(&self, window_ns: u64) -> u64 {
        match window_ns.checked_sub(1) {
            Some(last) => self.due_by(last),
            None => 0,
        }
    }
}

fn clamp_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Which of `n` connections sends slot `i`: round-robin, so each connection
/// sends at `rate / n` with its slots evenly interleaved with the others.
pub fn connection_for(i: u64, n: usize) -> usize {
    // n > 0 is checked by callers; `max(1)` keeps this total anyway.
    (i % n.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_silly_rates() {
        assert!(Schedule::new(0.0).is_none());
        assert!(Schedule::new(-5.0).is_none());
        assert!(Schedule::new(f64::NAN).is_none());
        assert!(Schedule::new(2e9).is_none());
    }

    #[test]
    fn evenly_spaced() {
        let s = Schedule::new(20_000.0).unwrap();
        assert_eq!(s.at_ns(0), 0);
        assert_eq!(s.at_ns(1), 50_000);
        assert_eq!(s.at_ns(20_000), 1_000_000_000);
        // Slots per second equals the rate.
        assert_eq!(s.slots_within(1_000_000_000), 20_000);
        assert_eq!(s.slots_within(10_000_000_000), 200_000);
        assert_eq!(s.slots_within(0), 0);
    }

    #[test]
    fn fractional_rates() {
        let s = Schedule::new(3.0).unwrap();
        assert_eq!(s.at_ns(1), 333_333_333);
        assert_eq!(s.at_ns(3), 1_000_000_000);
        let s = Schedule::new(0.5).unwrap();
        assert_eq!(s.at_ns(1), 2_000_000_000);
        assert_eq!(s.slots_within(4_000_000_000), 2);
    }

    #[test]
    fn due_by_agrees_with_at_ns() {
        for rate in [0.7, 1.0, 3.0, 999.5, 20_000.0, 1e6, 3.3e7] {
            let s = Schedule::new(rate).unwrap();
            for i in (0..5_000u64).chain([1 << 20, 123_456_789]) {
                let t = s.at_ns(i);
                assert!(s.due_by(t) > i, "rate {rate} slot {i}: due at {t}");
                if t > 0 {
                    // Just before its time, slot i is not yet due.
                    assert!(s.due_by(t - 1) <= i, "rate {rate} slot {i}");
                }
            }
        }
    }

    #[test]
    fn round_robin() {
        let counts = (0..1000).fold([0u32; 3], |mut c, i| {
            c[connection_for(i, 3)] += 1;
            c
        });
        assert_eq!(counts, [334, 333, 333]);
        assert_eq!(connection_for(7, 0), 0);
    }
}
