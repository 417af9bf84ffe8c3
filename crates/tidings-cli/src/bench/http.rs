//! `tidings bench --server URL`: the HTTP figures, against a running `tidings serve`.
//!
//! Keep-alive connections, the `OrderCreated` fixture (without its id) as every event:
//! 1. batches of 100 events, 8 concurrent clients;
//! 2. single-event appends, 64 concurrent clients;
//! 3. Server-Sent Events delivery latency: one subscriber on `/subscribe/all`, one writer
//!    appending single events at 500/s; latency from just before the POST to the event's
//!    arrival on the subscription (so it includes the durable commit).
//!
//! Each throughput workload runs for `--seconds`; nothing is timed in tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use serde_json::Value;

/// Locks `m`, carrying on with the data if another thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn event_json(extra: Option<u64>) -> Result<Value> {
    let mut e: Value =
        serde_json::from_str(super::FIXTURE).context("the OrderCreated fixture is not JSON")?;
    let obj = e
        .as_object_mut()
        .context("the OrderCreated fixture is not a JSON object")?;
    obj.remove("eventId");
    if let Some(n) = extra {
        obj["metadata"]["userId"] = Value::String(n.to_string());
    }
    Ok(e)
}

async fn throughput(base: &str, clients: usize, batch: usize, secs: u64) -> Result<(f64, u64)> {
    let event = event_json(None)?;
    let body: Vec<u8> = if batch == 1 {
        serde_json::to_vec(&event)?
    } else {
        serde_json::to_vec(&vec![event; batch])?
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
            .context("cannot build an HTTP client")?;
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
        t.await.context("a load client failed")?;
    }
    let took = start.elapsed().as_secs_f64();
    Ok((
        events.load(Ordering::Relaxed) as f64 / took,
        errors.load(Ordering::Relaxed),
    ))
}

async fn sse_latency(base: &str, count: u64) -> Result<Vec<Duration>> {
    let http = reqwest::Client::new();
    let mut sub = http
        .get(format!("{base}/subscribe/all?type=Latency"))
        .send()
        .await
        .context("cannot subscribe to /subscribe/all")?;
    ensure!(
        sub.status() == 200,
        "subscribing to /subscribe/all answered {}",
        sub.status()
    );
    let origin = Instant::now();
    let writer_http = reqwest::Client::new();
    let url = format!("{base}/streams/latency");
    let sent = Arc::new(Mutex::new(vec![Duration::ZERO; count as usize]));
    let sent_w = sent.clone();
    let writer = tokio::spawn(async move {
        // Let the subscription reach the live phase before the first event.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Paced at 500 appends/s so the figure is delivery latency, not a backlog.
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        for i in 0..count {
            tick.tick().await;
            let mut e = event_json(Some(i))?;
            e["eventType"] = Value::String("Latency".into());
            lock(&sent_w)[i as usize] = origin.elapsed();
            let r = writer_http
                .post(&url)
                .json(&e)
                .send()
                .await
                .with_context(|| format!("appending latency event {i}"))?;
            ensure!(
                r.status() == 201,
                "appending latency event {i} answered {}",
                r.status()
            );
            let _ = r.bytes().await;
        }
        anyhow::Ok(())
    });
    let mut latencies = Vec::with_capacity(count as usize);
    let mut buf: Vec<u8> = Vec::new();
    while (latencies.len() as u64) < count {
        let chunk = sub
            .chunk()
            .await
            .context("reading the subscription")?
            .ok_or_else(|| anyhow!("the subscription ended before every event arrived"))?;
        let arrived = origin.elapsed();
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let msg: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&msg);
            if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
                let v: Value = serde_json::from_str(data)
                    .with_context(|| format!("a subscription event is not JSON: {data}"))?;
                let i: usize = v["metadata"]["userId"]
                    .as_str()
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("a latency event has no numeric userId: {data}"))?;
                let at = lock(&sent)
                    .get(i)
                    .copied()
                    .with_context(|| format!("latency event {i} was never sent"))?;
                latencies.push(arrived.saturating_sub(at));
            }
        }
    }
    writer.await.context("the latency writer failed")??;
    Ok(latencies)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Runs the three HTTP workloads against `base` and prints a table (or JSON lines).
pub fn run(base: &str, seconds: u64, json: bool) -> anyhow::Result<std::process::ExitCode> {
    let base = base.trim_end_matches('/').to_owned();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let stats: Value = reqwest::get(format!("{base}/stats"))
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {base} (is `tidings serve` running?): {e}"))?
            .json()
            .await?;
        let store = stats["store"].as_str().unwrap_or("?").to_owned();
        let (batch_rate, batch_errors) = throughput(&base, 8, 100, seconds).await?;
        let (single_rate, single_errors) = throughput(&base, 64, 1, seconds).await?;
        let mut lat = sse_latency(&base, 2000).await?;
        lat.sort();
        let (p50, p99, max) = (pct(&lat, 0.5), pct(&lat, 0.99), lat[lat.len() - 1]);
        if json {
            for (workload, rate, errors, target) in [
                ("http-append-batch", batch_rate, batch_errors, 300_000.0),
                ("http-append-concurrent", single_rate, single_errors, 30_000.0),
            ] {
                println!(
                    "{}",
                    serde_json::json!({"workload": workload, "server": base, "store": store,
                        "events_per_sec": rate, "errors": errors, "target": target, "met": rate >= target})
                );
            }
            println!(
                "{}",
                serde_json::json!({"workload": "http-subscribe-latency", "server": base, "store": store,
                    "p50_us": p50.as_secs_f64() * 1e6, "p99_us": p99.as_secs_f64() * 1e6,
                    "max_us": max.as_secs_f64() * 1e6, "events": lat.len()})
            );
        } else {
            println!("server {base} (store: {store})");
            println!("WORKLOAD                 CLIENTS  BATCH  RESULT                     TARGET");
            println!(
                "http-append-batch        8        100    {:>10.0} events/s ({batch_errors} errors)  >= 300000",
                batch_rate
            );
            println!(
                "http-append-concurrent   64       1      {:>10.0} events/s ({single_errors} errors)  >= 30000",
                single_rate
            );
            println!(
                "http-subscribe-latency   1        1      p50 {:.0} us, p99 {:.0} us, max {:.0} us over {} events",
                p50.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6,
                max.as_secs_f64() * 1e6,
                lat.len()
            );
        }
        Ok(std::process::ExitCode::SUCCESS)
    })
}
