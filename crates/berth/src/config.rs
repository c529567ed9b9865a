//! Configuration: built-in defaults, then a TOML file, then `BERTH_<SECTION>_<KEY>` environment
//! variables, then command-line flags. Every key has a default, so no file is needed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub metadata: MetadataConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub addr: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Data directory; blobs use Distribution's layout below it.
    pub root: PathBuf,
    /// Allow deleting manifests, tags and blobs through the API.
    pub delete_enabled: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// SQLite database file; empty means `<storage.root>/berth/metadata.sqlite`.
    pub sqlite_path: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest manifest accepted, in bytes (the spec asks registries to take at least 4 MiB).
    pub max_manifest_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `berth=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: "0.0.0.0:5000".into(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            root: PathBuf::from("./data"),
            delete_enabled: true,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_manifest_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

fn invalid(origin: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.into(),
        message: message.to_string(),
    }
}

/// The environment variable that overrides `section.key`.
pub fn env_name(section: &str, key: &str) -> String {
    format!("BERTH_{}_{}", section.to_uppercase(), key.to_uppercase())
}

impl Config {
    /// Loads defaults, then `file` (if any), then the environment given by `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut value =
            toml::Value::try_from(Config::default()).map_err(|e| invalid("defaults", e))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let from_file: toml::Table =
                toml::from_str(&text).map_err(|e| invalid(path.display().to_string(), e))?;
            merge(&mut value, toml::Value::Table(from_file));
        }
        apply_env(&mut value, env)?;
        let origin = file
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "configuration".into());
        let config: Config = value.try_into().map_err(|e| invalid(origin, e))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server
            .addr
            .parse::<SocketAddr>()
            .map_err(|e| invalid("server.addr", format!("{:?}: {e}", self.server.addr)))?;
        if self.limits.max_manifest_bytes < 1024 {
            return Err(invalid(
                "limits.max_manifest_bytes",
                "must be at least 1024",
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid(
                "log.format",
                format!("{:?} is neither text nor json", self.log.format),
            ));
        }
        Ok(())
    }

    pub fn sqlite_path(&self) -> PathBuf {
        if self.metadata.sqlite_path.is_empty() {
            self.storage.root.join("berth/metadata.sqlite")
        } else {
            PathBuf::from(&self.metadata.sqlite_path)
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Overrides every known key from its `BERTH_…` variable, typed like its default.
fn apply_env(
    value: &mut toml::Value,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let Some(sections) = value.as_table_mut() else {
        return Ok(());
    };
    for (section, table) in sections.iter_mut() {
        let Some(table) = table.as_table_mut() else {
            continue;
        };
        for (key, current) in table.iter_mut() {
            let name = env_name(section, key);
            let Some(raw) = env(&name) else { continue };
            *current = match current {
                toml::Value::Boolean(_) => toml::Value::Boolean(
                    parse_bool(&raw)
                        .ok_or_else(|| invalid(&name, format!("{raw:?} is not a boolean")))?,
                ),
                toml::Value::Integer(_) => toml::Value::Integer(
                    raw.trim()
                        .parse()
                        .map_err(|_| invalid(&name, format!("{raw:?} is not an integer")))?,
                ),
                _ => toml::Value::String(raw),
            };
        }
    }
    Ok(())
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.server.addr, "0.0.0.0:5000");
        assert_eq!(
            c.sqlite_path(),
            PathBuf::from("./data/berth/metadata.sqlite")
        );
    }

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.toml");
        std::fs::write(
            &path,
            "[server]\naddr = \"127.0.0.1:6000\"\n[storage]\ndelete_enabled = false\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("BERTH_STORAGE_DELETE_ENABLED", "true"),
                ("BERTH_LIMITS_MAX_MANIFEST_BYTES", "8192"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.addr, "127.0.0.1:6000");
        assert!(c.storage.delete_enabled);
        assert_eq!(c.limits.max_manifest_bytes, 8192);
    }

    #[test]
    fn bad_values_are_reported_with_their_origin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[server]\nport = 1\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("port"), "{err}");
        let err = Config::load(None, env(&[("BERTH_STORAGE_DELETE_ENABLED", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("BERTH_STORAGE_DELETE_ENABLED"), "{err}");
        let err = Config::load(None, env(&[("BERTH_SERVER_ADDR", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.addr"), "{err}");
    }
}
