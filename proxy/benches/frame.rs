//! Throughput of `FrameTracker::advance(.., false)`: the per-byte cost the
//! proxy pays for knowing frame boundaries, fed in 16 KiB chunks the way a
//! splice loop would see reads.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use wsgate::tunnel::{FrameTracker, Sender};

const CHUNK: usize = 16 * 1024;

/// `count` masked Binary frames with `payload` bytes each.
fn masked_frames(payload: usize, count: usize) -> Vec<u8> {
    let mut one = vec![0x82];
    match payload {
        0..=125 => one.push(0x80 | payload as u8),
        126..=0xFFFF => {
            one.push(0x80 | 126);
            one.extend_from_slice(&(payload as u16).to_be_bytes());
        }
        _ => {
            one.push(0x80 | 127);
            one.extend_from_slice(&(payload as u64).to_be_bytes());
        }
    }
    one.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    one.resize(one.len() + payload, 0x5A);
    one.repeat(count)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_tracker");
    for (name, payload, count) in [("64B_frames", 64, 16_384), ("16KiB_frames", 16 * 1024, 64)] {
        let stream = masked_frames(payload, count);
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut t = FrameTracker::new(Sender::Client, u64::MAX);
                let mut frames = 0;
                for chunk in stream.chunks(CHUNK) {
                    match t.advance(black_box(chunk), false) {
                        Ok(adv) => frames += adv.data_frames_ended,
                        Err(e) => panic!("bench stream is valid: {e}"),
                    }
                }
                assert_eq!(frames as usize, count);
                frames
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the machines this runs on are small and shared.
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
