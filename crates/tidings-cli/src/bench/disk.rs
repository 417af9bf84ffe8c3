//! The disk's own limits, and the process's resident memory.

use std::path::Path;
use std::time::Instant;

use tidings_log::storage::{OpenMode, OsStorage, Storage};

use super::pct;
use super::workloads::micros;

/// The disk's limits in the store's directory.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Disk {
    pub(super) fdatasync_us: f64,
    pub(super) fdatasync_p99_us: f64,
    pub(super) seq_mb_per_sec: f64,
    pub(super) syncs: u64,
    pub(super) seconds: f64,
}

pub(super) fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// CPU time (user + system, all threads) this process has used so far, in seconds, from
/// `/proc/self/stat` (0 where it cannot be read).
pub(super) fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    let hz = rustix::param::clock_ticks_per_second();
    ticks as f64 / hz.max(1) as f64
}

/// The disk's limits: median fdatasync latency of a 4 KiB overwrite in a preallocated
/// file, and sequential write bandwidth with an fdatasync every MiB, both over blocks
/// already written (as the store's zero-filled segments are).
pub(super) fn disk_probe(dir: &Path, syncs: u64, seq_mib: u64) -> anyhow::Result<Disk> {
    let fs = OsStorage;
    fs.create_dir_all(dir)?;
    let path = dir.join("fdatasync.probe");
    let f = fs.open(&path, OpenMode::Truncate)?;
    // Written once first, so the timed writes are overwrites of allocated blocks.
    let mib = vec![0u8; 1 << 20];
    for i in 0..16u64 {
        f.write_all_at(&mib, i << 20)?;
    }
    f.sync_data()?;
    let block = vec![0x5au8; 4096];
    let mut lat = Vec::with_capacity(syncs as usize);
    let start = Instant::now();
    for i in 0..syncs {
        let t = Instant::now();
        f.write_all_at(&block, (i % 4096) * 4096)?;
        f.sync_data()?;
        lat.push(micros(t.elapsed()));
    }
    let seconds = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let path2 = dir.join("sequential.probe");
    // Zero-filled first, as a segment is: the timed writes overwrite written blocks, so
    // they measure the device, not the conversion of reserved extents in the journal.
    fs.write_zero_file(&path2, seq_mib << 20)?;
    let g = fs.open(&path2, OpenMode::ReadWrite)?;
    g.sync_data()?;
    let chunk = vec![0xa5u8; 1 << 20];
    let t = Instant::now();
    for i in 0..seq_mib {
        g.write_all_at(&chunk, i << 20)?;
        g.sync_data()?;
    }
    let seq = t.elapsed().as_secs_f64();
    drop((f, g));
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path2);
    Ok(Disk {
        fdatasync_us: pct(&lat, 0.5),
        fdatasync_p99_us: pct(&lat, 0.99),
        seq_mb_per_sec: (seq_mib << 20) as f64 / 1e6 / seq,
        syncs,
        seconds,
    })
}
