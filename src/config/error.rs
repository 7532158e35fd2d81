//! [`ConfigError`]: why a configuration cannot be loaded, validated or materialised, naming
//! the key or the file.

use std::io;
use std::path::{Path, PathBuf};

#[cfg(doc)]
use super::Config;

/// Why a configuration cannot be loaded, validated or materialised.
///
/// Each message names the key (`s2s.backoff_max`, `listen.s2s[1]`, `dns.static."b.test"`)
/// or the file concerned and says what is wrong, for an operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not TOML, has an unknown key, a value of the wrong type or a malformed
    /// duration. `message` is `toml`'s, which names the key and shows the line.
    #[error("{}{message}", file_prefix(.file))]
    Parse {
        /// The configuration file, when loaded with [`Config::load`].
        file: Option<PathBuf>,
        /// `toml`'s message.
        message: String,
    },
    /// A value is out of range, malformed or inconsistent with another, or a file a key
    /// names cannot be used (found by [`Config::materialize`]).
    #[error("{}{key}: {problem}", file_prefix(.file))]
    Invalid {
        /// The configuration file, when loaded with [`Config::load`].
        file: Option<PathBuf>,
        /// The key, as written in TOML: `shards`, `listen.s2s[1]`, `dns.static."b.test"`,
        /// `tls.certificate[0].cert`.
        key: String,
        /// What is wrong, quoting the value.
        problem: String,
    },
    /// A file or folder could not be read, written or created (the configuration file
    /// itself, `data_dir` and what lives in it).
    #[error("{}: {message}", .path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's message, e.g. `Permission denied`.
        message: String,
    },
    /// A file fedrouter keeps in `data_dir` (a generated certificate, the dialback secret)
    /// exists but cannot be used.
    #[error("{}: {problem}", .path.display())]
    DataFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        problem: String,
    },
}

fn file_prefix(file: &Option<PathBuf>) -> String {
    match file {
        Some(f) => format!("{}: ", f.display()),
        None => String::new(),
    }
}

impl ConfigError {
    /// The same error, naming `file` as the configuration file it was found in
    /// ([`ConfigError::Parse`] and [`ConfigError::Invalid`]; others are returned as they are).
    pub fn in_file(self, file: &Path) -> Self {
        match self {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                file: Some(file.to_owned()),
                message,
            },
            ConfigError::Invalid { key, problem, .. } => ConfigError::Invalid {
                file: Some(file.to_owned()),
                key,
                problem,
            },
            other => other,
        }
    }
}

pub(super) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: None,
        key: key.into(),
        problem: problem.into(),
    }
}

pub(super) fn io_error(path: &Path, e: &io::Error) -> ConfigError {
    ConfigError::Io {
        path: path.to_owned(),
        message: io_message(e),
    }
}

/// An I/O error's message without std's ` (os error N)` suffix: `No such file or directory`.
pub(super) fn io_message(e: &io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .map(str::to_owned)
            .unwrap_or(text),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_message_drops_os_error_suffix() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(io_message(&e), "No such file or directory");
        let custom = io::Error::other("boom");
        assert_eq!(io_message(&custom), "boom");
    }
}
