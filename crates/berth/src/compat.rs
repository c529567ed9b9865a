//! `registry:2` compatibility: the `REGISTRY_*` environment variables of CNCF Distribution,
//! mapped onto Berth's configuration, so an existing Deployment switches by changing only its
//! image. Variables Berth does not implement are reported at startup, never silently ignored.

use crate::config::{invalid, parse_bool, ConfigError};

/// Something to tell the operator about a `REGISTRY_*` variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// `true` when the setting has no effect in Berth.
    pub unsupported: bool,
    pub message: String,
}

fn set(value: &mut toml::Value, section: &str, key: &str, v: toml::Value) {
    if let Some(table) = value.get_mut(section).and_then(|t| t.as_table_mut()) {
        table.insert(key.to_owned(), v);
    }
}

/// Sets `storage.s3.<key>`.
fn set_s3(value: &mut toml::Value, key: &str, v: toml::Value) {
    let s3 = value
        .get_mut("storage")
        .and_then(|t| t.get_mut("s3"))
        .and_then(|t| t.as_table_mut());
    if let Some(table) = s3 {
        table.insert(key.to_owned(), v);
    }
}

fn boolean(name: &str, raw: &str) -> Result<toml::Value, ConfigError> {
    parse_bool(raw)
        .map(toml::Value::Boolean)
        .ok_or_else(|| invalid(name, format!("{raw:?} is not a boolean")))
}

fn integer(name: &str, raw: &str) -> Result<toml::Value, ConfigError> {
    raw.trim()
        .parse()
        .map(toml::Value::Integer)
        .map_err(|_| invalid(name, format!("{raw:?} is not an integer")))
}

/// `{"enabled": true}`, `{enabled: true}` or `enabled: true`, as registry:2 takes
/// `REGISTRY_STORAGE_MAINTENANCE_READONLY`.
fn read_only_map(name: &str, raw: &str) -> Result<toml::Value, ConfigError> {
    let inner = raw.trim().trim_start_matches('{').trim_end_matches('}');
    let (key, flag) = inner.split_once(':').unwrap_or(("", ""));
    if key.trim().trim_matches('"') != "enabled" {
        return Err(invalid(
            name,
            format!("{raw:?}: expected {{\"enabled\": true}} or {{\"enabled\": false}}"),
        ));
    }
    boolean(name, flag.trim())
}

fn string(s: &str) -> toml::Value {
    toml::Value::String(s.to_owned())
}

/// Distribution accepts `:5000` for "all interfaces".
fn listen_addr(addr: &str) -> String {
    match addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => addr.to_owned(),
    }
}

/// Applies every `REGISTRY_*` variable in `env` to `value`; returns the notices to report.
pub fn apply_registry_env(
    value: &mut toml::Value,
    env: &[(String, String)],
) -> Result<Vec<Notice>, ConfigError> {
    let mut notices = Vec::new();
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("REGISTRY_"))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let note = |message: String| Notice {
            unsupported: false,
            message,
        };
        match name.as_str() {
            "REGISTRY_HTTP_ADDR" => set(value, "server", "addr", string(&listen_addr(raw))),
            "REGISTRY_HTTP_TLS_CERTIFICATE" => set(value, "tls", "certificate", string(raw)),
            "REGISTRY_HTTP_TLS_KEY" => set(value, "tls", "key", string(raw)),
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY" => {
                set(value, "storage", "root", string(raw))
            }
            "REGISTRY_STORAGE_DELETE_ENABLED" => {
                let b = parse_bool(raw)
                    .ok_or_else(|| invalid(name, format!("{raw:?} is not a boolean")))?;
                set(value, "storage", "delete_enabled", toml::Value::Boolean(b));
            }
            "REGISTRY_STORAGE" => match raw.as_str() {
                "filesystem" | "s3" => set(value, "storage", "driver", string(raw)),
                other => {
                    return Err(invalid(
                        name,
                        format!("storage {other:?} is not supported (filesystem and s3 are)"),
                    ))
                }
            },
            "REGISTRY_STORAGE_S3_BUCKET" => set_s3(value, "bucket", string(raw)),
            "REGISTRY_STORAGE_S3_REGION" => set_s3(value, "region", string(raw)),
            "REGISTRY_STORAGE_S3_REGIONENDPOINT" => set_s3(value, "region_endpoint", string(raw)),
            "REGISTRY_STORAGE_S3_ACCESSKEY" => set_s3(value, "access_key", string(raw)),
            "REGISTRY_STORAGE_S3_SECRETKEY" => set_s3(value, "secret_key", string(raw)),
            "REGISTRY_STORAGE_S3_ROOTDIRECTORY" => set_s3(value, "root_directory", string(raw)),
            "REGISTRY_STORAGE_S3_FORCEPATHSTYLE" => {
                set_s3(value, "force_path_style", boolean(name, raw)?)
            }
            "REGISTRY_STORAGE_S3_SECURE" => set_s3(value, "secure", boolean(name, raw)?),
            "REGISTRY_STORAGE_S3_SKIPVERIFY" => set_s3(value, "skip_verify", boolean(name, raw)?),
            "REGISTRY_STORAGE_S3_CHUNKSIZE" => set_s3(value, "chunk_size", integer(name, raw)?),
            "REGISTRY_STORAGE_S3_ENCRYPT" => set_s3(value, "encrypt", boolean(name, raw)?),
            "REGISTRY_STORAGE_S3_KEYID" => set_s3(value, "key_id", string(raw)),
            "REGISTRY_STORAGE_S3_STORAGECLASS" => {
                // Distribution spells "no storage class header" NONE.
                let class = if raw == "NONE" { "" } else { raw.as_str() };
                set_s3(value, "storage_class", string(class))
            }
            // registry:2 spells the map `{"enabled": true}` (or YAML `enabled: true`) when
            // set as one variable, and `..._READONLY_ENABLED=true` key by key.
            "REGISTRY_STORAGE_MAINTENANCE_READONLY" => {
                set(value, "storage", "read_only", read_only_map(name, raw)?)
            }
            "REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED" => {
                set(value, "storage", "read_only", boolean(name, raw)?)
            }
            "REGISTRY_STORAGE_REDIRECT_DISABLE" => {
                let disabled = parse_bool(raw)
                    .ok_or_else(|| invalid(name, format!("{raw:?} is not a boolean")))?;
                set(
                    value,
                    "storage",
                    "redirect",
                    toml::Value::Boolean(!disabled),
                );
            }
            "REGISTRY_STORAGE_S3_V4AUTH" => notices.push(note(format!(
                "{name}: Berth always signs with AWS Signature Version 4"
            ))),
            "REGISTRY_STORAGE_S3_MULTIPARTCOPYCHUNKSIZE"
            | "REGISTRY_STORAGE_S3_MULTIPARTCOPYMAXCONCURRENCY"
            | "REGISTRY_STORAGE_S3_MULTIPARTCOPYTHRESHOLDSIZE" => notices.push(note(format!(
                "{name}: Berth copies with one CopyObject up to 5 GiB and in 512 MiB parts above"
            ))),
            "REGISTRY_AUTH" => match raw.as_str() {
                "htpasswd" => set(value, "auth", "mode", string("htpasswd")),
                other => {
                    return Err(invalid(
                        name,
                        format!("auth {other:?} is not supported (htpasswd is)"),
                    ))
                }
            },
            "REGISTRY_AUTH_HTPASSWD_REALM" => set(value, "auth", "realm", string(raw)),
            "REGISTRY_AUTH_HTPASSWD_PATH" => {
                set(value, "auth", "htpasswd_path", string(raw));
                set(value, "auth", "mode", string("htpasswd"));
            }
            "REGISTRY_LOG_LEVEL" => set(value, "log", "level", string(raw)),
            "REGISTRY_LOG_FORMATTER" => {
                let format = if raw == "json" { "json" } else { "text" };
                set(value, "log", "format", string(format));
            }
            "REGISTRY_HTTP_SECRET" => notices.push(note(format!(
                "{name} is accepted and not needed: upload state is kept server-side"
            ))),
            "REGISTRY_HTTP_RELATIVEURLS" | "REGISTRY_HTTP_HOST" => notices.push(note(format!(
                "{name}: Berth always sends relative Location headers, so it works behind proxies"
            ))),
            _ => notices.push(Notice {
                unsupported: true,
                message: format!("{name} is not supported by Berth and has no effect"),
            }),
        }
    }
    Ok(notices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_map_takes_registry2_spellings() {
        for (raw, want) in [
            (r#"{"enabled": true}"#, true),
            ("{enabled: false}", false),
            ("enabled: true", true),
        ] {
            assert_eq!(
                read_only_map("V", raw).unwrap(),
                toml::Value::Boolean(want),
                "{raw}"
            );
        }
        assert!(read_only_map("V", "true").is_err());
        assert!(read_only_map("V", r#"{"enabled": "maybe"}"#).is_err());
    }
}
