use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("spec.target.podSelector: {0}")]
    Selector(String),
    #[error("spec.duration: {0}")]
    Duration(String),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("{0} has no namespace")]
    NoNamespace(String),
}

impl Error {
    /// Low-cardinality label for metrics and Event reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Selector(_) => "selector",
            Error::Duration(_) => "duration",
            Error::Finalizer(_) => "finalizer",
            Error::NoNamespace(_) => "no_namespace",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
