//! What can go wrong while packing, in words an operator can act on.

use std::path::PathBuf;

/// Every failure of [`crate::pack`] and its helpers.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// One of the two programs is not in `--bin-dir`.
    #[error("{} not found: --bin-dir must hold both waiaas-launcher and waiaas-daemon (cargo build --profile dist -p waiaas-launcher -p waiaas-daemon puts them in target/dist/)", path.display())]
    MissingBinary { path: PathBuf },

    /// A program is there but is not an executable regular file.
    #[error("{}: {reason}", path.display())]
    NotExecutable { path: PathBuf, reason: String },

    /// Running a program to ask its version failed.
    #[error("running {} failed: {detail}", path.display())]
    BinaryFailed { path: PathBuf, detail: String },

    /// A program answered, but not in the expected shape.
    #[error("{} printed an unexpected version: {output:?} ({detail})", path.display())]
    BadVersionOutput {
        path: PathBuf,
        output: String,
        detail: String,
    },

    /// The launcher and the daemon come from different builds.
    #[error(
        "version mismatch: waiaas-launcher reports {launcher} but waiaas-daemon reports {daemon}; \
         both binaries must come from the same build (rebuild the workspace and pack again)"
    )]
    VersionMismatch { launcher: String, daemon: String },

    /// A program is built for another machine than the package's target.
    #[error("{} is not a {target} binary ({found}); pass the matching --target", path.display())]
    WrongArchitecture {
        path: PathBuf,
        target: String,
        found: String,
    },

    /// `--target` / `--also-target` is not `<os>-<cpu>` of a platform we ship.
    #[error("unsupported target {target:?}: expected one of {supported}")]
    BadTarget { target: String, supported: String },

    /// The key file cannot be used.
    #[error("signing key {}: {detail}", path.display())]
    Key { path: PathBuf, detail: String },

    /// `keygen` will not replace an existing key.
    #[error("{} already exists; refusing to overwrite a key (choose another --out or remove it deliberately)", path.display())]
    KeyExists { path: PathBuf },

    /// Making or checking a signature failed.
    #[error("signing failed: {0}")]
    Signature(String),

    /// A tarball entry cannot be written as asked.
    #[error("cannot write tar entry {path:?}: {reason}")]
    BadEntry { path: String, reason: String },

    /// A file-system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Serialising a JSON document failed.
    #[error("cannot serialise JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl PackError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PackError {
        let path = path.into();
        move |source| PackError::Io { path, source }
    }
}
