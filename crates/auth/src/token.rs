//! Docker registry bearer tokens: short-lived JWTs carrying the granted `access` entries,
//! issued by Berth's own token service (ES256, key kept under the data directory) or by an
//! external issuer whose public key is configured.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token key: {0}")]
    Key(String),
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// One `access` entry: `{"type":"repository","name":"team/app","actions":["pull"]}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    /// Not valid before; checked when present (external issuers may leave it out).
    #[serde(default)]
    pub nbf: u64,
    #[serde(default)]
    pub iat: u64,
    #[serde(default)]
    pub jti: String,
    #[serde(default)]
    pub access: Vec<AccessEntry>,
}

impl Claims {
    /// Does the token grant `action` on `kind:name`?
    pub fn grants(&self, kind: &str, name: &str, action: &str) -> bool {
        self.access.iter().any(|a| {
            a.kind == kind && a.name == name && a.actions.iter().any(|x| x == action || x == "*")
        })
    }
}

/// A requested scope, `repository:team/app:pull,push` or `registry:catalog:*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Scope {
    /// The type is before the first `:`, the actions after the last; the name may hold `:`.
    pub fn parse(s: &str) -> Option<Scope> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() {
            return None;
        }
        Some(Scope {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Signs tokens.
pub struct TokenIssuer {
    encoding: EncodingKey,
    public_pem: String,
    verifier: TokenVerifier,
    pub issuer: String,
    pub service: String,
    pub ttl: Duration,
}

impl TokenIssuer {
    /// Loads the signing key from `key_path`, creating it (P-256, mode 0600) the first time.
    pub fn open(
        key_path: &Path,
        issuer: &str,
        service: &str,
        ttl: Duration,
    ) -> Result<Self, TokenError> {
        let io = |source| TokenError::Io {
            path: key_path.display().to_string(),
            source,
        };
        let pem = if key_path.exists() {
            std::fs::read_to_string(key_path).map_err(io)?
        } else {
            let key = rcgen::KeyPair::generate().map_err(|e| TokenError::Key(e.to_string()))?;
            let pem = key.serialize_pem();
            if let Some(dir) = key_path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            write_private(key_path, &pem).map_err(io)?;
            pem
        };
        let pair = rcgen::KeyPair::from_pem(&pem).map_err(|e| TokenError::Key(e.to_string()))?;
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes())?;
        let verifier =
            TokenVerifier::from_public_pem(pair.public_key_pem().as_bytes(), issuer, service)?;
        Ok(TokenIssuer {
            encoding,
            public_pem: pair.public_key_pem(),
            verifier,
            issuer: issuer.to_owned(),
            service: service.to_owned(),
            ttl,
        })
    }

    /// The public key (PEM) that verifies this issuer's tokens, to hand to other services.
    pub fn public_key_pem(&self) -> &str {
        &self.public_pem
    }

    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    /// Issues a token for `subject` with exactly `access`, valid for the issuer's lifetime or
    /// until `not_after` (seconds since the epoch, e.g. a robot's expiry), whichever is sooner.
    pub fn issue(
        &self,
        subject: &str,
        access: Vec<AccessEntry>,
        not_after: Option<u64>,
    ) -> Result<(String, Claims), TokenError> {
        let now = now();
        let exp = (now + self.ttl.as_secs()).min(not_after.unwrap_or(u64::MAX));
        let mut jti = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut jti);
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: self.service.clone(),
            exp,
            // A little slack for clocks of replicas verifying the token.
            nbf: now.saturating_sub(10),
            iat: now,
            jti: hex::encode(jti),
            access,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)?;
        Ok((token, claims))
    }
}

fn write_private(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(pem.as_bytes())
}

/// Verifies tokens signed by one key for one issuer and service.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    /// From a PEM public key (EC P-256 → ES256, RSA → RS256).
    pub fn from_public_pem(pem: &[u8], issuer: &str, service: &str) -> Result<Self, TokenError> {
        let (key, alg) = match DecodingKey::from_ec_pem(pem) {
            Ok(k) => (k, Algorithm::ES256),
            Err(_) => (DecodingKey::from_rsa_pem(pem)?, Algorithm::RS256),
        };
        let mut validation = Validation::new(alg);
        validation.set_audience(&[service]);
        validation.set_issuer(&[issuer]);
        validation.leeway = 30;
        validation.validate_nbf = true;
        Ok(TokenVerifier { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        Ok(jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let s = Scope::parse("repository:team/app:pull,push").unwrap();
        assert_eq!(
            (s.kind.as_str(), s.name.as_str()),
            ("repository", "team/app")
        );
        assert_eq!(s.actions, vec!["pull", "push"]);
        let s = Scope::parse("repository:localhost:5000/app:pull").unwrap();
        assert_eq!(s.name, "localhost:5000/app");
        assert_eq!(
            Scope::parse("registry:catalog:*").unwrap().actions,
            vec!["*"]
        );
        assert!(Scope::parse("nonsense").is_none());
    }

    #[test]
    fn issue_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let issuer = TokenIssuer::open(&key, "berth", "registry", Duration::from_secs(60)).unwrap();
        let access = vec![AccessEntry {
            kind: "repository".into(),
            name: "a/b".into(),
            actions: vec!["pull".into()],
        }];
        let (token, _) = issuer.issue("alice", access, None).unwrap();
        let claims = issuer.verifier().verify(&token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert!(claims.grants("repository", "a/b", "pull"));
        assert!(!claims.grants("repository", "a/b", "push"));
        assert!(!claims.grants("repository", "a/c", "pull"));

        // Same key on reopen; a different service or a tampered token is refused.
        let again = TokenIssuer::open(&key, "berth", "registry", Duration::from_secs(60)).unwrap();
        assert!(again.verifier().verify(&token).is_ok());
        let other = TokenIssuer::open(&key, "berth", "other", Duration::from_secs(60)).unwrap();
        assert!(other.verifier().verify(&token).is_err());
        let mut bad = token.clone();
        bad.pop();
        assert!(issuer.verifier().verify(&bad).is_err());
        let foreign = TokenIssuer::open(
            &dir.path().join("k2.pem"),
            "berth",
            "registry",
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(foreign.verifier().verify(&token).is_err());
    }

    #[test]
    fn lifetime_is_capped_and_nbf_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::open(
            &dir.path().join("k.pem"),
            "berth",
            "registry",
            Duration::from_secs(300),
        )
        .unwrap();
        let soon = now() + 5;
        let (_, claims) = issuer.issue("robot$p+ci", vec![], Some(soon)).unwrap();
        assert_eq!(claims.exp, soon, "capped at the robot's expiry");

        // A token that becomes valid tomorrow is refused today, even though it is signed right.
        let key =
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.path().join("k.pem")).unwrap())
                .unwrap();
        let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        let mut future = claims.clone();
        future.exp = now() + 2 * 86_400;
        future.nbf = now() + 86_400;
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &future, &encoding).unwrap();
        assert!(
            issuer.verifier().verify(&token).is_err(),
            "nbf in the future"
        );
        future.nbf = now();
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &future, &encoding).unwrap();
        assert!(issuer.verifier().verify(&token).is_ok());
    }
}
