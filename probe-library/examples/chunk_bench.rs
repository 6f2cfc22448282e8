//! The chunk writer on one core: reads NDJSON events (a real trace's, see bench/chunks.sh), writes them through
//! `ChunkWriter` as `sonde run` and the agents do, and prints events/s, MB/s of NDJSON, the compression ratio and
//! CPU seconds per MB.
//! Usage: cargo run --release -p sonde-probes --example chunk_bench -- EVENTS.ndjson [ROUNDS]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an example reports failure by panicking"
)]

use std::io::BufRead;
use std::time::Instant;

use sonde_probes::chunks::{ChunkLimits, ChunkWriter};

/// CPU time of this (single-threaded) bench: the first field of the thread's schedstat, in ns.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns: f64 = stat
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    ns / 1e9
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: chunk_bench EVENTS.ndjson [ROUNDS]");
    let rounds: usize = args.next().map(|r| r.parse().expect("ROUNDS")).unwrap_or(5);
    let file = std::fs::File::open(&path).expect("events file");
    let lines: Vec<Vec<u8>> = std::io::BufReader::new(file)
        .lines()
        .map(|l| l.expect("a line").into_bytes())
        .collect();
    let bytes: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
    let out = tempfile::tempdir().expect("temp dir");
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut compressed = 0;
    for r in 0..rounds {
        let mut w = ChunkWriter::create(&out.path().join(r.to_string()), ChunkLimits::default())
            .expect("writer");
        for l in &lines {
            w.line(l, None).expect("write");
        }
        let (_, m) = w.finish().expect("finish");
        compressed = m.chunks.iter().map(|c| c.compressed_bytes).sum::<u64>();
    }
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    let n = (lines.len() * rounds) as f64;
    let mb = (bytes as f64 * rounds as f64) / 1e6;
    println!(
        "chunk writer (gzip level 1, sha256): {} events of {:.0} B avg, {rounds} rounds",
        lines.len(),
        bytes as f64 / lines.len().max(1) as f64
    );
    println!(
        "  {:.0} events/s, {:.1} MB/s of NDJSON, ratio {:.1}:1, {:.3} CPU s per MB",
        n / wall,
        mb / wall,
        bytes as f64 / compressed.max(1) as f64,
        cpu / mb
    );
}
