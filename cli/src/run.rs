//! `sonde run -f job.yaml`: the TraceJob's probe on this machine, with progress, a deadline, Ctrl-C that keeps
//! what was collected, a printed summary and a results folder.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sonde_crds::{Manifest, TraceJob};
use sonde_probes::{ProbeConfig, RunReport, Running, results::ResultsWriter};

use crate::local_target;

#[derive(clap::Args)]
pub(crate) struct RunArgs {
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

pub(crate) fn run(args: RunArgs) -> Result<()> {
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

    // A failed event write (a full disk) does not end the trace: the kernel's aggregates still make the
    // summary, which is printed whatever else could not be written; the exit then says what failed.
    let mut write_err = None;
    let stopped_by = trace_loop(
        &mut running,
        &mut writer,
        duration,
        args.json,
        &mut write_err,
    )?;
    let top = sonde_crds::ProbeParams::top_rows(job.spec.params.as_ref());
    let findings = running.finish(top, writer.sink(&mut write_err));
    let mut report = running.report(name.clone(), stopped_by, findings.summary.clone());
    report.notes = target.notes;
    report.folder = Some(out_dir.display().to_string());
    drop(running); // detach before writing: the trace is over
    for (reason, n) in writer.take_not_kept() {
        *report
            .counts
            .not_kept
            .entry(reason.to_string())
            .or_default() += n;
    }
    report.events_written = writer.written;
    let title = format!("sonde {} {}", job.spec.probe, name);
    let written = writer
        .finish(&findings, &title)
        .and_then(|files| writer.write_summary(&mut report, &files));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &out_dir, &findings);
    }
    if let Some(e) = write_err {
        let e = anyhow::Error::from(e);
        return Err(e.context(format!(
            "writing events to {} (the events from the failure on are counted as not kept; the summary above \
             covers them all)",
            out_dir.display()
        )));
    }
    written.with_context(|| format!("writing results to {}", out_dir.display()))?;
    Ok(())
}

fn trace_loop(
    running: &mut Running,
    writer: &mut ResultsWriter,
    duration: Duration,
    quiet: bool,
    write_err: &mut Option<sonde_probes::Error>,
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
            let failed_before = write_err.is_some();
            backlog = running.drain(writer.sink(write_err)).backlog;
            if let Some(e) = write_err.as_ref().filter(|_| !failed_before) {
                eprintln!("\nsonde: writing events failed ({e}); the trace goes on for its summary");
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

fn print_report(r: &RunReport, dir: &Path, findings: &sonde_probes::Findings) {
    eprintln!();
    println!(
        "{} ({}) via {}: {:.1}s, stopped by {}; {} events captured, {} dropped, {} breaches",
        r.job,
        r.probe,
        r.attach_strategy,
        r.duration_seconds,
        r.stopped_by,
        r.counts.captured,
        r.counts.dropped,
        r.counts.breaches
    );
    if let Some(msg) = r.counts.drop_message() {
        println!("{msg}");
    }
    for (reason, n) in &r.counts.not_kept {
        println!("{n} events not kept in events/ ({reason})");
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
    for f in
        std::iter::once(sonde_crds::results::SUMMARY).chain(r.results.iter().map(String::as_str))
    {
        println!("  {}", dir.join(f).display());
    }
}
