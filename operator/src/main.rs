use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use sonde_operator::leader::LeaseLock;
use sonde_operator::metrics::{Metrics, router};
use sonde_operator::{Context, policy, tracejob};

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
    /// This replica's identity in the Lease (the pod name in a Deployment).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader may go without renewing before another replica takes over.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let args = Args::parse();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    tokio::spawn(axum::serve(listener, router(metrics.clone())).into_future());

    let lock = LeaseLock::new(
        client.clone(),
        &args.lease_namespace,
        "sonde-operator",
        &identity,
        Duration::from_secs(args.lease_seconds),
    );
    tokio::select! {
        r = lock.acquire() => r?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
    }
    metrics.ready.store(true, Ordering::Relaxed);
    let ctx = Context::new(client, metrics.clone(), Some(identity));
    tokio::select! {
        _ = futures::future::join(tracejob::run(ctx.clone()), policy::run(ctx)) => tracing::info!("controllers stopped"),
        _ = lock.hold() => anyhow::bail!("lost the leader lease; exiting so a fresh process competes again"),
    }
    Ok(())
}
