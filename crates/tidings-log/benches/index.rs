//! The in-memory index: recording frames and the lookups the writer and readers make.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tidings::StreamId;
use tidings_log::index::{EventIndex, IndexedEvent, Loc, MemoryIndex};
use uuid::Uuid;

fn filled(n: u64) -> (MemoryIndex, Vec<Uuid>) {
    let mut ix = MemoryIndex::default();
    let mut ids = Vec::with_capacity(n as usize);
    for p in 0..n {
        let id = Uuid::now_v7();
        ids.push(id);
        let s = StreamId::new(&format!("order-{}", p / 10)).expect("stream");
        ix.add_frame(
            &s,
            p,
            0,
            Loc::new(0, 64 + p * 700),
            &mut std::iter::once(IndexedEvent {
                id,
                correlation: Some("corr-123"),
                event_type: "OrderPlaced",
            }),
        );
    }
    (ix, ids)
}

fn bench(c: &mut Criterion) {
    let (ix, ids) = filled(1_000_000);
    let mut g = c.benchmark_group("index/1M-events");
    g.bench_function("id_candidate (recent map)", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) % ids.len();
            ix.id_candidate(&ids[i])
        })
    });
    let mut sorted = MemoryIndex::default();
    sorted.ids_base_for_bench(ix.merged_ids());
    g.bench_function("id_candidate (snapshotted, sorted)", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) % ids.len();
            sorted.id_candidate(&ids[i])
        })
    });
    g.bench_function("stream_version", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7919) % 100_000;
            ix.stream_version(&format!("order-{i}"))
        })
    });
    g.bench_function("add_frame (1 event, new stream)", |b| {
        b.iter_batched(
            || {
                (
                    filled(0).0,
                    StreamId::new("order-x").expect("stream"),
                    Uuid::now_v7(),
                )
            },
            |(mut ix, s, id)| {
                ix.add_frame(
                    &s,
                    0,
                    0,
                    Loc::new(0, 64),
                    &mut std::iter::once(IndexedEvent {
                        id,
                        correlation: None,
                        event_type: "OrderPlaced",
                    }),
                );
                ix
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    c.bench_function("snapshot/encode 1M events", |b| {
        b.iter(|| tidings_log::index_snapshot::encode(&ix, 64, 0).map(|b| b.len()))
    });
    let Ok(bytes) = tidings_log::index_snapshot::encode(&ix, 64, 0) else {
        return;
    };
    c.bench_function("snapshot/decode 1M events", |b| {
        b.iter(|| {
            tidings_log::index_snapshot::decode(&bytes)
                .map(|c| c.end_offset)
                .ok()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
