//! The datapath's per-packet cost: parse + lookup in both directions + count + verdict, with
//! 1,048,576 sessions (a quarter IPv6, half TCP, VLAN tags on 40% of frames), frames of random
//! sessions so lookups miss the caches as on a NIC. Target (PERFORMANCE.md): ≤ 50 ns per packet
//! on one core.
//!
//! `cargo bench -p opof-benches --bench datapath`
//!
//! - `parse only`: the frame parser alone.
//! - `decide, frame by frame`: [`decide`] per frame (each lookup waits for its own misses).
//! - `decide_batch`: batches of 256 frames as the port loop hands them over, lookups pipelined
//!   (each packet's index slot asked for 12 packets ahead, its entry 12 after that) — what the
//!   datapath runs. Frames of every kind mixed: IPv4 and IPv6, TCP and UDP, 0 to 2 VLAN tags,
//!   both directions, all four actions.
//! - `decide_batch, 1M sessions, one kind of frame`: the same table and as many frames, all
//!   IPv4 TCP FORWARD, untagged, one direction, drawn from the table's 400,000 sessions of that
//!   kind: a spread of sessions over the table like the mixed frames', without the mix of
//!   kinds (the difference is what the mix costs; see benches/README.md).
//! - `decide_batch, 1K sessions (in cache)`: the same with a table and 4,096 frames that fit in
//!   cache (the computation alone).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opof_benches::workload;
use opof_device::datapath::{decide, decide_batch, parse, Batch, DatapathConfig, PortId};
use opof_proto::domain::Timestamp;

const SESSIONS: u64 = 1 << 20;
const FRAMES: usize = 1 << 16;
const BATCH: usize = 256;

fn batched(
    table: &mut opof_device::table::SessionTable,
    frames: &[(PortId, Vec<u8>)],
    config: &DatapathConfig,
    now: Timestamp,
    scratch: &mut Batch,
    out: &mut Vec<opof_device::datapath::Decision>,
) -> usize {
    let mut forwarded = 0;
    for chunk in frames.chunks(BATCH) {
        out.clear();
        let it = chunk.iter().map(|(p, f)| (*p, std::hint::black_box(f.as_slice())));
        decide_batch(table, config, it, now, scratch, out);
        forwarded += out.iter().filter(|d| d.out.is_some()).count();
    }
    forwarded
}

fn datapath(c: &mut Criterion) {
    let now = Timestamp::from_secs(1_000);
    let mut table = workload::table(SESSIONS, now);
    let frames = workload::frames(SESSIONS, FRAMES, 7);
    let config = DatapathConfig::default();
    let (mut scratch, mut out) = (Batch::default(), Vec::with_capacity(BATCH));
    let mut g = c.benchmark_group("datapath");
    g.sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    g.throughput(Throughput::Elements(FRAMES as u64));
    g.bench_function("parse only", |b| {
        b.iter(|| frames.iter().filter(|(_, f)| parse::parse(std::hint::black_box(f)).is_ok()).count())
    });
    g.bench_function("decide, frame by frame, 1M sessions", |b| {
        b.iter(|| {
            frames
                .iter()
                .filter(|(p, f)| decide(&mut table, &config, *p, std::hint::black_box(f), now).out.is_some())
                .count()
        })
    });
    g.bench_function("decide_batch, 1M sessions", |b| {
        b.iter(|| batched(&mut table, &frames, &config, now, &mut scratch, &mut out))
    });
    let one_kind = workload::frames_of_one_kind(SESSIONS, FRAMES, 7);
    g.bench_function("decide_batch, 1M sessions, one kind of frame", |b| {
        b.iter(|| batched(&mut table, &one_kind, &config, now, &mut scratch, &mut out))
    });
    let mut small = workload::table(1024, now);
    // Few enough frames to stay in cache too: what is left is the computation.
    let small_frames = workload::frames(1024, 4096, 7);
    g.throughput(Throughput::Elements(small_frames.len() as u64));
    g.bench_function("decide_batch, 1K sessions (in cache)", |b| {
        b.iter(|| batched(&mut small, &small_frames, &config, now, &mut scratch, &mut out))
    });
    g.finish();
}

criterion_group!(benches, datapath);
criterion_main!(benches);
