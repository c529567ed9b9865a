//! Configuration: built-in defaults, then a TOML file, then `BERTH_<SECTION>_<KEY>` environment
//! variables, then command-line flags. Every key has a default, so no file is needed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::compat;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub metadata: MetadataConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub audit: AuditConfig,
    pub tracing: TracingConfig,
    pub gc: GcConfig,
    pub retention: RetentionConfig,
    pub manifests: ManifestsConfig,
}

/// Where blobs are kept.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageDriver {
    /// Distribution's layout under `storage.root`.
    #[default]
    Filesystem,
    /// An S3-compatible bucket (`storage.s3`), Distribution's layout under its root directory.
    S3,
}

/// Where the metadata index is kept.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MetadataBackend {
    /// An SQLite file (`metadata.sqlite_path`).
    #[default]
    Sqlite,
    /// A PostgreSQL database (`metadata.url`), which replicas share.
    Postgres,
}

/// How callers are authenticated.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone may push and pull (`registry:2`'s default).
    #[default]
    None,
    /// Basic auth against an htpasswd file; every user may do everything.
    Htpasswd,
    /// Users, projects, roles and robots, with Docker bearer tokens.
    Token,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ManifestsConfig {
    /// Accept image manifests whose layers and indexes whose child manifests are absent
    /// (sparse mirrors that copy only some platforms). Off: such pushes get
    /// `MANIFEST_BLOB_UNKNOWN`.
    pub allow_sparse: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Run online garbage collection this often (seconds); 0 = never.
    pub interval_seconds: u64,
    /// Only collect blobs created at least this long ago (seconds).
    pub grace_seconds: u64,
}

/// Scheduled tag retention (each project's rules: `berth policy`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Apply every project's retention rules this often (seconds); 0 = only by hand
    /// (`berth retention run`).
    pub interval_seconds: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            interval_seconds: 86_400,
        }
    }
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval_seconds: 3600,
            grace_seconds: 3600,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Export a span per request to this OpenTelemetry collector (OTLP/HTTP, e.g.
    /// `http://otel-collector:4318`); empty = off.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: String::new(),
            service_name: "berth".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub addr: String,
    /// On SIGTERM, how long in-flight requests (uploads) may run before the process exits.
    pub drain_seconds: u64,
    /// Serve `/metrics` on this separate address too (e.g. `0.0.0.0:9090`); it is always
    /// available on the main port.
    pub metrics_addr: String,
    /// A client must send a request's complete headers within this many seconds.
    pub header_read_timeout_seconds: u64,
    /// A TLS client must complete its handshake within this many seconds.
    pub tls_handshake_timeout_seconds: u64,
    /// A keep-alive connection with no request in flight is closed after this many seconds.
    pub idle_timeout_seconds: u64,
    /// A request body (an upload) that delivers no byte for this many seconds is abandoned; a
    /// slow upload that keeps moving is never cut off.
    pub body_read_timeout_seconds: u64,
    /// Connections served at once; 0 = three quarters of the process's file descriptor
    /// limit, so that files and the database keep descriptors. At the cap, the oldest
    /// connection that is idle or still sending its headers is closed for a new client.
    pub max_connections: u64,
    /// This replica's name among those sharing the stores, for leases on shared background
    /// work; empty means the host name (the pod name in Kubernetes), so a restarted process
    /// keeps its leases.
    pub instance: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `filesystem` or `s3`.
    pub driver: StorageDriver,
    /// Data directory; blobs use Distribution's layout below it. With `s3`, it still holds
    /// Berth's own files (the token signing key, the SQLite file if no `metadata.url`).
    pub root: PathBuf,
    /// Allow deleting manifests, tags and blobs through the API.
    pub delete_enabled: bool,
    /// Upload sessions older than this many hours are discarded with their bytes (checked at
    /// startup and hourly); 0 discards every unfinished upload at startup.
    pub upload_purge_hours: u64,
    /// With `s3`: answer blob downloads with a redirect to a presigned URL of the bucket
    /// (Distribution's default), so the bytes bypass Berth. Turn off when clients cannot reach
    /// the object store (an in-cluster MinIO that nodes cannot resolve, for one).
    pub redirect: bool,
    /// Serve pulls only: every write is refused with 405 `UNSUPPORTED`, garbage collection
    /// and the upload purge pause (registry:2's `maintenance.readonly`). The admin API and
    /// `berth read-only` switch it at run time as well; this setting keeps it on regardless.
    pub read_only: bool,
    pub s3: S3Settings,
}

/// The bucket, as Distribution's `s3` driver configures it (`REGISTRY_STORAGE_S3_*`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    pub bucket: String,
    /// AWS region (any name for most S3-compatible servers).
    pub region: String,
    /// Endpoint of an S3-compatible server (`http://minio:9000`); empty = AWS.
    pub region_endpoint: String,
    /// Static credentials; empty = the AWS chain (`AWS_*` variables, web identity / IRSA,
    /// ECS, instance metadata).
    pub access_key: String,
    pub secret_key: String,
    /// Prefix of every key in the bucket.
    pub root_directory: String,
    /// Path-style URLs (`endpoint/bucket/key`), which MinIO and most others want.
    pub force_path_style: bool,
    /// HTTPS for an endpoint given without a scheme.
    pub secure: bool,
    /// Skip verifying the endpoint's TLS certificate (test setups only).
    pub skip_verify: bool,
    /// Multipart part size in bytes (at least 5 MiB); an upload buffers one part in memory.
    pub chunk_size: u64,
    /// Server-side encryption: SSE-KMS with `key_id`, else SSE-S3.
    pub encrypt: bool,
    pub key_id: String,
    /// Storage class of blobs written in one PUT (e.g. `STANDARD_IA`); empty = the bucket's.
    pub storage_class: String,
    /// Each request to the store (one part at most) must finish within this many seconds.
    pub request_timeout_seconds: u64,
    pub connect_timeout_seconds: u64,
    /// Retries, with exponential backoff and jitter, of a request that failed with 5xx,
    /// throttling or a connection error; then the client gets 503 and `Retry-After`.
    pub max_retries: u64,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            bucket: String::new(),
            region: "us-east-1".into(),
            region_endpoint: String::new(),
            access_key: String::new(),
            secret_key: String::new(),
            root_directory: String::new(),
            force_path_style: false,
            secure: true,
            skip_verify: false,
            chunk_size: 10 * 1024 * 1024,
            encrypt: false,
            key_id: String::new(),
            storage_class: String::new(),
            request_timeout_seconds: 300,
            connect_timeout_seconds: 5,
            max_retries: 3,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// `sqlite`, or `postgres`, which a `url` selects by itself.
    pub backend: MetadataBackend,
    /// SQLite database file; empty means `<storage.root>/berth/metadata.sqlite`.
    pub sqlite_path: String,
    /// `postgres://user:password@host:port/database` selects PostgreSQL; empty keeps SQLite.
    pub url: String,
    /// PostgreSQL connections kept at most by this process.
    pub pool_size: u64,
    /// Waiting longer for a PostgreSQL connection answers 503.
    pub connect_timeout_seconds: u64,
    /// PostgreSQL cancels a statement running longer (answered 503).
    pub statement_timeout_seconds: u64,
    /// PEM file of the CAs PostgreSQL's TLS certificate must chain to; empty = the Mozilla
    /// roots. The URL's `sslmode` (`disable`, `prefer`, `require`) decides whether TLS is used.
    pub tls_ca_file: String,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            backend: MetadataBackend::Sqlite,
            sqlite_path: String::new(),
            url: String::new(),
            pool_size: 16,
            connect_timeout_seconds: 5,
            statement_timeout_seconds: 30,
            tls_ca_file: String::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest manifest accepted, in bytes (the spec asks registries to take at least 4 MiB).
    pub max_manifest_bytes: u64,
    /// Upload sessions one user may have in progress at once (0 = no limit); beyond, `POST`
    /// gets 429 `TOOMANYREQUESTS`. Without authentication every client counts as one user.
    pub max_uploads_per_user: u64,
    /// Upload sessions in progress per repository (0 = no limit).
    pub max_uploads_per_repository: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `berth=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none` (anyone may do anything), `htpasswd` (Basic auth, every user may do everything,
    /// as registry:2), or `token` (users, projects, roles, robots; Docker bearer tokens).
    pub mode: AuthMode,
    /// Realm announced in `WWW-Authenticate` for Basic auth.
    pub realm: String,
    /// htpasswd file with bcrypt entries (create one with `berth htpasswd`); re-read on change.
    /// In token mode, its users log in too, as ordinary (non-admin) users.
    pub htpasswd_path: String,
    /// Token mode: the `service` clients ask tokens for.
    pub token_service: String,
    /// Token mode: the `iss` of issued tokens.
    pub token_issuer: String,
    /// Token mode: lifetime of issued tokens, in seconds.
    pub token_ttl_seconds: u64,
    /// Token mode: the token endpoint URL to announce; empty = `<this server>/auth/token`.
    pub token_realm: String,
    /// Token mode: signing key (PEM, created on first start); empty = `<root>/berth/token.key`.
    pub token_key_path: String,
    /// Accept tokens of an external issuer: its public key (PEM) …
    pub external_public_key_path: String,
    /// … and its `iss` (its tokens must name `token_service` as audience).
    pub external_issuer: String,
    /// Token mode: when no user exists yet, create `admin` with this password at startup.
    pub bootstrap_admin_password: String,
    /// Failed logins allowed per user and client address within the window; then that user
    /// is refused from that address (and only there) until the window ends.
    pub failed_login_limit: u32,
    /// Failed logins allowed per client address within the window, whatever users it names.
    pub failed_login_address_limit: u32,
    pub failed_login_window_seconds: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            realm: "Registry Realm".into(),
            htpasswd_path: String::new(),
            token_service: "berth-registry".into(),
            token_issuer: "berth".into(),
            token_ttl_seconds: 300,
            token_realm: String::new(),
            token_key_path: String::new(),
            external_public_key_path: String::new(),
            external_issuer: String::new(),
            bootstrap_admin_password: String::new(),
            failed_login_limit: 10,
            failed_login_address_limit: 30,
            failed_login_window_seconds: 300,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Also stream audit events as JSON lines: empty (off), `stdout`, or a file path.
    pub stream: String,
    /// Record manifest pulls, repeats of one reference by one caller and client folded into one
    /// summary a minute (logins, pushes, deletes and changes are always recorded).
    pub pulls: bool,
    /// Events older than this many days are deleted (hourly); 0 keeps them forever.
    pub retention_days: u64,
    /// At most this many events are kept, the oldest deleted first; 0 = no cap.
    pub max_events: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            stream: String::new(),
            pulls: true,
            retention_days: 90,
            max_events: 1_000_000,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; with `key`, the server speaks HTTPS (and HTTP/2).
    pub certificate: String,
    /// PEM private key.
    pub key: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: "0.0.0.0:5000".into(),
            drain_seconds: 30,
            metrics_addr: String::new(),
            header_read_timeout_seconds: 20,
            tls_handshake_timeout_seconds: 10,
            idle_timeout_seconds: 60,
            body_read_timeout_seconds: 60,
            max_connections: 0,
            instance: String::new(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            driver: StorageDriver::Filesystem,
            root: PathBuf::from("./data"),
            delete_enabled: true,
            upload_purge_hours: 168,
            redirect: true,
            read_only: false,
            s3: S3Settings::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_manifest_bytes: 4 * 1024 * 1024,
            max_uploads_per_user: 1024,
            max_uploads_per_repository: 256,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
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

pub(crate) fn invalid(origin: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
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
    /// Loads defaults, then `file` (if any), then `registry:2`'s `REGISTRY_*` variables, then
    /// `BERTH_*` variables, from the environment given as `env`. Also returns the notes and
    /// warnings about `REGISTRY_*` variables that are reported at startup.
    pub fn load(
        file: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<(Config, Vec<compat::Notice>), ConfigError> {
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
        let notices = compat::apply_registry_env(&mut value, env)?;
        let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        apply_env(&mut value, lookup)?;
        let origin = file
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "configuration".into());
        let config: Config = value.try_into().map_err(|e| invalid(origin, e))?;
        config.validate()?;
        Ok((config, notices))
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
        if self.auth.mode == AuthMode::Htpasswd && self.auth.htpasswd_path.is_empty() {
            return Err(invalid(
                "auth.htpasswd_path",
                "auth.mode = htpasswd needs a file",
            ));
        }
        if self.auth.external_issuer.is_empty() != self.auth.external_public_key_path.is_empty() {
            return Err(invalid(
                "auth.external_issuer",
                "external_issuer and external_public_key_path go together",
            ));
        }
        if self.tls.certificate.is_empty() != self.tls.key.is_empty() {
            return Err(invalid("tls", "certificate and key must be given together"));
        }
        if self.storage.driver == StorageDriver::S3 {
            if self.storage.s3.bucket.is_empty() {
                return Err(invalid(
                    "storage.s3.bucket",
                    "storage.driver = s3 needs a bucket",
                ));
            }
            if self.storage.s3.chunk_size < berth_storage::s3::MIN_PART_SIZE {
                return Err(invalid(
                    "storage.s3.chunk_size",
                    "must be at least 5 MiB (5242880), S3's smallest part",
                ));
            }
        }
        let url = &self.metadata.url;
        if self.metadata.backend == MetadataBackend::Postgres && url.is_empty() {
            return Err(invalid(
                "metadata.url",
                "metadata.backend = postgres needs a postgres://… URL",
            ));
        }
        let postgres_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !url.is_empty() && !postgres_url {
            return Err(invalid(
                "metadata.url",
                "must be a postgres://user:password@host:port/database URL",
            ));
        }
        Ok(())
    }

    /// The metadata backend in use: a `metadata.url` selects PostgreSQL by itself.
    pub fn metadata_backend(&self) -> MetadataBackend {
        if self.metadata.url.is_empty() {
            self.metadata.backend
        } else {
            MetadataBackend::Postgres
        }
    }

    pub fn postgres_options(&self) -> berth_meta::PostgresOptions {
        let m = &self.metadata;
        berth_meta::PostgresOptions {
            pool_size: usize::try_from(m.pool_size.max(1)).unwrap_or(16),
            connect_timeout: std::time::Duration::from_secs(m.connect_timeout_seconds.max(1)),
            statement_timeout: std::time::Duration::from_secs(m.statement_timeout_seconds.max(1)),
            tls_ca_file: (!m.tls_ca_file.is_empty()).then(|| PathBuf::from(&m.tls_ca_file)),
        }
    }

    /// The S3 backend's settings as the store takes them.
    pub fn s3_config(&self) -> berth_storage::S3Config {
        let s3 = &self.storage.s3;
        berth_storage::S3Config {
            bucket: s3.bucket.clone(),
            region: s3.region.clone(),
            endpoint: s3.region_endpoint.clone(),
            access_key: s3.access_key.clone(),
            secret_key: s3.secret_key.clone(),
            root_directory: s3.root_directory.clone(),
            force_path_style: s3.force_path_style,
            secure: s3.secure,
            skip_verify: s3.skip_verify,
            part_size: s3.chunk_size,
            encrypt: s3.encrypt,
            kms_key_id: s3.key_id.clone(),
            storage_class: s3.storage_class.clone(),
            request_timeout: std::time::Duration::from_secs(s3.request_timeout_seconds.max(1)),
            connect_timeout: std::time::Duration::from_secs(s3.connect_timeout_seconds.max(1)),
            max_retries: usize::try_from(s3.max_retries).unwrap_or(3),
        }
    }

    pub fn sqlite_path(&self) -> PathBuf {
        if self.metadata.sqlite_path.is_empty() {
            self.storage.root.join("berth/metadata.sqlite")
        } else {
            PathBuf::from(&self.metadata.sqlite_path)
        }
    }

    /// The registry's rules as configured.
    pub fn registry_config(&self) -> berth_registry::RegistryConfig {
        let limit = |n: u64| (n > 0).then_some(n);
        berth_registry::RegistryConfig {
            delete_enabled: self.storage.delete_enabled,
            read_only: self.storage.read_only,
            max_manifest_bytes: usize::try_from(self.limits.max_manifest_bytes)
                .unwrap_or(usize::MAX),
            upload_limits: berth_meta::UploadLimits {
                per_owner: limit(self.limits.max_uploads_per_user),
                per_repository: limit(self.limits.max_uploads_per_repository),
            },
            allow_sparse_manifests: self.manifests.allow_sparse,
            instance: if self.server.instance.is_empty() {
                berth_registry::host_name()
            } else {
                self.server.instance.clone()
            },
            redirect_downloads: self.storage.redirect,
        }
    }

    pub fn token_key_path(&self) -> PathBuf {
        if self.auth.token_key_path.is_empty() {
            self.storage.root.join("berth/token.key")
        } else {
            PathBuf::from(&self.auth.token_key_path)
        }
    }

    /// The effective configuration, with secrets masked.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.auth.bootstrap_admin_password.is_empty() {
            shown.auth.bootstrap_admin_password = "********".into();
        }
        shown.metadata.url = mask_password(&shown.metadata.url);
        if !shown.storage.s3.secret_key.is_empty() {
            shown.storage.s3.secret_key = "********".into();
        }
        toml::to_string_pretty(&shown).unwrap_or_default()
    }
}

/// `scheme://user:password@host/…` with the password replaced by asterisks.
fn mask_password(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let Some(at) = url[start..].rfind('@').map(|i| start + i) else {
        return url.to_owned();
    };
    match url[start..at].find(':') {
        Some(colon) => format!("{}********{}", &url[..start + colon + 1], &url[at..]),
        None => url.to_owned(),
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

/// Overrides every known key from its `BERTH_…` variable, typed like its default. Keys of a
/// sub-table join with `_`: `storage.s3.bucket` is `BERTH_STORAGE_S3_BUCKET`.
fn apply_env(
    value: &mut toml::Value,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let Some(sections) = value.as_table_mut() else {
        return Ok(());
    };
    for (section, table) in sections.iter_mut() {
        apply_env_to(table, &env_name(section, ""), &env)?;
    }
    Ok(())
}

/// Overrides the keys of `table` from the variables named `prefix` + key.
fn apply_env_to(
    table: &mut toml::Value,
    prefix: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let Some(table) = table.as_table_mut() else {
        return Ok(());
    };
    for (key, current) in table.iter_mut() {
        let name = format!("{prefix}{}", key.to_uppercase());
        if current.is_table() {
            apply_env_to(current, &format!("{name}_"), env)?;
            continue;
        }
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
    Ok(())
}

pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(file: Option<&Path>, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(file, &env(pairs)).map(|(c, _)| c)
    }

    #[test]
    fn defaults_need_no_file() {
        let c = load(None, &[]).unwrap();
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
        let c = load(
            Some(&path),
            &[
                ("BERTH_STORAGE_DELETE_ENABLED", "true"),
                ("BERTH_LIMITS_MAX_MANIFEST_BYTES", "8192"),
            ],
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
        let err = load(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("port"), "{err}");
        let err = load(None, &[("BERTH_STORAGE_DELETE_ENABLED", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("BERTH_STORAGE_DELETE_ENABLED"), "{err}");
        let err = load(None, &[("BERTH_SERVER_ADDR", "nowhere")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.addr"), "{err}");
    }

    #[test]
    fn a_metadata_url_selects_postgres_and_its_password_is_masked() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.metadata_backend(), MetadataBackend::Sqlite);
        let url = "postgres://berth:p%40ss:word@db.internal:5432/registry";
        let c = load(None, &[("BERTH_METADATA_URL", url)]).unwrap();
        assert_eq!(c.metadata_backend(), MetadataBackend::Postgres);
        let shown = c.to_toml();
        assert!(!shown.contains("p%40ss"), "{shown}");
        assert!(
            shown.contains("postgres://berth:********@db.internal:5432/registry"),
            "{shown}"
        );
        let err = load(None, &[("BERTH_METADATA_BACKEND", "postgres")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("metadata.url"), "{err}");
        let err = load(None, &[("BERTH_METADATA_URL", "mysql://x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("metadata.url"), "{err}");
    }

    #[test]
    fn registry_env_is_honoured_and_berth_env_wins() {
        let (c, notices) = Config::load(
            None,
            &env(&[
                ("REGISTRY_HTTP_ADDR", ":5000"),
                ("REGISTRY_AUTH", "htpasswd"),
                ("REGISTRY_AUTH_HTPASSWD_REALM", "Registry Realm"),
                ("REGISTRY_AUTH_HTPASSWD_PATH", "/auth/htpasswd"),
                (
                    "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
                    "/var/lib/registry",
                ),
                ("REGISTRY_STORAGE_DELETE_ENABLED", "false"),
                ("REGISTRY_HTTP_SECRET", "s3cr3t"),
                ("REGISTRY_NOTIFICATIONS_ENDPOINTS", "x"),
                ("BERTH_STORAGE_DELETE_ENABLED", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.addr, "0.0.0.0:5000");
        assert_eq!(c.auth.mode, AuthMode::Htpasswd);
        assert_eq!(c.auth.htpasswd_path, "/auth/htpasswd");
        assert_eq!(c.storage.root, PathBuf::from("/var/lib/registry"));
        assert!(c.storage.delete_enabled, "BERTH_* beats REGISTRY_*");
        let unsupported: Vec<_> = notices.iter().filter(|n| n.unsupported).collect();
        assert_eq!(unsupported.len(), 1);
        assert!(unsupported[0]
            .message
            .contains("REGISTRY_NOTIFICATIONS_ENDPOINTS"));
        assert!(
            !notices.iter().any(|n| n.message.contains("s3cr3t")),
            "no secret in notices"
        );
    }

    #[test]
    fn registry_s3_variables_configure_the_s3_backend() {
        let (c, notices) = Config::load(
            None,
            &env(&[
                ("REGISTRY_STORAGE", "s3"),
                ("REGISTRY_STORAGE_S3_REGION", "eu-west-1"),
                ("REGISTRY_STORAGE_S3_BUCKET", "images"),
                ("REGISTRY_STORAGE_S3_REGIONENDPOINT", "http://minio:9000"),
                ("REGISTRY_STORAGE_S3_ACCESSKEY", "AKIA"),
                ("REGISTRY_STORAGE_S3_SECRETKEY", "very-secret"),
                ("REGISTRY_STORAGE_S3_ROOTDIRECTORY", "/registry"),
                ("REGISTRY_STORAGE_S3_FORCEPATHSTYLE", "true"),
                ("REGISTRY_STORAGE_S3_SECURE", "false"),
                ("REGISTRY_STORAGE_S3_CHUNKSIZE", "16777216"),
                ("REGISTRY_STORAGE_S3_ENCRYPT", "true"),
                ("REGISTRY_STORAGE_S3_KEYID", "kms-key"),
                ("REGISTRY_STORAGE_S3_STORAGECLASS", "NONE"),
                ("REGISTRY_STORAGE_S3_V4AUTH", "true"),
                ("REGISTRY_STORAGE_REDIRECT_DISABLE", "true"),
                ("BERTH_STORAGE_S3_MAX_RETRIES", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(c.storage.driver, StorageDriver::S3);
        let s3 = c.s3_config();
        assert_eq!(
            (s3.bucket.as_str(), s3.region.as_str(), s3.endpoint.as_str()),
            ("images", "eu-west-1", "http://minio:9000")
        );
        assert_eq!(
            (s3.access_key.as_str(), s3.secret_key.as_str()),
            ("AKIA", "very-secret")
        );
        assert_eq!(s3.root_directory, "/registry");
        assert!(s3.force_path_style && !s3.secure && s3.encrypt);
        assert_eq!(
            (s3.part_size, s3.kms_key_id.as_str()),
            (16 << 20, "kms-key")
        );
        assert_eq!(s3.storage_class, "", "NONE means no storage class header");
        assert_eq!(
            s3.max_retries, 5,
            "BERTH_STORAGE_S3_* reaches the sub-table"
        );
        assert!(!c.registry_config().redirect_downloads);
        assert!(notices.iter().all(|n| !n.unsupported), "{notices:?}");
        let shown = c.to_toml();
        assert!(
            !shown.contains("very-secret") && shown.contains("[storage.s3]"),
            "{shown}"
        );

        let err = load(
            None,
            &[
                ("REGISTRY_STORAGE", "s3"),
                ("REGISTRY_STORAGE_S3_BUCKET", "b"),
                ("REGISTRY_STORAGE_S3_CHUNKSIZE", "1024"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("chunk_size"), "{err}");
        let err = load(None, &[("REGISTRY_STORAGE", "swift")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("swift"), "{err}");
    }

    #[test]
    fn auth_needs_a_file() {
        let err = load(None, &[("BERTH_AUTH_MODE", "htpasswd")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("htpasswd_path"), "{err}");
        let err = load(None, &[("BERTH_AUTH_MODE", "silly")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("silly") && err.contains("token"), "{err}");
        let err = load(None, &[("BERTH_LOG_FORMAT", "xml")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("xml") && err.contains("json"), "{err}");
        let err = load(None, &[("BERTH_STORAGE_DRIVER", "tape")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("tape") && err.contains("filesystem"), "{err}");
        let err = load(None, &[("BERTH_STORAGE_DRIVER", "s3")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.s3.bucket"), "{err}");
        let err = load(None, &[("REGISTRY_AUTH", "silly")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("REGISTRY_AUTH"), "{err}");
    }
}
