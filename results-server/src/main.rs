//! `sonde-results`: serves TraceJob results over REST (see the crate docs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sonde_results::auth::{Auth, KubeReviewer};
use sonde_results::{Context, request_histogram, routes, store, tls};

#[derive(Parser)]
#[command(version, about = "Sonde's results server")]
struct Args {
    #[arg(long, env = "SONDE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Serve HTTPS on --listen with this certificate (PEM, the server's first, then its chain: cert-manager's
    /// `tls.crt`), with --tls-key. Read again when the file changes (looked at, at most every 30 s, when a
    /// client connects). Without both, plain HTTP: readers' and agents' tokens cross the network in clear.
    #[arg(long, env = "SONDE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: cert-manager's `tls.key`), with --tls-cert.
    #[arg(long, env = "SONDE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Where the agents' uploads are taken (with --agent-user): a port of its own, so that a NetworkPolicy can let
    /// only the agents reach it (the chart ships one). Served as --listen is (HTTPS with --tls-cert).
    #[arg(long, env = "SONDE_INTAKE_LISTEN", default_value = "0.0.0.0:8081")]
    intake_listen: SocketAddr,
    /// Where /metrics, /healthz and /readyz are served (plain HTTP: no token goes there).
    #[arg(long, env = "SONDE_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    /// The audience tokens must be for (`kubectl create token <account> --audience <this>`).
    #[arg(long, env = "SONDE_AUDIENCE", default_value = "sonde-results")]
    audience: String,
    /// The agents' user (`system:serviceaccount:<namespace>:<name>`): when set, agents may upload their own
    /// node's results into the default storage location through this server (clusters without S3).
    #[arg(long, env = "SONDE_AGENT_USER")]
    agent_user: Option<String>,
    /// What each namespace's uploads may hold on the server's volume, in MiB (0: no share): past it, its uploads
    /// are refused (507) until it holds less, so one namespace cannot fill the volume for every other.
    #[arg(long, env = "SONDE_MAX_MIB_PER_NAMESPACE", default_value_t = 0)]
    max_mib_per_namespace: u64,
    /// How long an allowed review is trusted, in seconds: a revoked grant or token takes effect after at most
    /// this long, on new requests and on live tails alike.
    #[arg(long, env = "SONDE_AUTHORIZED_TTL_SECONDS", default_value_t = 30)]
    authorized_ttl_seconds: u64,
    /// Memory for decoded event chunks, in MiB (pages and tails reuse them instead of reading each again).
    #[arg(long, env = "SONDE_CHUNK_CACHE_MIB", default_value_t = 64)]
    chunk_cache_mib: usize,
    /// The agents' storage (the server reads what they write).
    #[command(flatten)]
    storage: sonde_telemetry::StorageArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sonde_telemetry::init_logging();
    let args = Args::parse();
    // The certificate first: a bad file fails the start, naming it.
    let tls =
        match tls::CertFiles::from_args(args.tls_cert, args.tls_key).map_err(anyhow::Error::msg)? {
            Some(files) => {
                let cert = tls::ReloadingCert::load(files, tls::RELOAD_EVERY)
                    .map_err(anyhow::Error::msg)?;
                Some(tls::server_config(Arc::new(cert)).map_err(anyhow::Error::msg)?)
            }
            None => {
                tracing::warn!(
                    "serving plain HTTP: tokens cross the network in clear (see --tls-cert)"
                );
                None
            }
        };
    let client = kube::Client::try_default().await?;
    let mut registry = Registry::default();
    let sub = registry.sub_registry_with_prefix("sonde_results");
    let requests = request_histogram();
    sub.register(
        "request_duration_seconds",
        "Requests by route, method and status",
        requests.clone(),
    );
    let calls = Family::default();
    sub.register(
        "reviews",
        "TokenReview and SubjectAccessReview calls to the API server",
        calls.clone(),
    );
    let auth = Auth::new(
        Arc::new(KubeReviewer {
            client: client.clone(),
            audience: args.audience,
            calls,
        }),
        std::time::Duration::from_secs(args.authorized_ttl_seconds),
    );
    sub.register(
        "rate_limited",
        "Requests refused (429) because their client made too many with tokens not yet reviewed",
        auth.rate_limited(),
    );
    let share = sonde_results::share::Share::new(
        args.max_mib_per_namespace,
        sonde_results::share::LIST_EVERY,
    );
    sub.register(
        "refused_over_share",
        "Uploads refused because their namespace held its share of the volume (--max-mib-per-namespace)",
        share.refused.clone(),
    );
    sub.register(
        "namespace_bytes",
        "Bytes of results each namespace holds on the volume, as last listed plus uploads since (with a share only)",
        share.held.clone(),
    );
    let health = sonde_telemetry::Health::new(registry);
    sonde_telemetry::serve(args.metrics_addr, health.clone()).await?;
    let stores = store::Stores::parse(
        args.storage.storage_url,
        &args.storage.storage_locations,
        args.chunk_cache_mib << 20,
    )
    .map_err(anyhow::Error::msg)?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let ctx = Arc::new(Context {
        client,
        auth,
        stores,
        intake: args
            .agent_user
            .map(|user| sonde_results::intake::Intake::new(user, share)),
        requests,
        stopping,
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, https = tls.is_some(), "serving results");
    // Both listeners bound before the server says it is ready: an agent never meets a closed intake port.
    let intake = match ctx.intake.is_some() {
        true => {
            let intake = tokio::net::TcpListener::bind(args.intake_listen).await?;
            tracing::info!(addr = %intake.local_addr()?, https = tls.is_some(), "taking the agents' uploads");
            Some(intake)
        }
        false => None,
    };
    health.set_ready(true);
    let stop_signal = sonde_telemetry::stop_signal()?;
    tokio::spawn(async move {
        stop_signal.await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    // Each listener ends when `stopping` is set (then lets requests under way finish). With each connection's
    // peer address, which requests are limited by (`routes::app`; no proxy in front is trusted,
    // `X-Forwarded-For` is not read).
    let stopped = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    let readers = routes::serve(
        listener,
        tls.clone(),
        ctx.clone(),
        routes::Listener::Readers,
        stopped(ctx.stopping.clone()),
    );
    match intake {
        Some(intake) => {
            let uploads = routes::serve(
                intake,
                tls,
                ctx.clone(),
                routes::Listener::Intake,
                stopped(ctx.stopping.clone()),
            );
            tokio::try_join!(readers, uploads)?;
        }
        None => readers.await?,
    }
    Ok(())
}
