//! The one error type of the repository engine.
//!
//! Callers (the SDK glue, the bench CLI) need to tell a broken repository apart from a broken
//! source tree or a refused operation, so each failure keeps its own variant and the path or object
//! it concerns; an I/O error without the path it happened on is useless to an operator.

use std::path::PathBuf;

/// Anything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder on the local side (source tree, restore target) failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A repository object could not be read or written. `transient` says whether the same
    /// call may succeed later (a timeout, throttling, a 5xx, a local I/O error) or not (S3
    /// refusing the request for a reason a retry does not change): the runner retries only the
    /// first kind.
    #[error("repository object {name}: {source}")]
    Backend {
        name: String,
        #[source]
        source: std::io::Error,
        transient: bool,
    },
    /// A repository object that must exist does not.
    #[error("repository object {0} is missing")]
    MissingObject(String),
    /// A repository object exists but its content is not what its name or reference promises.
    #[error("repository object {name} is corrupt: {reason}")]
    Corrupt { name: String, reason: String },
    /// The repository's store refuses access or does not exist (a wrong bucket, credentials or
    /// policy): the configuration must change, retrying does not help.
    #[error("repository not accessible: {0}")]
    Access(String),
    /// The folder or prefix is not a repository of this format (or of a newer version).
    #[error("not a usable repository: {0}")]
    NotARepository(String),
    /// No snapshot matches what was asked for.
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    /// A mount-safety rule refused the operation.
    #[error("mount check failed: {0}")]
    Mount(String),
    /// The step's key does not fit the repository: none named for an encrypted one, one named
    /// for a plaintext one, or one that opens none of its keys. The configuration must change.
    #[error("encryption: {0}")]
    Encryption(String),
    /// The caller asked for something contradictory or impossible.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A bug, such as a worker thread that panicked.
    #[error("internal error: {0}")]
    Internal(String),
    /// The operation was cancelled from outside before it finished.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// A failure to read object `name` as a stream: the engine error the backend's stream
    /// carried (an S3 reader's throttling stays transient, a missing range stays corrupt), or
    /// else `otherwise` of the plain I/O error.
    pub(crate) fn from_stream(
        source: std::io::Error,
        otherwise: impl FnOnce(std::io::Error) -> Error,
    ) -> Error {
        if source.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            let inner = source.into_inner().expect("checked above");
            return *inner.downcast::<Error>().expect("checked above");
        }
        otherwise(source)
    }
}

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an I/O error: `fs::read(&p).at(&p)?`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}
