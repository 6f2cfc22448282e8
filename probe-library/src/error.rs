use sonde_vocab::ProbeName;

/// One attach attempt and how it went.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttachAttempt {
    pub hook: &'static str,
    pub strategy: &'static str,
    pub target: String,
    /// `None` when it attached.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "probe {probe}: hook {hook} could not attach on this kernel:\n{}",
        format_attempts(attempts)
    )]
    UnsupportedKernel {
        probe: ProbeName,
        hook: &'static str,
        attempts: Vec<AttachAttempt>,
    },
    #[error("probe {probe}: the kernel refused the eBPF object ({source}); {hint}")]
    Load {
        probe: ProbeName,
        hint: &'static str,
        source: Box<aya::EbpfError>,
    },
    #[error("probe {probe}: invalid parameter: {message}")]
    BadParams { probe: ProbeName, message: String },
    #[error("probe {probe}: map {map}: {message}")]
    Map {
        probe: ProbeName,
        map: &'static str,
        message: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl Error {
    /// Low-cardinality label for metrics and Events.
    pub fn label(&self) -> &'static str {
        match self {
            Error::UnsupportedKernel { .. } => "unsupported_kernel",
            Error::Load { .. } => "load",
            Error::BadParams { .. } => "bad_params",
            Error::Map { .. } => "map",
            Error::Io { .. } => "io",
        }
    }
}

fn format_attempts(attempts: &[AttachAttempt]) -> String {
    attempts
        .iter()
        .map(|a| {
            format!(
                "  - {} {}: {}",
                a.strategy,
                a.target,
                a.error.as_deref().unwrap_or("attached")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error with its causes ("EPERM" or "no such function" behind an attach error, "connection refused" behind
/// a failed request), for reports and statuses that keep one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
