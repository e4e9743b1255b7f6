//! Deterministic weighted rendezvous hashing (HRW): maps a sticky key to a backend.
//!
//! Every backend gets a pseudo-random score for the key, derived only from the key hash and the
//! hash of the backend's *id* (never its address, so re-addressing a backend keeps its users);
//! the highest score wins. Because each backend's score is independent of the others, removing,
//! excluding or adding a backend moves only the keys it loses or wins: nobody else moves.
//!
//! Weighting uses the standard weighted-HRW rule: with `u` uniform in (0, 1), a backend's "cost"
//! is `-log2(u)` (an exponential variate) and the winner is the smallest `cost / weight`. The
//! minimum of independent exponentials with rates `w_i` is backend `i` with probability
//! `w_i / sum(w)`, which is exactly the weighting we want.
//!
//! Determinism across replicas is the whole point, so there is **no floating point** here:
//! `-log2(u)` is computed in Q40 fixed point from a compile-time table (itself built with integer
//! arithmetic only) plus linear interpolation, and `cost / weight` is compared by exact `u128`
//! cross-multiplication. The interpolated log is monotone, which lets the common equal-weight case
//! skip the log entirely and compare raw hashes with provably identical results.
//!
//! Pure: no I/O, no allocation per lookup, no mutable global state (the table is `static` data).

use std::cmp::Ordering;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed for [`key_hash`]. It must NEVER be random (per process) or changed: every wsgate replica,
/// on any CPU and from any build or version, must send a given user to the same backend, and a
/// different seed would reshuffle every user in production at once.
pub const KEY_SEED: u64 = 0x7773_6761_7465_6b31; // "wsgatek1"
/// Seed for hashing backend ids. Same rule as [`KEY_SEED`]: fixed forever.
pub const ID_SEED: u64 = 0x7773_6761_7465_6931; // "wsgatei1"

/// Hash of a sticky key, computed once per connection.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, KEY_SEED)
}

/// Per-(key, backend) hash. splitmix64's finalizer is a bijection with full avalanche, so for one
/// key distinct id hashes always give distinct, independent-looking values; that also means two
/// backends can only tie if their id hashes are equal.
#[inline]
fn mix(key_hash: u64, id_hash: u64) -> u64 {
    let mut z = key_hash ^ id_hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Table resolution: 2^10 segments of [1, 2). Linear interpolation then has an absolute error
/// below 2^-22 in log2 and a relative error in the cost below 2^-12 even next to u = 1, far under
/// anything that could skew weights measurably, while the table stays 8 KiB (fits in L1).
const TABLE_BITS: u32 = 10;
/// Fixed-point fraction bits of log2 values and costs.
const FRAC_BITS: u32 = 40;
const TABLE_LEN: usize = (1 << TABLE_BITS) + 1;

/// `LOG2_1P[j] = round(log2(1 + j / 2^TABLE_BITS) * 2^FRAC_BITS)`, built at compile time.
static LOG2_1P: [u64; TABLE_LEN] = build_log2_table();

/// Builds the table by the classic bit-by-bit squaring algorithm in integer arithmetic, so the
/// values come from the source code alone and not from any platform's libm.
const fn build_log2_table() -> [u64; TABLE_LEN] {
    const ONE: u128 = 1 << 62; // Q62
    const EXTRA: u32 = 8; // guard bits, rounded away at the end
    let mut table = [0u64; TABLE_LEN];
    let mut j = 0;
    while j < TABLE_LEN {
        let mut y = ONE + ((j as u128) << (62 - TABLE_BITS));
        let mut int = 0u64;
        if y >= 2 * ONE {
            // only j == 2^TABLE_BITS: log2(2) == 1 exactly, which keeps log2 monotone across
            // powers of two.
            y >>= 1;
            int = 1;
        }
        let mut frac = 0u64;
        let mut i = 0;
        while i < FRAC_BITS + EXTRA {
            y = (y * y) >> 62;
            frac <<= 1;
            if y >= 2 * ONE {
                y >>= 1;
                frac |= 1;
            }
            i += 1;
        }
        table[j] = (int << FRAC_BITS) + ((frac + (1 << (EXTRA - 1))) >> EXTRA);
        j += 1;
    }
    table
}

/// `log2(x)` in Q40, with `log2(0)` defined as 0. Monotone non-decreasing in `x`: within a
/// segment the interpolation never reaches the next table entry, and `LOG2_1P[last]` is exactly
/// one, so values also line up across powers of two.
#[inline]
fn log2_q40(x: u64) -> u64 {
    if x == 0 {
        return 0;
    }
    let lz = x.leading_zeros();
    let int = u64::from(63 - lz);
    let mantissa = (x << lz) << 1; // bits after the leading one: Q64 fraction in [0, 1)
    let j = (mantissa >> (64 - TABLE_BITS)) as usize;
    let rem = (mantissa << TABLE_BITS) >> 32; // Q32 position inside segment j
    let (lo, hi) = (LOG2_1P[j], LOG2_1P[j + 1]);
    // (hi - lo) < 2^31 and rem < 2^32, so the product fits in u64.
    (int << FRAC_BITS) + lo + (((hi - lo) * rem) >> 32)
}

/// `-log2(u)` in Q40 with `u = hash / 2^64`: an exponential variate (times 1/ln 2, a factor
/// common to every backend, hence irrelevant). Always in `[1, 64 << 40]`; non-increasing in `hash`.
#[inline]
fn cost(hash: u64) -> u64 {
    (64 << FRAC_BITS) - log2_q40(hash)
}

/// Score of one backend for one key; higher wins (see [`Ring::score`]).
///
/// Ordering: weight 0 loses to any positive weight; otherwise the smaller `cost / weight` wins
/// (compared exactly by cross-multiplication); then the larger `hash`. For equal weights this is
/// the same as comparing `hash` alone, because `cost` is non-increasing in `hash`.
#[derive(Debug, Clone, Copy)]
pub struct Score {
    weight: u32,
    cost: u64,
    hash: u64,
}

impl Score {
    /// The backend's weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }
    /// `-log2(hash / 2^64)` in Q40 fixed point.
    pub fn cost(&self) -> u64 {
        self.cost
    }
    /// The per-(key, backend) hash the cost derives from.
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        let by_weighted_cost = match (self.weight, other.weight) {
            (0, 0) => Ordering::Equal,
            (0, _) => Ordering::Less,
            (_, 0) => Ordering::Greater,
            (ws, wo) => {
                // self wins iff cost_s / w_s < cost_o / w_o; costs < 2^47, weights < 2^32.
                let lhs = u128::from(self.cost) * u128::from(wo);
                let rhs = u128::from(other.cost) * u128::from(ws);
                rhs.cmp(&lhs)
            }
        };
        by_weighted_cost.then(self.hash.cmp(&other.hash))
    }
}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Score {}

#[derive(Debug, Clone)]
struct Backend {
    id: Box<str>,
    id_hash: u64,
    weight: u32,
}

/// Precomputed per-backend id hash and weight, in the caller's order.
#[derive(Debug, Clone)]
pub struct Ring {
    backends: Vec<Backend>,
    /// All positive weights are equal: lookups can compare raw hashes and skip the log.
    uniform: bool,
}

impl Ring {
    /// Backends in a fixed order (the caller's index order). Weight 0 means never chosen.
    ///
    /// Ids should be unique. Duplicates are tolerated: same-id backends tie on everything but
    /// weight, and among identical (id, weight) pairs the lowest index wins.
    pub fn new<'a>(backends: impl IntoIterator<Item = (&'a str, u32)>) -> Ring {
        let backends: Vec<Backend> = backends
            .into_iter()
            .map(|(id, weight)| Backend {
                id: id.into(),
                id_hash: xxh3_64_with_seed(id.as_bytes(), ID_SEED),
                weight,
            })
            .collect();
        let mut positive = backends.iter().map(|b| b.weight).filter(|&w| w > 0);
        let uniform = match positive.next() {
            Some(first) => positive.all(|w| w == first),
            None => true,
        };
        Ring { backends, uniform }
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// Id of the backend at `index`, if any.
    pub fn id(&self, index: usize) -> Option<&str> {
        self.backends.get(index).map(|b| &*b.id)
    }

    /// Weight of the backend at `index`, if any.
    pub fn weight(&self, index: usize) -> Option<u32> {
        self.backends.get(index).map(|b| b.weight)
    }

    /// Index (into the order given to `new`) of the backend for this key among ALL backends
    /// with weight > 0; `None` if there is none.
    #[inline]
    pub fn pick(&self, key_hash: u64) -> Option<usize> {
        self.pick_eligible(key_hash, |_| true)
    }

    /// Same as [`pick`](Self::pick), but only among backends for which `eligible(index)` is
    /// true. Used for draining/down backends: their keys fall to their next rendezvous choice,
    /// and nobody else moves. The result equals `pick` on a ring built without the excluded ones.
    pub fn pick_eligible(&self, key_hash: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let candidates = self
            .backends
            .iter()
            .enumerate()
            .filter(|&(i, b)| b.weight > 0 && eligible(i));
        if self.uniform {
            // Equal weights: `Score` order reduces to `hash` order (see `Score`), so skip the log.
            let mut best: Option<(usize, u64)> = None;
            for (i, b) in candidates {
                let hash = mix(key_hash, b.id_hash);
                let wins = match best {
                    None => true,
                    Some((j, best_hash)) => match hash.cmp(&best_hash) {
                        Ordering::Equal => self.id_tie_wins(i, j),
                        ord => ord == Ordering::Greater,
                    },
                };
                if wins {
                    best = Some((i, hash));
                }
            }
            best.map(|(i, _)| i)
        } else {
            let mut best: Option<(usize, Score)> = None;
            for (i, b) in candidates {
                let score = score_of(b, key_hash);
                let wins = match &best {
                    None => true,
                    Some((j, best_score)) => match score.cmp(best_score) {
                        Ordering::Equal => self.id_tie_wins(i, *j),
                        ord => ord == Ordering::Greater,
                    },
                };
                if wins {
                    best = Some((i, score));
                }
            }
            best.map(|(i, _)| i)
        }
    }

    /// The first two backends of the key's rendezvous order among the eligible ones: the one
    /// [`pick_eligible`](Self::pick_eligible) chooses, and the one it would choose were that one
    /// excluded too (its runner-up, where the key goes if its backend is drained). Built from
    /// `pick_eligible` itself, so it can never disagree with what the data path picks.
    pub fn top2_eligible(
        &self,
        key_hash: u64,
        eligible: impl Fn(usize) -> bool,
    ) -> (Option<usize>, Option<usize>) {
        let first = self.pick_eligible(key_hash, &eligible);
        let second = first.and_then(|f| self.pick_eligible(key_hash, |i| i != f && eligible(i)));
        (first, second)
    }

    /// Score of one backend for a key (for tests/diagnostics); higher wins.
    ///
    /// Equal scores need equal id hashes (`mix` is a bijection), so in practice only duplicate
    /// ids tie. Tie rule: the lexicographically smaller id (compared as bytes) wins; for
    /// identical ids, the lower index wins. Both are independent of input order up to identity.
    ///
    /// # Panics
    /// If `index >= self.len()`.
    pub fn score(&self, index: usize, key_hash: u64) -> Score {
        score_of(&self.backends[index], key_hash)
    }

    /// Whether candidate `i` beats current best `j` on a full score tie (`j < i` always).
    #[inline]
    fn id_tie_wins(&self, i: usize, j: usize) -> bool {
        self.backends[i].id.as_bytes() < self.backends[j].id.as_bytes()
    }
}

#[inline]
fn score_of(b: &Backend, key_hash: u64) -> Score {
    let hash = mix(key_hash, b.id_hash);
    Score {
        weight: b.weight,
        cost: cost(hash),
        hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn keys(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| key_hash(format!("user-{i}").as_bytes()))
            .collect()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("backend-{i}")).collect()
    }

    fn ring_of(backends: &[(String, u32)]) -> Ring {
        Ring::new(backends.iter().map(|(id, w)| (id.as_str(), *w)))
    }

    fn uniform(n: usize) -> Vec<(String, u32)> {
        ids(n).into_iter().map(|id| (id, 1)).collect()
    }

    /// Mixed weights so the log/cross-multiplication path is exercised too.
    fn weighted(n: usize) -> Vec<(String, u32)> {
        ids(n)
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, 1 + (i as u32 % 3)))
            .collect()
    }

    fn picked_id(ring: &Ring, kh: u64) -> Option<&str> {
        ring.pick(kh).and_then(|i| ring.id(i))
    }

    /// Reference `pick`: argmax of `score` with the documented tie rule, no fast path.
    fn brute_force_pick(ring: &Ring, kh: u64) -> Option<usize> {
        let mut best: Option<usize> = None;
        for i in 0..ring.len() {
            if ring.weight(i) == Some(0) {
                continue;
            }
            let wins = match best {
                None => true,
                Some(j) => match ring.score(i, kh).cmp(&ring.score(j, kh)) {
                    Ordering::Equal => {
                        ring.id(i).unwrap().as_bytes() < ring.id(j).unwrap().as_bytes()
                    }
                    ord => ord == Ordering::Greater,
                },
            };
            if wins {
                best = Some(i);
            }
        }
        best
    }

    /// If this test fails, the change reshuffles users in production (every replica and every
    /// deployed version must agree) and must not ship. Never "fix" it by updating the values.
    #[test]
    fn golden_vectors() {
        let weighted = Ring::new([
            ("chat-1", 1),
            ("chat-2", 1),
            ("chat-3", 2),
            ("chat-4", 1),
            ("chat-5", 1),
        ]);
        let equal = Ring::new([
            ("chat-1", 1),
            ("chat-2", 1),
            ("chat-3", 1),
            ("chat-4", 1),
            ("chat-5", 1),
        ]);
        // (key, backend with chat-3 at weight 2, backend with all weights 1)
        let golden = [
            ("alice", "chat-3", "chat-4"),
            ("bob", "chat-5", "chat-5"),
            ("carol", "chat-4", "chat-4"),
            ("dave", "chat-5", "chat-5"),
            ("eve", "chat-3", "chat-3"),
            ("user-0", "chat-5", "chat-5"),
            ("user-1", "chat-3", "chat-3"),
            ("user-2", "chat-5", "chat-5"),
            ("user-3", "chat-5", "chat-5"),
            ("user-4", "chat-5", "chat-5"),
            ("user-5", "chat-1", "chat-1"),
            ("user-6", "chat-5", "chat-5"),
            ("user-7", "chat-3", "chat-3"),
            ("user-8", "chat-4", "chat-4"),
            ("user-9", "chat-2", "chat-2"),
            ("user-10", "chat-1", "chat-1"),
            ("user-11", "chat-2", "chat-2"),
            ("user-12", "chat-4", "chat-4"),
            ("user-13", "chat-3", "chat-4"),
            ("user-14", "chat-4", "chat-4"),
        ];
        for (key, want_weighted, want_equal) in golden {
            let kh = key_hash(key.as_bytes());
            assert_eq!(
                picked_id(&weighted, kh),
                Some(want_weighted),
                "key {key:?} (weighted)"
            );
            assert_eq!(
                picked_id(&equal, kh),
                Some(want_equal),
                "key {key:?} (equal)"
            );
        }
        assert_eq!(key_hash(b"alice"), 0x294b_4a2a_cd45_d1cb);
        assert_eq!(key_hash(b"bob"), 0xb733_0aca_6ee5_e3f7);
        assert_eq!(key_hash(b""), 0xe665_c0d2_30d2_3ebd);
        assert_eq!(key_hash(b"user-0"), 0xb40e_7dc1_e7c1_e25d);
        // Pins the id hash, the mixer and the fixed-point log table.
        let s = weighted.score(2, key_hash(b"alice"));
        assert_eq!(
            (s.weight(), s.cost(), s.hash()),
            (2, 519_814_828_980, 13_292_361_429_261_659_560)
        );
        let s = weighted.score(0, key_hash(b"bob"));
        assert_eq!(
            (s.weight(), s.cost(), s.hash()),
            (1, 1_346_541_890_808, 7_893_261_958_414_359_051)
        );
    }

    #[test]
    fn log_table_matches_reference() {
        // f64 is fine here: it is only the yardstick, never used by the ring itself.
        for (j, &v) in LOG2_1P.iter().enumerate() {
            let want =
                (1.0 + j as f64 / (1 << TABLE_BITS) as f64).log2() * (1u64 << FRAC_BITS) as f64;
            assert!((v as f64 - want).abs() <= 1.0, "entry {j}: {v} vs {want}");
        }
        assert_eq!(LOG2_1P[0], 0);
        assert_eq!(LOG2_1P[TABLE_LEN - 1], 1 << FRAC_BITS);
    }

    #[test]
    fn log2_error_is_bounded() {
        let scale = (1u64 << FRAC_BITS) as f64;
        let mut worst = 0.0f64;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..200_000u64 {
            x = mix(x, i);
            let v = x >> (i % 64);
            if v == 0 {
                continue;
            }
            let err = (log2_q40(v) as f64 - (v as f64).log2() * scale).abs() / scale;
            worst = worst.max(err);
        }
        // Linear interpolation bound: 2^-2T / 8 / ln 2 ~ 1.7e-7.
        assert!(worst < 1.8e-7, "worst log2 error {worst:e}");
        // Next to u = 1, where the winners are, the cost keeps a relative error under 2^-12
        // (plus 2 units of Q40 rounding, which only matters for costs below ~1e-8).
        for k in 1..10_000u64 {
            let h = u64::MAX - k * 1_234_567_891_011;
            let want = -((h as f64) / 2f64.powi(64)).log2() * scale;
            let err = (cost(h) as f64 - want).abs();
            assert!(err <= want / 4096.0 + 2.0, "h={h:#x} err={err} want={want}");
        }
    }

    #[test]
    fn log2_is_monotone() {
        let mut xs: Vec<u64> = vec![0, 1, 2, 3, u64::MAX - 1, u64::MAX];
        for shift in 0..64 {
            let p = 1u64 << shift;
            xs.extend([p.wrapping_sub(1), p, p + 1]);
            // Around every table segment boundary at this exponent (where representable).
            for j in 0..=(1u64 << TABLE_BITS) {
                if shift >= TABLE_BITS {
                    let b = p.wrapping_add(j << (shift - TABLE_BITS));
                    xs.extend([b.wrapping_sub(1), b, b.wrapping_add(1)]);
                }
            }
        }
        let mut x = 1u64;
        for i in 0..100_000 {
            x = mix(x, i);
            xs.push(x);
        }
        xs.sort_unstable();
        for w in xs.windows(2) {
            assert!(log2_q40(w[0]) <= log2_q40(w[1]), "{:#x} {:#x}", w[0], w[1]);
        }
        assert!(cost(u64::MAX) >= 1);
        assert_eq!(cost(0), 64 << FRAC_BITS);
    }

    #[test]
    fn pick_matches_brute_force_score_max() {
        for backends in [
            uniform(7),
            weighted(7),
            vec![("a".into(), 5), ("b".into(), 0), ("c".into(), 5)],
        ] {
            let ring = ring_of(&backends);
            for kh in keys(20_000) {
                assert_eq!(ring.pick(kh), brute_force_pick(&ring, kh));
            }
        }
    }

    #[test]
    fn order_of_backends_does_not_matter() {
        for backends in [uniform(9), weighted(9)] {
            let ring = ring_of(&backends);
            let mut reversed = backends.clone();
            reversed.reverse();
            let mut rotated = backends.clone();
            rotated.rotate_left(4);
            let (reversed, rotated) = (ring_of(&reversed), ring_of(&rotated));
            for kh in keys(20_000) {
                assert_eq!(picked_id(&ring, kh), picked_id(&reversed, kh));
                assert_eq!(picked_id(&ring, kh), picked_id(&rotated, kh));
            }
        }
    }

    #[test]
    fn removing_a_backend_moves_only_its_keys() {
        let keys = keys(100_000);
        for all in [uniform(10), weighted(10)] {
            let ring = ring_of(&all);
            let before: Vec<_> = keys.iter().map(|&k| picked_id(&ring, k).unwrap()).collect();
            for removed in [0, 3, 7, 9] {
                let mut rest = all.clone();
                let (gone, _) = rest.remove(removed);
                let smaller = ring_of(&rest);
                let (mut moved, mut extra) = (0, 0);
                for (&k, &old) in keys.iter().zip(&before) {
                    let new = picked_id(&smaller, k).unwrap();
                    if new != old {
                        moved += 1;
                        if old != gone {
                            extra += 1;
                        }
                    }
                }
                let owned = before.iter().filter(|&&id| id == gone).count();
                assert_eq!(extra, 0, "removing {gone} moved other backends' keys");
                assert_eq!(moved, owned, "all of {gone}'s keys must move");
            }
        }
    }

    #[test]
    fn adding_a_backend_moves_only_keys_onto_it() {
        let keys = keys(100_000);
        for (all, w) in [(uniform(10), 1), (weighted(10), 2)] {
            let ring = ring_of(&all);
            let mut grown = all.clone();
            grown.insert(4, ("newcomer".into(), w));
            let grown = ring_of(&grown);
            let mut moved = 0;
            for &k in &keys {
                let (old, new) = (picked_id(&ring, k).unwrap(), picked_id(&grown, k).unwrap());
                if old != new {
                    assert_eq!(new, "newcomer", "a key moved between old backends");
                    moved += 1;
                }
            }
            assert!(moved > 0);
        }
    }

    #[test]
    fn raising_a_weight_moves_keys_only_onto_that_backend() {
        let keys = keys(100_000);
        let all = weighted(10);
        let mut heavier = all.clone();
        heavier[5].1 = 7;
        let (ring, heavier) = (ring_of(&all), ring_of(&heavier));
        for &k in &keys {
            let (old, new) = (ring.pick(k).unwrap(), heavier.pick(k).unwrap());
            assert!(old == new || new == 5);
        }
    }

    #[test]
    fn pick_eligible_equals_ring_without_the_excluded() {
        let keys = keys(20_000);
        for all in [uniform(10), weighted(10)] {
            let ring = ring_of(&all);
            for excluded in 0..all.len() {
                let mut rest = all.clone();
                rest.remove(excluded);
                let without = ring_of(&rest);
                for &k in &keys {
                    let got = ring
                        .pick_eligible(k, |i| i != excluded)
                        .and_then(|i| ring.id(i));
                    assert_eq!(got, picked_id(&without, k));
                }
            }
        }
    }

    #[test]
    fn top2_is_the_pick_and_the_pick_without_it() {
        let keys = keys(20_000);
        for all in [uniform(10), weighted(10)] {
            let ring = ring_of(&all);
            let not_three = |i: usize| i != 3;
            for &k in &keys {
                let (first, second) = ring.top2_eligible(k, not_three);
                assert_eq!(first, ring.pick_eligible(k, not_three));
                let first = first.unwrap();
                assert_ne!(second, Some(first));
                assert_ne!(
                    second,
                    Some(3),
                    "an ineligible backend is never the runner-up"
                );
                // The runner-up is where the key goes once its backend is removed.
                let mut rest = all.clone();
                rest.retain(|(id, _)| id != &all[first].0 && id != &all[3].0);
                assert_eq!(
                    second.and_then(|i| ring.id(i)),
                    picked_id(&ring_of(&rest), k)
                );
            }
        }
        let one = Ring::new([("a", 1), ("b", 0)]);
        assert_eq!(
            one.top2_eligible(key_hash(b"alice"), |_| true),
            (Some(0), None)
        );
        let none = Ring::new([]);
        assert_eq!(
            none.top2_eligible(key_hash(b"alice"), |_| true),
            (None, None)
        );
    }

    #[test]
    fn balance_one_million_keys_over_200_backends() {
        let ring = ring_of(&uniform(200));
        let mut counts = vec![0u32; ring.len()];
        for i in 0..1_000_000u32 {
            counts[ring.pick(key_hash(&i.to_le_bytes())).unwrap()] += 1;
        }
        let mean = 1_000_000.0 / 200.0;
        let peak = f64::from(*counts.iter().max().unwrap());
        let ratio = peak / mean;
        println!("balance: 1M keys / 200 backends, peak/mean = {ratio:.4}");
        assert!(ratio <= 1.05, "peak/mean {ratio}");
    }

    #[test]
    fn weight_two_gets_double_share() {
        let mut backends = uniform(20);
        backends[13].1 = 2;
        let ring = ring_of(&backends);
        let mut counts = vec![0u32; ring.len()];
        for kh in keys(400_000) {
            counts[ring.pick(kh).unwrap()] += 1;
        }
        let ones: u32 = counts
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != 13)
            .map(|(_, c)| c)
            .sum();
        let ratio = f64::from(counts[13]) / (f64::from(ones) / 19.0);
        println!("weight 2 share / mean weight-1 share = {ratio:.4}");
        assert!((1.8..=2.2).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn shares_are_proportional_to_weights() {
        // Large weights too: only ratios matter, and the cross-multiplication must not overflow.
        for scale in [1, 1_000, u32::MAX / 8] {
            let backends: Vec<(String, u32)> = ids(8)
                .into_iter()
                .zip(1..)
                .map(|(id, w)| (id, w * scale))
                .collect();
            let ring = ring_of(&backends);
            let mut counts = [0u32; 8];
            let n = 360_000;
            for kh in keys(n) {
                counts[ring.pick(kh).unwrap()] += 1;
            }
            for (i, &c) in counts.iter().enumerate() {
                let want = n as f64 * (i + 1) as f64 / 36.0;
                assert!(
                    (f64::from(c) / want - 1.0).abs() < 0.05,
                    "scale {scale} backend {i}: {c} vs {want}"
                );
            }
        }
    }

    #[test]
    fn nothing_to_pick() {
        let kh = key_hash(b"alice");
        let empty = Ring::new([]);
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        assert_eq!(empty.pick(kh), None);
        let zero = Ring::new([("a", 0), ("b", 0)]);
        assert_eq!((zero.len(), zero.is_empty()), (2, false));
        assert_eq!(zero.pick(kh), None);
        assert_eq!(zero.pick_eligible(kh, |_| true), None);
        let some = Ring::new([("a", 0), ("b", 1)]);
        assert_eq!(some.pick_eligible(kh, |i| i != 1), None);
        for k in keys(1_000) {
            assert_eq!(some.pick(k), Some(1), "weight 0 must never be chosen");
        }
    }

    #[test]
    fn duplicate_ids_are_deterministic() {
        let same = Ring::new([("a", 1), ("a", 1)]);
        let heavier_second = Ring::new([("a", 1), ("a", 3)]);
        for k in keys(1_000) {
            assert_eq!(same.pick(k), Some(0));
            assert_eq!(same.score(0, k), same.score(1, k));
            assert_eq!(heavier_second.pick(k), Some(1));
        }
    }

    #[test]
    fn score_order() {
        let s = |weight, cost, hash| Score { weight, cost, hash };
        assert!(s(1, 100, 0) > s(0, 1, u64::MAX), "weight 0 always loses");
        assert!(s(1, 100, 0) > s(1, 101, 9), "lower cost wins");
        assert!(s(2, 200, 0) > s(1, 101, 0), "cost is divided by weight");
        assert!(
            s(2, 200, 5) > s(1, 100, 4),
            "equal cost/weight: higher hash wins"
        );
        assert_eq!(s(2, 200, 5), s(1, 100, 5));
    }

    fn backend_sets() -> impl Strategy<Value = Vec<(String, u32)>> {
        prop::collection::btree_map("[a-z0-9-]{1,10}", 0u32..5, 1..16)
            .prop_map(|m: BTreeMap<String, u32>| m.into_iter().collect::<Vec<_>>())
            .prop_shuffle()
    }

    proptest! {
        #[test]
        fn prop_deterministic_and_order_independent(
            (backends, shuffled) in backend_sets()
                .prop_flat_map(|b| (Just(b.clone()), Just(b).prop_shuffle())),
            keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 1..64),
        ) {
            let (a, b, c) = (ring_of(&backends), ring_of(&backends), ring_of(&shuffled));
            for key in &keys {
                let kh = key_hash(key);
                prop_assert_eq!(kh, key_hash(key));
                prop_assert_eq!(a.pick(kh), b.pick(kh));
                prop_assert_eq!(picked_id(&a, kh), picked_id(&c, kh));
                prop_assert_eq!(a.pick(kh), brute_force_pick(&a, kh));
            }
        }

        #[test]
        fn prop_removal_moves_only_removed_keys(
            backends in backend_sets(),
            removed in any::<prop::sample::Index>(),
            keys in prop::collection::vec(any::<u64>(), 1..128),
        ) {
            let removed = removed.index(backends.len());
            let ring = ring_of(&backends);
            let mut rest = backends.clone();
            rest.remove(removed);
            let smaller = ring_of(&rest);
            for &kh in &keys {
                let (old, new) = (picked_id(&ring, kh), picked_id(&smaller, kh));
                if old != new {
                    prop_assert_eq!(old, Some(backends[removed].0.as_str()));
                }
                let excluded = ring.pick_eligible(kh, |i| i != removed).and_then(|i| ring.id(i));
                prop_assert_eq!(excluded, new);
            }
        }
    }
}
