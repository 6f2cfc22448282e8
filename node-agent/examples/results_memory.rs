//! Memory of the agent's results path under a large event volume: events written through the chunk writer
//! while closed chunks stream to the store, then the rest sealed and delivered, as a trace does.
//! Prints the volume, the time, the chunks and the process's peak resident memory (VmHWM).
//! Usage: results_memory <store URL> <MB of NDJSON>   (bench/results-memory.sh runs it against a real S3 server)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an example reports failure by panicking"
)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sonde_agent::results::spool::{self, Destination};
use sonde_agent::results::streaming::{self, Streamed};
use sonde_probes::Event;
use sonde_probes::results::ResultsWriter;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(store_url), Some(mb)) =
        (args.get(1), args.get(2).and_then(|m| m.parse::<u64>().ok()))
    else {
        eprintln!("usage: results_memory <store URL> <MB of NDJSON>");
        std::process::exit(2);
    };
    let spool = tempfile::tempdir().expect("a spool directory");
    let dir = spool.path().join("bench/results-memory/abcd1234");
    let to = Destination {
        store_url: store_url.clone(),
        prefix: format!("tracejobs/bench/results-memory-{}/node", std::process::id()),
        namespace: "bench".into(),
        session: "results-memory".into(),
        stream: true,
        default_store: false,
    };
    let mut writer = ResultsWriter::create(&dir, true, u64::MAX).expect("a results writer");
    spool::start(&dir, &to).expect("spooling");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let state = Arc::new(Mutex::new(Streamed::default()));
    let streamer = tokio::spawn(streaming::stream(
        dir.clone(),
        to.clone(),
        stopped,
        state.clone(),
    ));
    let rss_before = peak_rss_mib();
    let started = Instant::now();
    let limit = mb * 1_000_000;
    let mut writer = tokio::task::spawn_blocking(move || {
        let mut i: u64 = 0;
        while writer.bytes < limit {
            // A wakeups event as the probe writes it, fields varying as on a busy node.
            let ev = Event {
                json: serde_json::json!({
                    "ts_ns": 1_000_000_000 + i * 1_337, "waker_comm": format!("worker-{}", i % 64),
                    "waker_pid": 1000 + i % 5000, "waker_tid": 1000 + i % 7919,
                    "wakee_comm": format!("isc-socket-{}", i % 8), "wakee_pid": 200 + i % 300,
                    "wakee_tid": 200 + i % 1201, "wakee_cgroup": 4242 + i % 3, "cpu": i % 2,
                    "window_count": i % 500, "breach": i.is_multiple_of(97),
                }),
                breach: false,
                value: None,
            };
            writer.event(&ev).expect("writing an event");
            if i.is_multiple_of(100_000) {
                writer.flush().expect("closing old chunks");
            }
            i += 1;
        }
        writer
    })
    .await
    .expect("the writer");
    let written = started.elapsed();
    let sent_while_writing = state.lock().unwrap().sent;
    let _ = stop.send(true);
    let _ = streamer.await;
    let mut files = writer
        .finish(&Default::default(), "bench")
        .expect("finishing");
    files.push(
        writer
            .write_summary(&mut Default::default(), &files)
            .expect("summary"),
    );
    let parcel = spool::seal(&dir, &to, &files, true, false).expect("sealing");
    spool::deliver(&dir, &parcel, &parcel.to.store_url)
        .await
        .expect("delivering the rest");
    let total = started.elapsed();
    println!(
        "{} events, {:.0} MB of NDJSON written in {:.1} s ({:.0} MB/s) while {} chunks streamed; all in the store \
         after {:.1} s; peak RSS {:.0} MiB ({:.0} MiB before the first event)",
        writer.written,
        writer.bytes as f64 / 1e6,
        written.as_secs_f64(),
        writer.bytes as f64 / 1e6 / written.as_secs_f64(),
        sent_while_writing,
        total.as_secs_f64(),
        peak_rss_mib(),
        rss_before,
    );
}
