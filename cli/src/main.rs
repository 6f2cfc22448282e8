//! `sonde`: run a TraceJob manifest on this machine with no cluster (`sonde run -f job.yaml`), list probes.

mod local_target;
mod results;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sonde",
    version,
    about = "Declarative eBPF probes: the same TraceJob on one machine or a cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a TraceJob manifest on this machine until its duration ends or Ctrl-C, keeping everything collected.
    Run(run::RunArgs),
    /// List the probes in the library, or print one's example TraceJob.
    Probes {
        /// Print this probe's example TraceJob (`sonde probes --example runq-latency > job.yaml`).
        #[arg(long, value_name = "PROBE")]
        example: Option<sonde_crds::ProbeName>,
    },
    /// Read a cluster's results through the results server: list, show, events, tail, file.
    Results(results::ResultsArgs),
    /// Check manifests as the API server would (schema and CEL rules) without running them.
    Validate {
        /// Manifest files.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    // Started as its own symbolizer child, this process names stack frames and exits here.
    sonde_probes::symbolize::serve_if_child();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("SONDE_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Results(args) => results::run(args),
        Command::Probes {
            example: Some(probe),
        } => {
            print!("{}", sonde_probes::catalogue::info(probe).example);
            Ok(())
        }
        Command::Probes { example: None } => {
            for p in sonde_probes::catalogue::all() {
                let chain: Vec<String> = p
                    .hooks
                    .iter()
                    .map(|h| {
                        format!(
                            "{}[{}]",
                            h.name,
                            h.chain
                                .iter()
                                .map(|a| a.strategy())
                                .collect::<Vec<_>>()
                                .join(">")
                        )
                    })
                    .collect();
                println!(
                    "{:<16} {}\n{:<16} hooks: {}",
                    p.name.as_str(),
                    p.description,
                    "",
                    chain.join(" ")
                );
            }
            Ok(())
        }
        Command::Validate { files } => validate(&files),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(files: &[PathBuf]) -> anyhow::Result<()> {
    for f in files {
        let text =
            std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        sonde_crds::parse_manifests(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        println!("{}: valid", f.display());
    }
    Ok(())
}
