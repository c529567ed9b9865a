//! Authentication and authorization for every route, decided here and nowhere else.
//!
//! The `authorize` middleware runs after the route is resolved: it identifies the caller
//! (Basic credentials or a bearer token), works out what the endpoint needs (pull, push,
//! delete on a repository; the catalog; just a login for `/v2/`), and either passes the
//! request on with an [`Access`] attached or answers 401 with a challenge, 403, or 429.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use berth_auth::htpasswd::verify_bcrypt;
use berth_auth::{
    AccessModel, Action, Claims, FailedLogins, Htpasswd, LoginCache, Principal, TokenIssuer,
    TokenVerifier,
};
use berth_meta::AccessStore;
use berth_oci::{ErrorCode, RepositoryName};
use http::{header, HeaderMap, Method};
use sha2::{Digest as _, Sha256};

use crate::error::ApiError;
use crate::route::Endpoint;
use crate::Registry;

/// Failed logins allowed per user and per client address within [`FAILED_LOGIN_WINDOW`].
pub const FAILED_LOGIN_LIMIT: u32 = 10;
pub const FAILED_LOGIN_WINDOW: Duration = Duration::from_secs(300);

/// How callers prove who they are, and the model that decides what they may do.
pub enum Authenticator {
    /// No authentication: everyone may do everything (the `registry:2` default).
    Open,
    /// HTTP Basic against an htpasswd file; every request needs a valid user, who may then do
    /// everything — `registry:2` with `REGISTRY_AUTH=htpasswd`.
    Htpasswd { realm: String, file: Arc<Htpasswd> },
    /// Users, projects, roles and robots, with Docker bearer tokens (and Basic too).
    Token(Arc<TokenAuth>),
}

/// The token-auth model: Harbor's access semantics in one process.
pub struct TokenAuth {
    pub issuer: TokenIssuer,
    /// Tokens of an external issuer, accepted when its public key is configured.
    pub external: Option<TokenVerifier>,
    /// Extra (non-admin) users from an htpasswd file.
    pub htpasswd: Option<Arc<Htpasswd>>,
    pub store: Arc<dyn AccessStore>,
    /// Overrides the token endpoint URL announced in challenges.
    pub realm: Option<String>,
    model: RwLock<Arc<AccessModel>>,
    logins: LoginCache,
}

impl TokenAuth {
    pub async fn new(
        issuer: TokenIssuer,
        external: Option<TokenVerifier>,
        htpasswd: Option<Arc<Htpasswd>>,
        store: Arc<dyn AccessStore>,
        realm: Option<String>,
    ) -> Result<Self, berth_meta::MetaError> {
        let model = AccessModel::from_snapshot(store.access_snapshot().await?);
        Ok(TokenAuth {
            issuer,
            external,
            htpasswd,
            store,
            realm,
            model: RwLock::new(Arc::new(model)),
            logins: LoginCache::default(),
        })
    }

    pub fn model(&self) -> Arc<AccessModel> {
        self.model.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads the model when the store's generation moved (a CLI change, another replica).
    pub async fn refresh(&self) -> Result<bool, berth_meta::MetaError> {
        let current = self.model().generation;
        if self.store.access_generation().await? == current {
            return Ok(false);
        }
        let model = AccessModel::from_snapshot(self.store.access_snapshot().await?);
        *self.model.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(model);
        Ok(true)
    }

    /// Checks a user, robot or htpasswd login. Unknown names cost the same as known ones.
    pub async fn login(&self, user: &str, password: &str) -> Option<Principal> {
        let model = self.model();
        if let Some(robot) = model.robots.get(user) {
            let hash = hex::encode(Sha256::digest(password.as_bytes()));
            let expired = robot.expires_at.is_some_and(|t| t <= berth_meta::now());
            let ok = berth_auth::constant_time_eq(hash.as_bytes(), robot.secret_hash.as_bytes());
            return (ok && !expired).then(|| Principal::Robot {
                name: user.to_owned(),
                project: robot.project.clone(),
                actions: robot.actions.clone(),
            });
        }
        if let Some(file) = self
            .htpasswd
            .as_ref()
            .filter(|f| f.contains(user) && !model.users.contains_key(user))
        {
            return file
                .verify(user, password)
                .await
                .then(|| Principal::user(user));
        }
        let stored = model.users.get(user);
        let fingerprint = self.logins.fingerprint(user, password);
        let ok = if stored.is_some() && self.logins.hit(user, &fingerprint, model.generation) {
            true
        } else {
            let hash = stored.map(|u| u.password_hash.clone());
            let p = password.to_owned();
            let ok = tokio::task::spawn_blocking(move || verify_bcrypt(hash.as_deref(), &p))
                .await
                .unwrap_or(false);
            if ok {
                self.logins.remember(user, fingerprint, model.generation);
            }
            ok
        };
        let admin = stored.is_some_and(|u| u.admin);
        ok.then(|| Principal::User {
            name: user.to_owned(),
            admin,
        })
    }

    /// Verifies a bearer token from Berth's own service or the external issuer.
    pub fn verify_token(&self, token: &str) -> Option<Claims> {
        self.issuer
            .verifier()
            .verify(token)
            .ok()
            .or_else(|| self.external.as_ref().and_then(|v| v.verify(token).ok()))
    }
}

/// What one request needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// Only to be identified (`/v2/`, which clients use to discover the auth scheme).
    Login,
    Catalog,
    Repository(RepositoryName, Action),
}

/// The access an endpoint requires for a method.
pub fn need(endpoint: &Endpoint, method: &Method) -> Need {
    let read = matches!(*method, Method::GET | Method::HEAD);
    let on = |name: &RepositoryName, action| Need::Repository(name.clone(), action);
    match endpoint {
        Endpoint::Base => Need::Login,
        Endpoint::Catalog => Need::Catalog,
        Endpoint::Tags { name } | Endpoint::Referrers { name, .. } => on(name, Action::Pull),
        Endpoint::Manifest { name, .. } | Endpoint::Blob { name, .. } => match *method {
            _ if read => on(name, Action::Pull),
            Method::DELETE => on(name, Action::Delete),
            _ => on(name, Action::Push),
        },
        Endpoint::UploadStart { name } | Endpoint::Upload { name, .. } => on(name, Action::Push),
    }
}

/// How a request was authorized: the caller, and what they hold.
#[derive(Clone, Debug)]
pub struct Access {
    pub principal: Principal,
    /// The claims of a bearer token; `None` for Basic or anonymous callers.
    pub claims: Option<Arc<Claims>>,
    /// Client address, for audit records.
    pub client: String,
}

impl Access {
    pub fn anonymous(client: String) -> Access {
        Access {
            principal: Principal::Anonymous,
            claims: None,
            client,
        }
    }
}

/// The `user:password` of a Basic `Authorization` header.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The client's address as seen by this server.
pub fn client_address(extensions: &http::Extensions) -> String {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The absolute base URL clients used, honouring a reverse proxy's `X-Forwarded-*`.
pub fn external_base(headers: &HeaderMap, tls: bool) -> String {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim().to_owned())
    };
    let scheme = get("x-forwarded-proto")
        .filter(|s| s == "http" || s == "https")
        .unwrap_or_else(|| if tls { "https".into() } else { "http".into() });
    let host = get("x-forwarded-host")
        .or_else(|| get("host"))
        .unwrap_or_else(|| "localhost".into());
    format!("{scheme}://{host}")
}

/// Failed logins, counted per user and per client address for every auth mode.
pub fn failed_logins() -> FailedLogins {
    FailedLogins::new(FAILED_LOGIN_LIMIT, FAILED_LOGIN_WINDOW)
}

impl Registry {
    pub fn login_blocked(&self, user: &str, client: &str) -> bool {
        self.failed_logins
            .blocked(&[&format!("user:{user}"), &format!("addr:{client}")])
    }

    pub fn login_failed(&self, user: &str, client: &str) {
        self.failed_logins
            .record_failure(&[&format!("user:{user}"), &format!("addr:{client}")]);
    }

    pub fn login_succeeded(&self, user: &str) {
        self.failed_logins.record_success(&format!("user:{user}"));
    }

    /// The single authorization decision for an already identified caller.
    pub fn may(&self, access: &Access, need: &Need) -> bool {
        match &self.auth {
            Authenticator::Open => true,
            // registry:2 semantics: any valid user may do everything.
            Authenticator::Htpasswd { .. } => !access.principal.is_anonymous(),
            Authenticator::Token(t) => match (&access.claims, need) {
                (Some(_), Need::Login) => true,
                (None, Need::Login | Need::Catalog) => !access.principal.is_anonymous(),
                (Some(claims), Need::Catalog) => claims.grants("registry", "catalog", "*"),
                (Some(claims), Need::Repository(name, action)) => {
                    claims.grants("repository", name.as_str(), action.as_str())
                }
                (None, Need::Repository(name, action)) => {
                    t.model().may(&access.principal, name.as_str(), *action)
                }
            },
        }
    }

    /// May the caller read `repository`? Used to filter listings and to allow mounts.
    pub fn may_pull(&self, access: &Access, repository: &RepositoryName) -> bool {
        match &self.auth {
            Authenticator::Token(t) if access.claims.is_some() => {
                // A token's own grant, or what the live model allows its subject.
                self.may(access, &Need::Repository(repository.clone(), Action::Pull))
                    || t.model().may(
                        &principal_of_token(t, access),
                        repository.as_str(),
                        Action::Pull,
                    )
            }
            _ => self.may(access, &Need::Repository(repository.clone(), Action::Pull)),
        }
    }

    pub(crate) async fn identify(
        &self,
        headers: &HeaderMap,
        client: &str,
    ) -> Result<Access, ApiError> {
        let anonymous = Access::anonymous(client.to_owned());
        match &self.auth {
            Authenticator::Open => Ok(anonymous),
            Authenticator::Htpasswd { file, .. } => match basic_credentials(headers) {
                None => Ok(anonymous),
                Some((user, _)) if self.login_blocked(&user, client) => Err(ApiError::new(
                    ErrorCode::TooManyRequests,
                    "too many failed logins; try later",
                )),
                Some((user, password)) if file.verify(&user, &password).await => {
                    self.login_succeeded(&user);
                    Ok(Access {
                        principal: Principal::user(user),
                        ..anonymous
                    })
                }
                Some((user, _)) => {
                    self.login_failed(&user, client);
                    self.audit
                        .record(&user, "login", "registry", "failed", client, "basic");
                    Err(self.challenge(headers, None, "invalid username or password"))
                }
            },
            Authenticator::Token(t) => {
                if let Some(token) = bearer_token(headers) {
                    let claims = t
                        .verify_token(token)
                        .ok_or_else(|| self.challenge(headers, None, "invalid or expired token"))?;
                    let principal = principal_of_claims(t, &claims);
                    return Ok(Access {
                        principal,
                        claims: Some(Arc::new(claims)),
                        ..anonymous
                    });
                }
                let Some((user, password)) = basic_credentials(headers) else {
                    return Ok(anonymous);
                };
                if self.login_blocked(&user, client) {
                    return Err(ApiError::new(
                        ErrorCode::TooManyRequests,
                        "too many failed logins; try later",
                    ));
                }
                match t.login(&user, &password).await {
                    Some(principal) => {
                        self.login_succeeded(&user);
                        Ok(Access {
                            principal,
                            ..anonymous
                        })
                    }
                    None => {
                        self.login_failed(&user, client);
                        self.audit
                            .record(&user, "login", "registry", "failed", client, "basic");
                        Err(self.challenge(headers, None, "invalid username or password"))
                    }
                }
            }
        }
    }

    /// A 401 with the `WWW-Authenticate` challenge of the configured scheme.
    pub fn challenge(&self, headers: &HeaderMap, need: Option<&Need>, detail: &str) -> ApiError {
        let challenge = match &self.auth {
            Authenticator::Open => String::new(),
            Authenticator::Htpasswd { realm, .. } => {
                format!("Basic realm=\"{}\"", realm.replace('"', ""))
            }
            Authenticator::Token(t) => {
                let realm = t.realm.clone().unwrap_or_else(|| {
                    format!("{}/auth/token", external_base(headers, self.config.tls))
                });
                let mut c = format!("Bearer realm=\"{realm}\",service=\"{}\"", t.issuer.service);
                match need {
                    Some(Need::Repository(name, action)) => {
                        let actions = if *action == Action::Push {
                            "pull,push"
                        } else {
                            action.as_str()
                        };
                        c.push_str(&format!(",scope=\"repository:{name}:{actions}\""));
                    }
                    Some(Need::Catalog) => c.push_str(",scope=\"registry:catalog:*\""),
                    _ => {}
                }
                c
            }
        };
        ApiError::Unauthorized {
            challenge,
            detail: detail.to_owned(),
        }
    }
}

fn principal_of_claims(t: &TokenAuth, claims: &Claims) -> Principal {
    let model = t.model();
    if let Some(robot) = model.robots.get(&claims.sub) {
        return Principal::Robot {
            name: claims.sub.clone(),
            project: robot.project.clone(),
            actions: robot.actions.clone(),
        };
    }
    let admin = model.users.get(&claims.sub).is_some_and(|u| u.admin);
    if claims.sub.is_empty() || claims.sub == "anonymous" {
        Principal::Anonymous
    } else {
        Principal::User {
            name: claims.sub.clone(),
            admin,
        }
    }
}

fn principal_of_token(t: &TokenAuth, access: &Access) -> Principal {
    access
        .claims
        .as_ref()
        .map(|c| principal_of_claims(t, c))
        .unwrap_or(Principal::Anonymous)
}

pub async fn authorize(
    State(registry): State<Arc<Registry>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(endpoint) = request.extensions().get::<Endpoint>() else {
        return next.run(request).await;
    };
    let need = need(endpoint, request.method());
    let client = client_address(request.extensions());
    let access = match registry.identify(request.headers(), &client).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if !registry.may(&access, &need) {
        let detail = format!("{need:?} is not allowed for {}", access.principal.name());
        if access.claims.is_none() && access.principal.is_anonymous() {
            // No credentials at all: ask for them, naming exactly what is needed.
            return registry
                .challenge(request.headers(), Some(&need), &detail)
                .into_response();
        }
        // Known caller without the right: 403. A token holder also gets the challenge, marked
        // insufficient_scope (RFC 6750), so clients that fetch narrow tokens can ask again.
        let mut response = ApiError::Denied(detail).into_response();
        if access.claims.is_some() {
            if let ApiError::Unauthorized { challenge, .. } =
                registry.challenge(request.headers(), Some(&need), "")
            {
                let value = format!("{challenge},error=\"insufficient_scope\"");
                if let Ok(v) = http::HeaderValue::from_str(&value) {
                    response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
        }
        return response;
    }
    let user = access.principal.name().to_owned();
    request.extensions_mut().insert(access);
    let mut response = next.run(request).await;
    response
        .extensions_mut()
        .get_or_insert_default::<crate::observe::RequestFacts>()
        .user = user;
    response
}
