//! What Sonde's long-running binaries (operator, node agent) share: logging and one small HTTP server for
//! Prometheus metrics and the health endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Logs to stderr, filtered by `RUST_LOG` (default `info,kube=warn`); `SONDE_LOG_FORMAT=json` writes one JSON
/// object per line, with the span and event fields, for log pipelines.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("SONDE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Where results are stored, as the cluster admin configured it (the agents write there, the results server
/// reads): the same flags and variables for both.
#[derive(Clone, Debug, clap::Args)]
pub struct StorageArgs {
    /// Default object store for results (file:///dir or s3://bucket/prefix).
    #[arg(
        long,
        env = "SONDE_STORAGE_URL",
        default_value = "file:///var/lib/sonde/results"
    )]
    pub storage_url: String,
    /// Named storage locations sessions may pick with spec.storage.location: `name=url,name=url`.
    #[arg(long, env = "SONDE_STORAGE_LOCATIONS", default_value = "")]
    pub storage_locations: String,
}

/// What a storage location may be: a directory, an S3 bucket, or the results server's own volume.
pub const STORE_SCHEMES: [&str; 4] = ["file://", "s3://", "results+http://", "results+https://"];

impl StorageArgs {
    /// The named locations, name -> URL, from `name=url,name=url`; Err names the entry that is not one.
    pub fn locations(&self) -> Result<std::collections::BTreeMap<String, String>, String> {
        parse_locations(&self.storage_locations)
    }
}

/// `name=url,name=url` (URLs of [`STORE_SCHEMES`]) as name -> URL, as the agent, the operator and the results
/// server are each given it.
pub fn parse_locations(named: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut out = std::collections::BTreeMap::new();
    for entry in named.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, url)) = entry.split_once('=') else {
            return Err(format!("storage location {entry:?} is not name=url"));
        };
        let (name, url) = (name.trim(), url.trim());
        if !STORE_SCHEMES.iter().any(|s| url.starts_with(s)) {
            return Err(format!(
                "storage location {name}: {url:?} is not a {} URL",
                STORE_SCHEMES.join(", ")
            ));
        }
        out.insert(name.to_string(), url.to_string());
    }
    Ok(out)
}

/// This host's name, lower-cased as Kubernetes node names are.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_lowercase())
        .filter(|h| !h.is_empty())
}

/// The metrics registry and the readiness flag the server reports.
pub struct Health {
    registry: Registry,
    ready: AtomicBool,
}

impl Health {
    pub fn new(registry: Registry) -> Arc<Health> {
        Arc::new(Health {
            registry,
            ready: AtomicBool::new(false),
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The registry as OpenMetrics text; Err only when a metric's own encoder fails (writing to a String
    /// cannot), answered with 500.
    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// `/metrics` (OpenMetrics text), `/healthz` (the process serves) and `/readyz` (200 once `set_ready(true)`).
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(h): State<Arc<Health>>| async move {
                let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                match h.encode() {
                    Ok(text) => ([(header::CONTENT_TYPE, kind)], text).into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Arc<Health>>| async move {
                if h.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
                }
            }),
        )
        .with_state(health)
}

/// Binds `addr` and serves [`router`] in the background; returns the bound address.
pub async fn serve(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
    tokio::spawn(axum::serve(listener, router(health)).into_future());
    Ok(bound)
}

/// Resolves on SIGTERM (a rollout, a drain, `kubectl delete pod`) or SIGINT. As PID 1 of its container a process
/// that installs no handler ignores SIGTERM and runs on until the kubelet kills it. Err when the handler cannot
/// be installed.
pub fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
}

/// For TLS tests: a CA (`<prefix>ca.crt`) and a server certificate it signed (`<prefix>tls.crt`,
/// `<prefix>tls.key`) for `sans` (`DNS:localhost,IP:127.0.0.1`) in `dir`, as cert-manager's CA issuer mounts
/// them; made by `tests/certs.sh` with the openssl command. Panics with openssl's answer when it fails.
#[doc(hidden)]
#[allow(
    clippy::expect_used,
    clippy::panic,
    reason = "a test helper reports failure by panicking"
)]
pub fn test_certs(dir: &std::path::Path, prefix: &str, sans: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/certs.sh");
    let out = std::process::Command::new("sh")
        .args([script, &dir.display().to_string(), prefix, sans])
        .output()
        .expect("sh tests/certs.sh");
    assert!(
        out.status.success(),
        "tests/certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
