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

/// The finalizer helper wraps the reconciler's own error; unwrap it so metrics see the real label.
impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            other => Error::Finalizer(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
