//! `sonde run -f job.yaml`: the TraceJob's probe on this machine, with progress, a deadline, Ctrl-C that keeps
//! what was collected, a printed summary and a results folder.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sonde_crds::{Manifest, Summary, TraceJob};
use sonde_probes::{
    AttachAttempt, Drops, KernelStats, ProbeConfig, Running, results::ResultsWriter,
};

use crate::local_target;

#[derive(clap::Args)]
pub struct RunArgs {
    /// TraceJob manifest (the same YAML `kubectl apply` takes).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Override spec.duration (Go duration: 5s, 1m).
    #[arg(long)]
    duration: Option<String>,
    /// Results folder (default: results/<job>-<unix time>).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print the final report as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `--json` prints and summary.json holds.
#[derive(Serialize)]
pub struct Report {
    pub job: String,
    pub probe: String,
    pub attach_strategy: String,
    pub attach_attempts: Vec<AttachAttempt>,
    pub duration_seconds: f64,
    pub stopped_by: &'static str,
    pub events_captured: u64,
    pub events_written: u64,
    pub kernel: KernelStats,
    /// Events that never reached the results, by reason (ring buffer full, unread at stop).
    pub drops: Drops,
    /// Dropped events as a percentage of all the kernel produced (captured + dropped).
    pub dropped_percent: f64,
    pub kernel_run_time_ns: u64,
    pub kernel_runs: u64,
    pub notes: Vec<String>,
    pub summary: Summary,
    pub results: Vec<PathBuf>,
}

pub fn run(args: RunArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let manifests =
        sonde_crds::parse_manifests(&text).with_context(|| format!("{}", args.file.display()))?;
    let job: TraceJob = match manifests.into_iter().next() {
        Some(Manifest::TraceJob(j)) => *j,
        Some(Manifest::ProbePolicy(_)) => bail!(
            "{}: sonde run takes a TraceJob; a ProbePolicy is a standing probe for a cluster",
            args.file.display()
        ),
        None => bail!("{}: no TraceJob found", args.file.display()),
    };
    let name = job.metadata.name.clone().unwrap_or_default();
    let duration_text = args
        .duration
        .clone()
        .unwrap_or_else(|| job.spec.duration.clone());
    let duration = sonde_crds::parse_duration(&duration_text)
        .map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    let target = local_target::resolve(&job.spec)?;
    sonde_probes::loader::ensure_tracefs();
    let config = ProbeConfig {
        probe: job.spec.probe,
        params: job.spec.params.clone().unwrap_or_default(),
        filter: target.filter.clone(),
        thresholds: job.spec.thresholds.clone(),
        output: job.spec.output.clone(),
    };
    let out_dir = args.output.clone().unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        PathBuf::from("results").join(format!("{name}-{now}"))
    });
    let mut writer = ResultsWriter::create(
        &out_dir,
        config.events_expected(),
        job.spec.output.max_events,
    )?;
    let mut running =
        Running::start(config).with_context(|| format!("starting TraceJob {name}"))?;
    for n in &target.notes {
        eprintln!("note: {n}");
    }
    eprintln!(
        "sonde: {} attached via {} for {} (Ctrl-C stops early and keeps results) -> {}",
        job.spec.probe,
        running.loaded.strategy(),
        duration_text,
        out_dir.display()
    );

    let stopped_by = trace_loop(&mut running, &mut writer, duration, args.json)?;
    let top = sonde_crds::ProbeParams::top_rows(job.spec.params.as_ref());
    let mut write_err = None;
    let findings = running.finish(top, writer.sink(&mut write_err));
    if let Some(e) = write_err {
        return Err(e.into());
    }
    let (run_time, runs) = running.kernel_runtime();
    let mut report = Report {
        job: name.clone(),
        probe: job.spec.probe.to_string(),
        attach_strategy: running.loaded.strategy(),
        attach_attempts: running.loaded.attempts.clone(),
        duration_seconds: running.elapsed().as_secs_f64(),
        stopped_by,
        events_captured: running.captured,
        events_written: writer.written,
        kernel: running.kernel_stats(),
        drops: running.drops(),
        dropped_percent: dropped_percent(running.captured, running.drops().total()),
        kernel_run_time_ns: run_time.as_nanos() as u64,
        kernel_runs: runs,
        notes: target.notes,
        summary: findings.summary.clone(),
        results: vec![],
    };
    drop(running); // detach before writing: the trace is over
    let title = format!("sonde {} {}", job.spec.probe, name);
    report.results = writer.finish(&findings, &title)?;
    writer.write_summary(&report)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &findings);
    }
    Ok(())
}

fn trace_loop(
    running: &mut Running,
    writer: &mut ResultsWriter,
    duration: Duration,
    quiet: bool,
) -> Result<&'static str> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let deadline = Instant::now() + duration;
        let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
        let mut at_deadline = std::pin::pin!(tokio::time::sleep(duration));
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_progress = Instant::now();
        let mut backlog = false;
        loop {
            // With a backlog the next slice starts at once (after a yield that lets a signal or the deadline
            // win); without one the ring is read every tick.
            tokio::select! {
                _ = &mut ctrl_c => return Ok("interrupt"),
                _ = &mut at_deadline => return Ok("deadline"),
                _ = tick.tick(), if !backlog => {}
                _ = tokio::task::yield_now(), if backlog => {}
            }
            let mut err = None;
            backlog = running.drain(writer.sink(&mut err)).backlog;
            if let Some(e) = err {
                return Err(e.into());
            }
            if running.stop_requested {
                return Ok("threshold");
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok("deadline");
            }
            if !quiet && now - last_progress >= Duration::from_secs(1) {
                last_progress = now;
                let k = running.kernel_stats();
                eprint!(
                    "\r  elapsed {:>4}s  remaining {:>4}s  events {:>8}  dropped {:>6} ({:.1}%)  breaches {:>6} ",
                    running.elapsed().as_secs(),
                    (deadline - now).as_secs(),
                    running.captured,
                    k.dropped,
                    dropped_percent(running.captured, k.dropped),
                    k.breaches
                );
                let _ = std::io::stderr().flush();
            }
        }
    })
}

fn dropped_percent(captured: u64, dropped: u64) -> f64 {
    sonde_crds::Counts::percent_of(dropped, captured + dropped)
}

fn print_report(r: &Report, findings: &sonde_probes::Findings) {
    eprintln!();
    println!(
        "{} ({}) via {}: {:.1}s, stopped by {}; {} events captured, {} dropped, {} breaches",
        r.job,
        r.probe,
        r.attach_strategy,
        r.duration_seconds,
        r.stopped_by,
        r.events_captured,
        r.drops.total(),
        r.kernel.breaches
    );
    if r.drops.total() > 0 {
        println!(
            "dropped {:.1}% of events (ring buffer full: {}, unread at stop: {}): user space could not keep up; \
             the kernel's aggregates (pair counts, histograms) still count them",
            r.dropped_percent, r.drops.ring_buffer_full, r.drops.unread_at_stop
        );
    }
    if !r.summary.rows.is_empty() {
        println!(
            "\n{:>10} {:>10} {:>10}  {}",
            "COUNT",
            "PER SEC",
            "MAX",
            r.summary.key_meaning.to_uppercase()
        );
        for row in &r.summary.rows {
            let rate = row
                .per_second
                .map(|v| format!("{v:.1}"))
                .unwrap_or_default();
            let max = row.max.map(|v| format!("{v:.3}")).unwrap_or_default();
            println!("{:>10} {:>10} {:>10}  {}", row.count, rate, max, row.key);
        }
    }
    for f in &r.summary.figures {
        println!("{}: {:.3} {}", f.name, f.value, f.unit);
    }
    for h in &findings.histograms {
        if h.total > 0 && findings.histograms.len() <= 4 {
            println!("\n{}", h.render());
        }
    }
    println!("\nresults:");
    for p in &r.results {
        println!("  {}", p.display());
    }
}
