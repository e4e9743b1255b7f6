//! `access_log`: where the per-session and per-request lines go and how
//! they look (the lines themselves are `observe::record`). Its file mirror
//! and validation live here, so the shared config files change by a line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{defaults, Validator};

/// The file's `access_log:` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLog {
    /// `stdout`, `stderr`, or a file path (relative to the config file).
    pub to: String,
    /// `json` (default) or `logfmt`.
    #[serde(default)]
    pub format: Option<String>,
    /// Log the sticky key itself instead of its keyed hash.
    #[serde(default)]
    pub log_raw_key: Option<bool>,
    /// Log plain HTTP paths with their query string.
    #[serde(default)]
    pub log_query: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    pub to: Target,
    pub format: Format,
    pub log_raw_key: bool,
    pub log_query: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    Stderr,
    /// Appended to; reopened on SIGUSR1 and on reload (log rotation).
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// `key=value` pairs, values quoted when they need it.
    Logfmt,
}

impl Validator<'_> {
    pub(super) fn access_log(&mut self, a: FileAccessLog, base: &Path) -> Option<AccessLog> {
        let to = match a.to.as_str() {
            "stdout" => Target::Stdout,
            "stderr" => Target::Stderr,
            "" => {
                self.problem("access_log.to", "must be `stdout`, `stderr` or a file path");
                return None;
            }
            path => Target::File(base.join(path)),
        };
        let format = match a.format.as_deref().unwrap_or(defaults::ACCESS_LOG_FORMAT) {
            "json" => Format::Json,
            "logfmt" => Format::Logfmt,
            other => {
                self.problem(
                    "access_log.format",
                    format!("`{other}` is not `json` or `logfmt`"),
                );
                return None;
            }
        };
        Some(AccessLog {
            to,
            format,
            log_raw_key: a.log_raw_key.unwrap_or(defaults::ACCESS_LOG_RAW_KEY),
            log_query: a.log_query.unwrap_or(defaults::ACCESS_LOG_QUERY),
        })
    }
}
