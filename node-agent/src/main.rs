use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sonde_agent::limits::Limits;
use sonde_agent::{Agent, AgentConfig};

/// Sonde's node agent: runs this node's ProbeSessions.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// This node's name (the Downward API's spec.nodeName in the DaemonSet).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The agent's namespace, where it renews its node's Lease (the Downward API's metadata.namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "sonde-system")]
    namespace: String,
    /// Who holds the Lease (the Downward API's metadata.name; default: the node's name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// The cgroup v2 mount holding the kubelet's kubepods hierarchy (default: detected).
    #[arg(long, env = "SONDE_CGROUP_ROOT")]
    cgroup_root: Option<PathBuf>,
    /// Local results folder, kept when an upload fails.
    #[arg(long, env = "SONDE_SPOOL", default_value = "/var/lib/sonde/spool")]
    spool: PathBuf,
    #[command(flatten)]
    storage: sonde_telemetry::StorageArgs,
    /// Report counterparts outside the traced pods (host tasks that wake or are woken by them) as `[outside]`
    /// instead of by comm and pid.
    #[arg(long, env = "SONDE_REDACT_COUNTERPARTS", default_value_t = false)]
    redact_counterparts: bool,
    /// Namespaces whose sessions may trace the whole node (no pod filter), comma-separated, or `*`: the
    /// operator's setting, checked again here so a session it did not place cannot trace other tenants.
    #[arg(long, env = "SONDE_NODE_WIDE_NAMESPACES", default_value = "")]
    node_wide_namespaces: String,
    /// Sessions this agent runs at once; more fail with reason NodeAtCapacity (size it to the memory limit).
    #[arg(long, env = "SONDE_MAX_SESSIONS", default_value_t = Limits::default().max_sessions)]
    max_sessions: usize,
    /// Sessions of one namespace this agent runs at once; more fail with reason NamespaceAtShare, so the rest
    /// stay for other namespaces. Default: half of --max-sessions.
    #[arg(long, env = "SONDE_MAX_SESSIONS_PER_NAMESPACE")]
    max_sessions_per_namespace: Option<usize>,
    /// MiB of events one trace (or policy window) keeps on this node; past it events are counted, not kept.
    #[arg(long, env = "SONDE_MAX_EVENT_MIB", default_value_t = Limits::default().max_event_bytes >> 20)]
    max_event_mib: u64,
    /// MiB of results waiting in the spool for the object store; past it sessions keep no new events.
    #[arg(long, env = "SONDE_MAX_SPOOL_MIB", default_value_t = Limits::default().max_spool_bytes >> 20)]
    max_spool_mib: u64,
    /// MiB of one namespace's results waiting in the spool; past it that namespace's sessions keep no new
    /// events while the others' still do. Default: half of --max-spool-mib.
    #[arg(long, env = "SONDE_MAX_SPOOL_MIB_PER_NAMESPACE")]
    max_spool_mib_per_namespace: Option<u64>,
    /// Ceiling on a session's kernel CPU budget (percent of one CPU); larger budgets are lowered to it.
    #[arg(long, env = "SONDE_MAX_KERNEL_CPU_PERCENT", default_value_t = Limits::default().max_kernel_cpu_percent)]
    max_kernel_cpu_percent: f64,
    /// Address of /metrics, /healthz and /readyz (ready once this node's sessions are listed).
    #[arg(long, env = "SONDE_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    metrics_addr: std::net::SocketAddr,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Set the host sysctl kernel.bpf_stats_enabled=1 (per-program run time, which overhead budgets need) and
    /// exit. Needs CAP_SYS_ADMIN and a writable view of the file: the chart's init container.
    EnableBpfStats {
        /// The sysctl file, e.g. a hostPath mount of the node's /proc/sys/kernel/bpf_stats_enabled.
        #[arg(long, default_value = sonde_agent::agent::BPF_STATS_SYSCTL)]
        sysctl: PathBuf,
    },
    /// The fleet harness's load (bench/fleet.sh, tests/tests/fleet.rs), not for a real node: one agent per Node
    /// matching --node-selector (kwok's simulated nodes), all in this process, each with its own Lease and
    /// session watch as a real agent has, its sessions counting --rate events per second without a kernel
    /// (`session::simulated`).
    #[command(hide = true)]
    SimulateFleet {
        #[arg(long, default_value = "sonde.dev/fleet=true")]
        node_selector: String,
        #[arg(long, default_value_t = 100)]
        rate: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Started as its own symbolizer child, this process names stack frames and exits here.
    sonde_probes::symbolize::serve_if_child();
    sonde_telemetry::init_logging();
    let args = Args::parse();
    if let Some(Command::EnableBpfStats { sysctl }) = &args.command {
        std::fs::write(sysctl, "1").with_context(|| {
            format!(
                "writing 1 to {} (needs CAP_SYS_ADMIN and a writable mount)",
                sysctl.display()
            )
        })?;
        tracing::info!(sysctl = %sysctl.display(), "kernel.bpf_stats_enabled=1");
        return Ok(());
    }
    if let Some(Command::SimulateFleet {
        node_selector,
        rate,
    }) = &args.command
    {
        return simulate_fleet(&args, node_selector, *rate).await;
    }
    let limits = limits(&args);
    let (metrics, health) = serve_metrics(&args).await?;
    let node = match args.node_name {
        Some(n) => n,
        None => sonde_telemetry::hostname().context("--node-name not given and no hostname")?,
    };
    sonde_probes::loader::ensure_tracefs();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    let cfg = AgentConfig {
        identity: args
            .pod_name
            .unwrap_or_else(|| format!("sonde-agent@{node}")),
        namespace: args.namespace,
        node,
        cgroup_root: args
            .cgroup_root
            .unwrap_or_else(sonde_probes::cgroup::v2_root),
        spool: args.spool,
        storage: sonde_agent::results::locations::Locations::parse(
            args.storage.storage_url,
            &args.storage.storage_locations,
        )
        .map_err(anyhow::Error::msg)
        .context("--storage-locations")?,
        redact_outside: args.redact_counterparts,
        node_wide: sonde_crds::NodeWide::parse(&args.node_wide_namespaces),
        limits,
    };
    tokio::select! {
        r = Agent::new(client, cfg, metrics, health).run() => r?,
        _ = sonde_telemetry::stop_signal()? => tracing::info!("shutting down; sessions detach with the process"),
    }
    Ok(())
}

/// Runs one simulated agent per selected Node until stopped (see `Command::SimulateFleet`).
async fn simulate_fleet(args: &Args, node_selector: &str, rate: u64) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let listed = nodes
        .list(&kube::api::ListParams::default().labels(node_selector))
        .await
        .with_context(|| format!("listing nodes {node_selector}"))?;
    let (metrics, health) = serve_metrics(args).await?;
    // No kubepods here: pods resolve to nothing at once, and nothing is ever spooled.
    let nowhere = std::env::temp_dir().join(format!("sonde-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&nowhere).context("a scratch directory")?;
    let mut agents = tokio::task::JoinSet::new();
    for node in listed.items.into_iter().filter_map(|n| n.metadata.name) {
        let cfg = AgentConfig {
            identity: format!("sonde-fleet@{node}"),
            namespace: args.namespace.clone(),
            cgroup_root: nowhere.clone(),
            spool: nowhere.join(&node),
            storage: sonde_agent::results::locations::Locations::parse(
                format!("file://{}", nowhere.display()),
                "",
            )
            .map_err(anyhow::Error::msg)?,
            redact_outside: false,
            node_wide: sonde_crds::NodeWide::parse(&args.node_wide_namespaces),
            limits: limits(args),
            node,
        };
        let agent = Agent::simulated(client.clone(), cfg, metrics.clone(), health.clone(), rate);
        agents.spawn(agent.run_simulated());
    }
    tracing::info!(agents = agents.len(), rate, "simulated fleet running");
    tokio::select! {
        Some(r) = agents.join_next() => r.context("a simulated agent")??,
        _ = sonde_telemetry::stop_signal()? => {}
    }
    Ok(())
}

/// What sessions may cost this node, from the arguments.
fn limits(args: &Args) -> Limits {
    Limits {
        max_sessions: args.max_sessions,
        max_sessions_per_namespace: args
            .max_sessions_per_namespace
            .unwrap_or(Limits::half(args.max_sessions as u64) as usize),
        max_event_bytes: args.max_event_mib << 20,
        max_kernel_cpu_percent: args.max_kernel_cpu_percent,
        max_spool_bytes: args.max_spool_mib << 20,
        max_spool_bytes_per_namespace: args
            .max_spool_mib_per_namespace
            .unwrap_or(Limits::half(args.max_spool_mib))
            << 20,
    }
}

/// The agent's metrics, served with /healthz and /readyz on --metrics-addr.
async fn serve_metrics(
    args: &Args,
) -> anyhow::Result<(
    sonde_agent::metrics::AgentMetrics,
    std::sync::Arc<sonde_telemetry::Health>,
)> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = sonde_agent::metrics::AgentMetrics::register(&mut registry);
    let health = sonde_telemetry::Health::new(registry);
    sonde_telemetry::serve(args.metrics_addr, health.clone())
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    Ok((metrics, health))
}
