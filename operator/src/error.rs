use thiserror::Error;

/// Why a reconcile failed. Each keeps the error it wraps as its source (a log or an Event shows the chain).
#[derive(Debug, Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("spec.target.podSelector: {0}")]
    Selector(#[source] kube::core::ParseExpressionError),
    #[error("spec.duration: {0}")]
    Duration(String),
    /// Adding or removing the finalizer failed.
    #[error("{action} the finalizer: {source}")]
    Finalizer {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    /// The finalizer helper refused the object itself (no name; an invalid finalizer path).
    #[error("finalizer: {0}")]
    FinalizerRefused(String),
    #[error("{0} has no namespace")]
    NoNamespace(String),
    /// A reconcile panicked (a bug): caught so that one object's reconcile cannot end the process.
    #[error("the reconcile of {object} panicked: {message}")]
    Panicked { object: String, message: String },
}

impl Error {
    /// Low-cardinality label for metrics and Event reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Selector(_) => "selector",
            Error::Duration(_) => "duration",
            Error::Finalizer { .. } | Error::FinalizerRefused(_) => "finalizer",
            Error::NoNamespace(_) => "no_namespace",
            Error::Panicked { .. } => "panic",
        }
    }
}

/// The finalizer helper wraps the reconciler's own error; unwrap it so metrics see the real label.
impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            F::AddFinalizer(source) => Error::Finalizer {
                action: "adding",
                source,
            },
            F::RemoveFinalizer(source) => Error::Finalizer {
                action: "removing",
                source,
            },
            other => Error::FinalizerRefused(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_failed_finalizer_patch_keeps_the_api_error_as_its_source() {
        let status =
            kube::core::Status::failure("the object was modified", "Conflict").with_code(409);
        let e = Error::from(kube::runtime::finalizer::Error::<Error>::AddFinalizer(
            kube::Error::Api(Box::new(status)),
        ));
        assert_eq!(e.label(), "finalizer");
        assert!(e.to_string().starts_with("adding the finalizer: "), "{e}");
        let source = e.source().expect("the API error is its source");
        assert!(
            source.to_string().contains("the object was modified"),
            "{source}"
        );
        // The reconciler's own error comes out as itself, with its label.
        let inner = Error::from(kube::runtime::finalizer::Error::ApplyFailed(
            Error::Duration("x".into()),
        ));
        assert_eq!(inner.label(), "duration");
    }
}
