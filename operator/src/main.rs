use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use prometheus_client::registry::Registry;
use sonde_crds::NodeWide;
use sonde_operator::leader::LeaseLock;
use sonde_operator::metrics::Metrics;
use sonde_operator::{Context, policy, tracejob};
use sonde_telemetry::Health;

/// Sonde's operator.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "SONDE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "sonde-system")]
    lease_namespace: String,
    /// Namespace of the agents' Leases, one per node, from which their sessions are judged alive (the release's
    /// namespace, as the leader-election Lease's).
    #[arg(long, env = "SONDE_AGENT_NAMESPACE")]
    agent_namespace: Option<String>,
    /// This replica's identity in the Lease (the pod name in a Deployment).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader may go without renewing before another replica takes over.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Namespaces whose TraceJobs and ProbePolicies may trace whole nodes (no podSelector), comma-separated, or
    /// `*` for every namespace. Empty: each namespace traces only its own pods.
    #[arg(long, env = "SONDE_NODE_WIDE_NAMESPACES", default_value = "")]
    node_wide_namespaces: String,
    /// The storage locations the agents have (`name=url,...` as given to them, or just the names), so a job
    /// naming an unknown one fails at once. Unset: the agents refuse it when they start the session.
    #[arg(long, env = "SONDE_STORAGE_LOCATIONS")]
    storage_locations: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sonde_telemetry::init_logging();
    let args = Args::parse();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    let identity = args.identity.unwrap_or_else(|| {
        let host = sonde_telemetry::hostname().unwrap_or_default();
        format!("{host}-{}", std::process::id())
    });
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let health = Health::new(registry);
    sonde_telemetry::serve(args.metrics_addr, health.clone())
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;

    let lock = LeaseLock::new(
        client.clone(),
        &args.lease_namespace,
        "sonde-operator",
        &identity,
        Duration::from_secs(args.lease_seconds),
    );
    // SIGTERM (a rollout, a drain) or SIGINT. As PID 1 of its container the process would otherwise ignore
    // SIGTERM and keep leading with its old configuration until the kubelet kills it.
    let stop = sonde_telemetry::stop_signal()?;
    tokio::pin!(stop);
    tokio::select! {
        r = lock.acquire() => r?,
        _ = &mut stop => return Ok(()),
    }
    health.set_ready(true);
    let node_wide = NodeWide::parse(&args.node_wide_namespaces);
    // Given as the agents are (name=url), or just the names.
    let storage_locations = args.storage_locations.map(|l| {
        l.split(',')
            .filter_map(|e| e.split('=').next())
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect()
    });
    let (pods, pod_events, watch_pods) = sonde_operator::pods::watch(client.clone(), 2);
    let [job_pods, policy_pods]: [_; 2] = pod_events
        .try_into()
        .map_err(|_| anyhow::anyhow!("one pod stream per controller"))?;
    let agent_namespace = args
        .agent_namespace
        .as_deref()
        .unwrap_or(&args.lease_namespace);
    let (leases, watch_leases) =
        sonde_operator::liveness::AgentLeases::watch(client.clone(), agent_namespace);
    let ctx = Context::new(
        client,
        metrics.clone(),
        Some(identity),
        node_wide,
        storage_locations,
        pods,
        leases,
    );
    tokio::select! {
        _ = futures::future::join(tracejob::run(ctx.clone(), job_pods), policy::run(ctx, policy_pods)) => tracing::info!("controllers stopped"),
        _ = watch_pods => tracing::info!("pod watch ended"),
        _ = watch_leases => tracing::info!("lease watch ended"),
        _ = lock.hold() => anyhow::bail!("lost the leader lease; exiting so a fresh process competes again"),
        _ = &mut stop => tracing::info!("stopping"),
    }
    lock.release().await;
    Ok(())
}
