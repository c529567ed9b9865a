//! TLS: HTTPS (HTTP/2 through ALPN, HTTP/1.1 otherwise) from PEM files that are re-read when
//! they change, and `berth tls init`, which makes a small CA and a server certificate so that
//! clients trust the registry instead of being told to treat it as insecure.

use std::fs::File;
use std::io::BufReader;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::{anyhow, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_certified_key(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let open = |p: &Path| File::open(p).with_context(|| format!("opening {}", p.display()));
    let certs = rustls_pemfile::certs(&mut BufReader::new(open(cert)?))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading certificates from {}", cert.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("{} holds no certificate", cert.display()));
    }
    let private = rustls_pemfile::private_key(&mut BufReader::new(open(key)?))
        .with_context(|| format!("reading the key from {}", key.display()))?
        .ok_or_else(|| anyhow!("{} holds no private key", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| anyhow!("unsupported private key in {}: {e}", key.display()))?;
    Ok(CertifiedKey::new(certs, signing))
}

/// The server certificate, swapped in place when its files change (certificate rotation
/// without a restart; e.g. cert-manager renewing a Kubernetes Secret).
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Option<SystemTime>, Option<SystemTime>, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<Self>> {
        let loaded = Arc::new(load_certified_key(cert, key)?);
        Ok(Arc::new(ReloadingCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new((modified(cert), modified(key), loaded)),
        }))
    }

    /// Reloads when either file changed; a broken pair is reported and the old one kept.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let stamps = (modified(&self.cert), modified(&self.key));
        {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            if (current.0, current.1) == stamps {
                return Ok(false);
            }
        }
        let loaded = Arc::new(load_certified_key(&self.cert, &self.key)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (stamps.0, stamps.1, loaded);
        Ok(true)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .2
                .clone(),
        )
    }
}

/// A rustls server configuration offering HTTP/2 and HTTP/1.1.
pub fn server_config(cert: Arc<ReloadingCert>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What `berth tls init` wrote.
pub struct Issued {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Creates `ca.crt`/`ca.key` (kept if they exist) and a server certificate for `hosts` and
/// `ips`, signed by that CA, in `dir`.
pub fn init(dir: &Path, hosts: &[String], ips: &[IpAddr]) -> anyhow::Result<Issued> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_cert_path = dir.join("ca.crt");
    let ca_key_path = dir.join("ca.key");

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Berth registry CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = if ca_key_path.exists() {
        KeyPair::from_pem(&std::fs::read_to_string(&ca_key_path)?)?
    } else {
        KeyPair::generate()?
    };
    let ca = ca_params.self_signed(&ca_key)?;
    if !ca_cert_path.exists() {
        write_private(&ca_key_path, &ca_key.serialize_pem())?;
        std::fs::write(&ca_cert_path, ca.pem())?;
    }

    let mut params = CertificateParams::new(hosts.to_vec())?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let common_name = hosts
        .first()
        .cloned()
        .or_else(|| ips.first().map(|ip| ip.to_string()));
    params.distinguished_name.push(
        DnType::CommonName,
        common_name.unwrap_or_else(|| "berth".into()),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let server_cert = dir.join("server.crt");
    let server_key = dir.join("server.key");
    // The chain carries the CA too, so clients given only the CA still validate.
    std::fs::write(
        &server_cert,
        format!("{}{}", cert.pem(), std::fs::read_to_string(&ca_cert_path)?),
    )?;
    write_private(&server_key, &key.serialize_pem())?;
    Ok(Issued {
        ca_cert: ca_cert_path,
        server_cert,
        server_key,
    })
}

fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    Ok(())
}

/// How to make each kind of client trust the CA, for `registry` = `host:port`.
pub fn trust_instructions(issued: &Issued, registry: &str) -> String {
    let ca = issued.ca_cert.display();
    format!(
        r#"Serve with:
  BERTH_TLS_CERTIFICATE={cert} BERTH_TLS_KEY={key} berth serve
  (or REGISTRY_HTTP_TLS_CERTIFICATE / REGISTRY_HTTP_TLS_KEY, or [tls] in the config file)

Trust the CA ({ca}) on every machine that pulls or pushes — no insecure-registries needed:

docker:
  mkdir -p /etc/docker/certs.d/{registry}
  cp {ca} /etc/docker/certs.d/{registry}/ca.crt

podman, skopeo, buildah (containers/image):
  mkdir -p /etc/containers/certs.d/{registry}
  cp {ca} /etc/containers/certs.d/{registry}/ca.crt

containerd (and so every Kubernetes node; config_path = "/etc/containerd/certs.d" in the CRI
registry section of /etc/containerd/config.toml):
  mkdir -p /etc/containerd/certs.d/{registry}
  cp {ca} /etc/containerd/certs.d/{registry}/ca.crt
  cat > /etc/containerd/certs.d/{registry}/hosts.toml <<'TOML'
  server = "https://{registry}"
  [host."https://{registry}"]
    capabilities = ["pull", "resolve", "push"]
    ca = "/etc/containerd/certs.d/{registry}/ca.crt"
  TOML

the node's system trust store (curl, kubelet's image credential helpers, …), Debian/Ubuntu:
  cp {ca} /usr/local/share/ca-certificates/berth-registry.crt && update-ca-certificates
"#,
        cert = issued.server_cert.display(),
        key = issued.server_key.display(),
    )
}
