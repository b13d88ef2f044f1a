use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a build produced no outputs. Variants that happen after the sandbox
/// started carry the log path so an operator can read what the build printed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("commit {commit:?} is not a full 40-hex-digit git commit id")]
    BadCommit { commit: String },

    #[error(
        "unsupported ecosystem or recipe {name:?} (supported: cargo, maven, npm, python, script)"
    )]
    UnsupportedEcosystem { name: String },

    #[error("invalid build spec: {reason}")]
    BadSpec { reason: String },

    #[error("source {url} is unreachable: {reason}")]
    SourceUnreachable { url: String, reason: String },

    #[error("commit {commit} was not found in {url}")]
    UnknownCommit { url: String, commit: String },

    #[error("pyrsia-build.toml: {reason}")]
    BadRecipe { reason: String },

    #[error("dependency step failed: {reason}; log: {}", log_path.display())]
    DependencyFetch { reason: String, log_path: PathBuf },

    #[error("a dependency does not match its lockfile: {reason}; log: {}", log_path.display())]
    DependencyMismatch { reason: String, log_path: PathBuf },

    #[error("build failed: {status}; log: {}", log_path.display())]
    BuildFailed { status: String, log_path: PathBuf },

    #[error("build exceeded its time limit of {}s and was killed; log: {}", limit.as_secs(), log_path.display())]
    TimedOut { limit: Duration, log_path: PathBuf },

    #[error("build did not produce {name}; log: {}", log_path.display())]
    OutputMissing { name: String, log_path: PathBuf },

    #[error("output {name} does not match the spec: {reason}; log: {}", log_path.display())]
    OutputMismatch {
        name: String,
        reason: String,
        log_path: PathBuf,
    },

    #[error("sandbox: {0}")]
    Sandbox(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// The build log, for the failures that happened inside or after the sandbox.
    pub fn log_path(&self) -> Option<&Path> {
        match self {
            BuildError::DependencyFetch { log_path, .. }
            | BuildError::DependencyMismatch { log_path, .. }
            | BuildError::BuildFailed { log_path, .. }
            | BuildError::TimedOut { log_path, .. }
            | BuildError::OutputMissing { log_path, .. }
            | BuildError::OutputMismatch { log_path, .. } => Some(log_path),
            _ => None,
        }
    }
}

/// Attaches what we were doing to an io::Error.
pub(crate) trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, BuildError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, BuildError> {
        self.map_err(|source| BuildError::Io {
            context: what(),
            source,
        })
    }
}
