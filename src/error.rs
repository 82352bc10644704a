//! The library's one error type. Every variant a user can cause names the file and says what
//! is wrong with it, in one line.

use std::path::{Path, PathBuf};

use crate::codec::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error while touching a file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The input is not a usable safetensors file.
    #[error("{path}: not a valid safetensors file: {why}")]
    BadSafetensors { path: PathBuf, why: String },
    /// The file is not a bigsmall container, or its structure is damaged.
    #[error("{path}: {why}")]
    BadContainer { path: PathBuf, why: String },
    /// The container was written by a newer, incompatible format version.
    #[error("{path}: written by a newer bigsmall (format {major}.{minor}); this build reads formats up to {supported} — upgrade bigsmall{hint}")]
    NewerFormat {
        path: PathBuf,
        major: u16,
        minor: u16,
        /// `MAJOR.MINOR` of this build.
        supported: String,
        /// What else it may be (damage), or nothing.
        hint: &'static str,
    },
    /// A chunk failed to decode.
    #[error("{path}: tensor '{tensor}' chunk {chunk}: {source}")]
    Decode {
        path: PathBuf,
        tensor: String,
        chunk: usize,
        source: CodecError,
    },
    /// Decoded bytes do not match what was recorded at compress time.
    #[error("{path}: tensor '{tensor}' {what} mismatch — the file is corrupt")]
    Integrity {
        path: PathBuf,
        tensor: String,
        what: String,
    },
    /// A compressed directory lacks a part its index lists, or holds another in its place.
    #[error("{path}: {why}")]
    Incomplete { path: PathBuf, why: String },
    /// Damage beyond what the ECC sidecar can repair.
    #[error("{path}: {why}")]
    Unrepairable { path: PathBuf, why: String },
    /// The output already exists and overwriting was not asked for.
    #[error("{path}: already exists (use -f to overwrite)")]
    OutputExists { path: PathBuf },
    /// Anything else a user can cause (wrong kind of input, bad arguments).
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn container(path: impl Into<PathBuf>, why: impl Into<String>) -> Error {
        Error::BadContainer {
            path: path.into(),
            why: why.into(),
        }
    }

    pub fn invalid(path: impl Into<PathBuf>, why: impl Into<String>) -> Error {
        Error::Invalid {
            path: path.into(),
            why: why.into(),
        }
    }

    /// An I/O error inside `dst`'s staging directory (a full disk while a directory output is
    /// written under its temporary name) named inside `dst`, the directory asked for: the
    /// temporary name is gone by the time the user reads it.
    pub fn in_output_dir(self, dst: &Path) -> Error {
        match self {
            Error::Io { path, source } => {
                let path = match path.strip_prefix(crate::fsutil::temp_name(dst)) {
                    Ok(rest) => dst.join(rest),
                    Err(_) => path,
                };
                Error::Io { path, source }
            }
            e => e,
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Error::Io { path, .. }
            | Error::BadSafetensors { path, .. }
            | Error::BadContainer { path, .. }
            | Error::NewerFormat { path, .. }
            | Error::Decode { path, .. }
            | Error::Integrity { path, .. }
            | Error::Incomplete { path, .. }
            | Error::Unrepairable { path, .. }
            | Error::OutputExists { path }
            | Error::Invalid { path, .. } => path,
        }
    }

    /// True when the error means stored data did not match its receipt or checksum: the
    /// CLI maps these to exit code 3.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            Error::Integrity { .. }
                | Error::Decode { .. }
                | Error::Unrepairable { .. }
                | Error::Incomplete { .. }
        )
    }
}

pub type Result<T> = std::result::Result<T, Error>;
