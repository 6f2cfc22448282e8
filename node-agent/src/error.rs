use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("probe: {0}")]
    Probe(#[from] sonde_probes::Error),
    #[error("object store {url}: {message}")]
    Store { url: String, message: String },
    /// The store cannot be used at all (no connection, no answer, no token to present to it): every set for it
    /// would fail alike.
    #[error("object store {url} down: {message}")]
    StoreDown { url: String, message: String },
    /// The store will never take these results: the object they belong to is gone (the results server says so).
    #[error("object store {url}: {message}")]
    StoreGone { url: String, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Low-cardinality label for metrics and Event reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Probe(e) => e.label(),
            Error::Store { .. } | Error::StoreDown { .. } | Error::StoreGone { .. } => "store",
            Error::Io(_) => "io",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
