//! Lookup throughput of the rendezvous ring: `key_hash` + `pick` per sticky key.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use wsgate::routing::ring::{key_hash, Ring};

/// Distinct keys, cycled so that each iteration hashes a different key (as real connections do).
fn keys() -> Vec<String> {
    (0..1024).map(|i| format!("user-{i}")).collect()
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("backend-{i}")).collect()
}

fn bench_ring(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("ring");
    group.throughput(Throughput::Elements(1));
    for n in [3usize, 20, 200] {
        let ids = ids(n);
        let equal = Ring::new(ids.iter().map(|id| (id.as_str(), 1)));
        // Mixed weights take the fixed-point log path instead of the equal-weight fast path.
        let mixed = Ring::new(
            ids.iter()
                .zip(0u32..)
                .map(|(id, i)| (id.as_str(), 1 + i % 3)),
        );
        for (name, ring) in [("pick", &equal), ("pick_weighted", &mixed)] {
            group.bench_with_input(BenchmarkId::new(name, n), ring, |b, ring| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    ring.pick(key_hash(black_box(keys[i].as_bytes())))
                })
            });
        }
        group.bench_with_input(
            BenchmarkId::new("pick_eligible_minus_one", n),
            &equal,
            |b, ring| {
                let excluded = n / 2;
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    ring.pick_eligible(key_hash(black_box(keys[i].as_bytes())), |j| j != excluded)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_ring);
criterion_main!(benches);
