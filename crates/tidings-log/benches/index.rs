//! The index: recording frames, and the lookups the writer and readers make, in memory
//! and in the index file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tidings::StreamId;
use tidings_log::index::{IndexedEvent, Loc, LogIndex};
use uuid::Uuid;

fn filled(n: u64) -> (LogIndex, Vec<Uuid>) {
    let mut ix = LogIndex::default();
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
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let on_disk = filled(1_000_000).0.into_file_for_bench(dir.path()).unwrap();
    eprintln!("index file of 1M events written in {:?}", started.elapsed());
    let mut g = c.benchmark_group("index-file/1M-events");
    g.bench_function("id_candidate (present)", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) % ids.len();
            on_disk.id_candidate(&ids[i]).unwrap()
        })
    });
    g.bench_function("id_candidate (new id, filtered)", |b| {
        b.iter(|| on_disk.id_candidate(&Uuid::now_v7()).unwrap())
    });
    g.bench_function("stream_version", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7919) % 100_000;
            on_disk.stream_version(&format!("order-{i}")).unwrap()
        })
    });
    g.bench_function("stream positions (10)", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7919) % 100_000;
            let l = on_disk.stream_positions(&format!("order-{i}")).unwrap();
            l.range(0, 10).unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
