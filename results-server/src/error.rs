//! Errors as `application/problem+json` (RFC 9457): a type-free problem with a title, the HTTP status and a
//! detail that names what was wrong, and a low-cardinality `reason` for metrics and clients.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no bearer token: send `Authorization: Bearer <token>` (`kubectl create token`)")]
    NoToken,
    #[error("the token was not accepted: {0}")]
    BadToken(String),
    /// Also returned for objects of namespaces the caller may not read, so that their existence does not leak.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("the object store: {0}")]
    Store(#[source] object_store::Error),
    #[error("stored results are damaged: {0}")]
    Damaged(String),
    /// An upload under a name that holds other bytes (create-only objects are never overwritten).
    #[error("{0}")]
    Conflict(String),
    #[error("writing to the server's storage: {0}")]
    Stored(String),
    /// Results of an object that no longer exists: nobody could read them.
    #[error("{0}")]
    Gone(String),
    /// An upload of a namespace that holds its share of the server's volume or more (`share`). The agent keeps
    /// the results and retries, showing this in the session's status: hence what frees the share, and that
    /// deleting a job does not (results outlive their object).
    #[error(
        "namespace {namespace} holds {} MiB of results on this server's volume, its share is {} MiB (Helm value \
         results.persistence.maxMiBPerNamespace): its uploads wait until it holds less. Deleting a TraceJob or \
         ProbePolicy keeps its results: ask the admin to delete old ones (tracejobs/{namespace}/ and \
         probepolicies/{namespace}/ on the volume) or for a larger share",
        .held.div_ceil(1 << 20),
        .share >> 20
    )]
    OverShare {
        namespace: String,
        /// Bytes it holds (as last listed, plus the puts accepted since).
        held: u64,
        /// Bytes it may hold.
        share: u64,
    },
    /// A client over its limit of requests whose token costs a review (`limit`): answered without one.
    #[error(
        "too many requests with tokens not yet reviewed from {client}: each costs the API server a TokenReview, \
         and a client may make {burst} at once, then {per_second} a second; retry in {retry_after} s. Requests \
         with a token already accepted are not limited"
    )]
    TooManyReviews {
        client: String,
        burst: u32,
        per_second: u32,
        /// Seconds until it may make one again (`Retry-After`).
        retry_after: u64,
    },
    /// The server was served without its clients' addresses, so it cannot limit them apart (`limit::Peer`).
    #[error(
        "the server does not know the address of its clients (served without connect info), so it cannot limit \
         what each may cost the API server: requests are refused rather than limited all together"
    )]
    NoPeer,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NoToken | Error::BadToken(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Kube(_) | Error::Store(_) => StatusCode::BAD_GATEWAY,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Gone(_) => StatusCode::GONE,
            Error::Damaged(_) | Error::Stored(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::OverShare { .. } => StatusCode::INSUFFICIENT_STORAGE,
            Error::TooManyReviews { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::NoPeer => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A label for metrics and for clients that branch on the kind of problem.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NoToken => "NoToken",
            Error::BadToken(_) => "BadToken",
            Error::Forbidden(_) => "Forbidden",
            Error::NotFound(_) => "NotFound",
            Error::BadRequest(_) => "BadRequest",
            Error::Kube(_) => "KubernetesApi",
            Error::Store(_) => "ObjectStore",
            Error::Damaged(_) => "Damaged",
            Error::Conflict(_) => "Conflict",
            Error::Gone(_) => "Gone",
            Error::Stored(_) => "StorageWrite",
            Error::OverShare { .. } => "OverShare",
            Error::TooManyReviews { .. } => "TooManyReviews",
            Error::NoPeer => "NoPeerAddress",
        }
    }
}

/// The body of an error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status and `reason` say what kind of problem it is.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub reason: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match self {
            Error::TooManyReviews { retry_after, .. } => Some(retry_after),
            _ => None,
        };
        // A namespace over its share is its own state, not the server's (counted as
        // `sonde_results_refused_over_share_total`): its agents retry every minute and would flood the log.
        if status.is_server_error() && !matches!(self, Error::OverShare { .. }) {
            tracing::warn!(error = %self, reason = self.reason(), "request failed");
        }
        let body = Problem {
            type_: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("error").into(),
            status: status.as_u16(),
            detail: self.to_string(),
            reason: self.reason().into(),
        };
        let mut res = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            serde_json::to_string(&body).unwrap_or_default(),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"sonde\""),
            );
        }
        if let Some(seconds) = retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        res
    }
}
