//! Bounded load (`pools.NAME.balance_factor`), "consistent hashing with
//! bounded loads" (Mirrokni, Thorup, Zadimoghaddam) on top of the
//! rendezvous ring: a new connection walks its key's rendezvous order and
//! takes the first backend that stays within the bound, so no backend
//! holds much more than `factor` times its share while most keys still
//! reach their first choice. Pure: the live counts come in as a function.
//!
//! The rule, exactly (README, "Bounded load"):
//! - **Over which backends**: the routable ones, those the ring may choose
//!   now (taking new connections, weight > 0). Connections on draining,
//!   down or removed backends are leaving and count for nobody.
//! - **Counting the new connection**: yes, as the paper does. With `C`
//!   live connections on the routable backends, total weight `W` and
//!   factor `f`, backend `i` (weight `w_i`) may take the connection while
//!   `count_i + 1 <= ceil(f * (C + 1) * w_i / W)`; equal weights give the
//!   paper's `ceil(f * (C + 1) / n)`. Compared as the exact integer
//!   inequality `count_i * 1000 * W < permille * (C + 1) * w_i`.
//! - **Every candidate over the bound**: the first routable choice, never
//!   a refusal. With `f >= 1` and counts read once this cannot happen (the
//!   bounds add up to at least `C + 1 > C`), so it is a guard.
//! - **Off**: the caller does not come here and reads no count at all.

use super::ring::Ring;
use crate::config::BalanceFactor;

/// Where one connection goes under the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded {
    /// The backend chosen (an index into the pool's backends).
    pub index: usize,
    /// The key's first routable choice; differs from `index` when the bound
    /// sent the connection further down its rendezvous order.
    pub first: usize,
}

impl Bounded {
    /// Whether the bound moved the connection past its first choice.
    pub fn overflowed(&self) -> bool {
        self.index != self.first
    }
}

/// The routable backends' live connections and total weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    pub connections: u64,
    pub weight: u64,
}

impl Load {
    /// Sums `count` and the ring's weights over the backends `routable`
    /// admits (weight 0 never is).
    pub fn of(ring: &Ring, routable: impl Fn(usize) -> bool, count: impl Fn(usize) -> u64) -> Load {
        let mut load = Load::default();
        for i in 0..ring.len() {
            let weight = ring.weight(i).unwrap_or(0);
            if weight > 0 && routable(i) {
                load.connections = load.connections.saturating_add(count(i));
                load.weight += u64::from(weight);
            }
        }
        load
    }
}

/// Whether a backend of `weight` holding `count` live connections may take
/// one more: `count + 1 <= ceil(f * (C + 1) * weight / W)`, which for an
/// integer count is `count < f * (C + 1) * weight / W`, compared exactly.
pub fn accepts(factor: BalanceFactor, count: u64, weight: u32, load: Load) -> bool {
    // count < 2^64, 1000 < 2^10, W < 2^48 (2^16 backends of weight < 2^32):
    // under 2^122. permille < 2^17, C + 1 <= 2^64, weight < 2^32: under 2^113.
    let lhs = u128::from(count) * 1000 * u128::from(load.weight);
    let rhs =
        u128::from(factor.permille()) * (u128::from(load.connections) + 1) * u128::from(weight);
    lhs < rhs
}

/// `ceil(f * (C + 1) * weight / W)`: the most live connections a backend of
/// `weight` may hold once it has taken a new one (for `status`). Zero for a
/// pool with no routable weight.
pub fn bound(factor: BalanceFactor, weight: u32, load: Load) -> u64 {
    if load.weight == 0 {
        return 0;
    }
    let num =
        u128::from(factor.permille()) * (u128::from(load.connections) + 1) * u128::from(weight);
    let den = 1000 * u128::from(load.weight);
    u64::try_from(num.div_ceil(den)).unwrap_or(u64::MAX)
}

/// The backend for `key_hash` under the bound: the first of the key's
/// rendezvous order among `routable` backends that [`accepts`] one more
/// connection, else the first choice. None only when no backend is
/// routable. `count(i)` is backend `i`'s live connections.
///
/// Each step of the walk is one `pick_eligible` with the backends already
/// tried excluded, so the order is exactly the ring's (the runner-up that
/// `wsgate route` prints is the first place an overflow goes). A walk past
/// `k` full backends costs `k + 1` passes over the pool; the list of tried
/// backends is allocated only when the first choice is full.
pub fn choose(
    ring: &Ring,
    key_hash: u64,
    routable: impl Fn(usize) -> bool,
    count: impl Fn(usize) -> u64,
    factor: BalanceFactor,
) -> Option<Bounded> {
    let first = ring.pick_eligible(key_hash, &routable)?;
    let load = Load::of(ring, &routable, &count);
    let fits = |i: usize| accepts(factor, count(i), ring.weight(i).unwrap_or(0), load);
    if fits(first) {
        return Some(Bounded {
            index: first,
            first,
        });
    }
    let mut tried = vec![first];
    while let Some(next) = ring.pick_eligible(key_hash, |i| routable(i) && !tried.contains(&i)) {
        if fits(next) {
            return Some(Bounded { index: next, first });
        }
        tried.push(next);
    }
    // Every routable backend is over the bound (only with counts that
    // changed while they were read): never refuse, keep the key's own.
    Some(Bounded {
        index: first,
        first,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::ring::key_hash;

    fn f(permille: u32) -> BalanceFactor {
        BalanceFactor::from_permille(permille).unwrap()
    }

    fn ring(weights: &[u32]) -> Ring {
        let ids: Vec<String> = (0..weights.len()).map(|i| format!("b{i}")).collect();
        Ring::new(ids.iter().map(String::as_str).zip(weights.iter().copied()))
    }

    /// The key's whole rendezvous order among `routable`, by repeated picks.
    fn order(ring: &Ring, h: u64, routable: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        while let Some(i) = ring.pick_eligible(h, |i| routable(i) && !out.contains(&i)) {
            out.push(i);
        }
        out
    }

    #[test]
    fn the_bound_is_the_papers_and_counts_the_new_connection() {
        // 3 backends, 9 connections, 1.25: ceil(1.25 * 10 / 3) = 5.
        let load = Load {
            connections: 9,
            weight: 3,
        };
        assert_eq!(bound(f(1250), 1, load), 5);
        assert!(accepts(f(1250), 4, 1, load), "4 + 1 <= 5");
        assert!(!accepts(f(1250), 5, 1, load), "5 + 1 > 5");
        // Exactly on the bound, f * (C + 1) / n = 1.25 * 12 / 3 = 5: a
        // backend with 4 may reach 5, one with 5 may not.
        let load = Load {
            connections: 11,
            weight: 3,
        };
        assert_eq!(bound(f(1250), 1, load), 5);
        assert!(accepts(f(1250), 4, 1, load));
        assert!(!accepts(f(1250), 5, 1, load));
        // An empty pool takes its first connection anywhere, even at 1.0.
        let empty = Load {
            connections: 0,
            weight: 3,
        };
        assert!(accepts(f(1000), 0, 1, empty));
        assert_eq!(bound(f(1000), 1, empty), 1);
        // Weights: a weight-2 backend of total 4 may hold half of f * (C + 1).
        let load = Load {
            connections: 15,
            weight: 4,
        };
        assert_eq!(bound(f(1250), 2, load), 10);
        assert_eq!(bound(f(1250), 1, load), 5);
        assert!(accepts(f(1250), 9, 2, load) && !accepts(f(1250), 10, 2, load));
        assert_eq!(bound(f(1250), 1, Load::default()), 0);
        // Huge numbers neither overflow nor panic.
        let big = Load {
            connections: u64::MAX,
            weight: u64::from(u32::MAX) << 16,
        };
        assert!(!accepts(f(100_000), u64::MAX, u32::MAX, big));
        assert!(bound(f(100_000), u32::MAX, big) > 0);
    }

    #[test]
    fn a_full_first_choice_sends_the_key_to_its_next_choice_in_ring_order() {
        let r = ring(&[1, 1, 1, 1]);
        let all = |_| true;
        for k in 0..500u64 {
            let h = key_hash(&k.to_le_bytes());
            let ord = order(&r, h, all);
            // Nobody holds anything: the first choice.
            let none = choose(&r, h, all, |_| 0, f(1250)).unwrap();
            assert_eq!((none.index, none.first), (ord[0], ord[0]));
            assert!(!none.overflowed());
            // The first choice holds 8 of 8 (bound ceil(1.25 * 9 / 4) = 3): the second.
            let full = |i| if i == ord[0] { 8 } else { 0 };
            let b = choose(&r, h, all, full, f(1250)).unwrap();
            assert_eq!((b.index, b.first), (ord[1], ord[0]), "key {k}");
            assert!(b.overflowed());
            // The first two full: the third.
            let two = |i| if i == ord[0] || i == ord[1] { 4 } else { 0 };
            assert_eq!(choose(&r, h, all, two, f(1250)).unwrap().index, ord[2]);
        }
    }

    #[test]
    fn only_routable_backends_count_and_are_chosen() {
        let r = ring(&[1, 1, 1]);
        for k in 0..300u64 {
            let h = key_hash(&k.to_le_bytes());
            let ord = order(&r, h, |_| true);
            // The key's first choice is drained and holds 100 connections:
            // they count for nobody, and it is never chosen.
            let routable = |i| i != ord[0];
            let counts = |i| if i == ord[0] { 100 } else { 1 };
            let b = choose(&r, h, routable, counts, f(1250)).unwrap();
            assert_eq!((b.index, b.first), (ord[1], ord[1]), "key {k}");
            assert_eq!(
                Load::of(&r, routable, counts),
                Load {
                    connections: 2,
                    weight: 2
                }
            );
        }
        assert_eq!(choose(&r, 1, |_| false, |_| 0, f(1250)), None);
        // Weight 0 is never routable, nor part of the mean.
        let r0 = ring(&[1, 0]);
        assert_eq!(
            Load::of(&r0, |_| true, |_| 7),
            Load {
                connections: 7,
                weight: 1
            }
        );
        let b = choose(&r0, 5, |_| true, |_| 7, f(1250)).unwrap();
        assert_eq!((b.index, b.first), (0, 0), "alone, it takes it anyway");
    }

    #[test]
    fn when_every_backend_is_over_the_bound_the_first_choice_is_kept() {
        // Counts that disagree with the load (as racing reads can): each
        // backend looks full, none refuses.
        let r = ring(&[1, 1, 1]);
        let counts = std::cell::Cell::new(0u64);
        let h = key_hash(b"alice");
        let ord = order(&r, h, |_| true);
        // Load::of reads 0s first (C = 0), then every backend reads 50.
        let count = |_| {
            let n = counts.get();
            counts.set(n + 1);
            if n < 3 {
                0
            } else {
                50
            }
        };
        let b = choose(&r, h, |_| true, count, f(1250)).unwrap();
        assert_eq!((b.index, b.first), (ord[0], ord[0]));
        assert_eq!(counts.get(), 6, "the load, then every backend tried");
    }

    #[test]
    fn a_pool_under_the_bound_keeps_every_key_on_its_first_choice() {
        // Balanced counts: at 1.25 nobody is over the bound, so the
        // mapping is the pure ring's for every key.
        let r = ring(&[1, 2, 1]);
        let counts = |i| if i == 1 { 20 } else { 10 };
        for k in 0..1000u64 {
            let h = key_hash(&k.to_le_bytes());
            let b = choose(&r, h, |_| true, counts, f(1250)).unwrap();
            assert_eq!(Some(b.index), r.pick(h));
            assert!(!b.overflowed());
        }
        // The weight-2 backend over its (doubled) bound: ceil(1.25 * 41 * 2 / 4) = 26.
        let heavy = |i| if i == 1 { 26 } else { 7 };
        let load = Load::of(&r, |_| true, heavy);
        assert_eq!(bound(f(1250), 2, load), 26);
        for k in 0..1000u64 {
            let h = key_hash(&k.to_le_bytes());
            let b = choose(&r, h, |_| true, heavy, f(1250)).unwrap();
            assert_eq!(b.first, r.pick(h).unwrap());
            assert_eq!(b.overflowed(), b.first == 1, "key {k}");
        }
    }
}
