//! Frame encoder and decoder throughput on the `OrderCreated` fixture.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tidings::{Event, StreamId};
use tidings_log::record::{self, FrameSpec};

const FIXTURE: &str = include_str!("../../../fixtures/order-created.json");

fn events(n: usize) -> Vec<Event> {
    let e: Event = serde_json::from_str(FIXTURE).expect("fixture");
    (0..n)
        .map(|_| {
            let mut e = e.clone();
            e.event_id = uuid::Uuid::now_v7();
            e
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let stream = StreamId::new("order-123").expect("stream");
    for n in [1usize, 100] {
        let evs = events(n);
        let spec = FrameSpec {
            first_position: 1_000,
            group_first: 1_000,
            first_revision: 0,
            recorded_at: 1_700_000_000_000_000,
            stream: &stream,
            events: &evs,
        };
        let mut buf = Vec::new();
        record::encode_frame(&mut buf, &spec);
        let mut g = c.benchmark_group(format!("frame/{n}-events"));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function("encode", |b| {
            let mut out = Vec::with_capacity(buf.len());
            b.iter(|| {
                out.clear();
                record::encode_frame(&mut out, &spec)
            })
        });
        g.bench_function("check (crc + header)", |b| {
            b.iter(|| record::decode_frame(&buf).map(|f| f.header.len))
        });
        g.bench_function("decode to RecordedEvent", |b| {
            b.iter(|| {
                let f = record::decode_frame(&buf).expect("frame");
                f.recorded(&stream, 0, usize::MAX).map(|v| v.len())
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
