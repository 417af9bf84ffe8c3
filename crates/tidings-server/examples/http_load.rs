//! A bounded HTTP load generator for a Tidings server: the figures of issue 4.
//!
//! ```sh
//! tidings serve --store memory &          # or --data DIR for the embedded store
//! cargo run --release -p tidings-server --example http_load -- http://127.0.0.1:7400 [SECONDS]
//! ```
//!
//! Workloads (keep-alive connections, the 542-byte `OrderCreated` fixture as payload):
//! 1. batches of 100 events, 8 concurrent clients;
//! 2. single-event appends, 64 concurrent clients;
//! 3. Server-Sent Events delivery latency: one subscriber on `/subscribe/all`, one writer
//!    appending single events at 500/s; latency from just before the POST to the event's
//!    arrival on the subscription (so it includes the durable commit); p50/p99/max over
//!    every event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const FIXTURE: &str = include_str!("../../../fixtures/order-created.json");

fn event_json(extra: Option<u64>) -> Value {
    let mut e: Value = serde_json::from_str(FIXTURE).unwrap();
    let obj = e.as_object_mut().unwrap();
    obj.remove("eventId");
    if let Some(n) = extra {
        obj["metadata"]["userId"] = Value::String(n.to_string());
    }
    e
}

async fn throughput(base: &str, clients: usize, batch: usize, secs: u64) -> (f64, u64) {
    let body: Vec<u8> = if batch == 1 {
        serde_json::to_vec(&event_json(None)).unwrap()
    } else {
        serde_json::to_vec(&vec![event_json(None); batch]).unwrap()
    };
    // Leaked once so every request borrows it without copying.
    let body: &'static [u8] = Box::leak(body.into_boxed_slice());
    let events = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap();
        let url = format!("{base}/streams/load-{batch}-{c}");
        let events = events.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let _ = r.bytes().await;
                        events.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = start.elapsed().as_secs_f64();
    (
        events.load(Ordering::Relaxed) as f64 / took,
        errors.load(Ordering::Relaxed),
    )
}

async fn sse_latency(base: &str, count: u64) -> Vec<Duration> {
    let http = reqwest::Client::new();
    let mut sub = http
        .get(format!("{base}/subscribe/all?type=Latency"))
        .send()
        .await
        .unwrap();
    assert_eq!(sub.status(), 200);
    let origin = Instant::now();
    let writer_http = reqwest::Client::new();
    let url = format!("{base}/streams/latency");
    let sent = Arc::new(std::sync::Mutex::new(vec![Duration::ZERO; count as usize]));
    let sent_w = sent.clone();
    let writer = tokio::spawn(async move {
        // Let the subscription reach the live phase before the first event.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Paced at 500 appends/s so the figure is delivery latency, not a backlog.
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        for i in 0..count {
            tick.tick().await;
            let mut e = event_json(Some(i));
            e["eventType"] = Value::String("Latency".into());
            sent_w.lock().unwrap()[i as usize] = origin.elapsed();
            let r = writer_http.post(&url).json(&e).send().await.unwrap();
            assert_eq!(r.status(), 201);
            let _ = r.bytes().await;
        }
    });
    let mut latencies = Vec::with_capacity(count as usize);
    let mut buf: Vec<u8> = Vec::new();
    while (latencies.len() as u64) < count {
        let chunk = sub.chunk().await.unwrap().expect("subscription ended");
        let arrived = origin.elapsed();
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let msg: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&msg);
            if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
                let v: Value = serde_json::from_str(data).unwrap();
                let i: usize = v["metadata"]["userId"].as_str().unwrap().parse().unwrap();
                let at = sent.lock().unwrap()[i];
                latencies.push(arrived.saturating_sub(at));
            }
        }
    }
    writer.await.unwrap();
    latencies
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7400".to_owned());
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let stats: Value = reqwest::get(format!("{base}/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("server {base}, store: {}", stats["store"]);
    let (rate, errors) = throughput(&base, 8, 100, secs).await;
    println!("append, batches of 100 x 8 clients : {rate:>10.0} events/s  ({errors} errors)");
    let (rate, errors) = throughput(&base, 64, 1, secs).await;
    println!("append, 1 event x 64 clients       : {rate:>10.0} events/s  ({errors} errors)");
    let mut lat = sse_latency(&base, 2000).await;
    lat.sort();
    println!(
        "SSE delivery, append -> subscriber  : p50 {:?}  p99 {:?}  max {:?}  ({} events)",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat[lat.len() - 1],
        lat.len()
    );
}
