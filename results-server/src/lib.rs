//! The results server: what Sonde's TraceJobs found, over REST, for people and tools. Read-only. Users
//! authenticate with a Kubernetes bearer token (TokenReview, audience `sonde-results` by default) and are
//! authorized per job with SubjectAccessReview (`get tracejobs/results`), so ordinary Roles grant access.
//! Results are read from the object store the agents write to (`store`), events page by page or as a live tail
//! (`events`). People use the same API through a web page served beside it (`web`).

pub mod auth;
pub mod authorized;
pub mod chunk_cache;
pub mod error;
pub mod events;
pub mod intake;
pub mod limit;
pub mod owner;
pub mod routes;
pub mod share;
pub mod store;
pub mod tls;
pub mod web;

pub use error::{Error, Result};

use std::sync::Arc;

use kube::Client;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Latency of requests by route, method and status.
pub type RequestHistogram = Family<Vec<(&'static str, String)>, Histogram, fn() -> Histogram>;

pub fn request_histogram() -> RequestHistogram {
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)))
}

/// Everything a request needs.
pub struct Context {
    pub client: Client,
    pub auth: auth::Auth,
    pub stores: store::Stores,
    /// Uploads from agents into the default location, when the server takes them (`--agent-user`).
    pub intake: Option<intake::Intake>,
    pub requests: RequestHistogram,
    /// Set when the server shuts down: live tails end, so connections close.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

pub type Ctx = Arc<Context>;
