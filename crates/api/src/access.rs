//! Authentication and authorization for every route, decided here and nowhere else.
//!
//! The `authorize` middleware runs after the route is resolved: it identifies the caller
//! (Basic credentials or a bearer token), works out what the endpoint needs (pull, push,
//! delete on a repository; the catalog; just a login for `/v2/`), and either passes the
//! request on with an [`Access`] attached or answers 401 with a challenge, 403, or 429. The
//! admin API and the token service identify callers and check passwords through the same
//! functions ([`Registry::identify`], [`Registry::check_password`], [`Registry::may`]).
//!
//! A bearer token is worth its `access` claim and no more. For Berth's own tokens that claim is
//! also intersected with what the live access model allows its subject now, so a revoked role,
//! a deleted user or an expired robot loses its rights as soon as the model reloads (within
//! two seconds), not when the token expires. An external issuer's token is worth exactly its
//! claim: its subject is never taken for a local account of the same name.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use berth_auth::htpasswd::verify_bcrypt;
use berth_auth::{
    AccessModel, Action, Authorizer, Claims, Htpasswd, LoginCache, Mode, Permission, Principal,
    TokenIssuer, TokenVerifier,
};
use berth_meta::AccessStore;
use berth_oci::{ErrorCode, RepositoryName};
use berth_registry::Listable;
use http::{header, HeaderMap, Method};
use sha2::{Digest as _, Sha256};

use crate::error::ApiError;
use crate::route::Endpoint;
use crate::Api;

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

    /// Verifies a bearer token and names its holder: for Berth's own tokens the local user or
    /// robot the token was issued to, as the live model knows them now (`None` once they are
    /// gone or expired); for an external issuer's token, an external subject.
    pub fn verify_token(&self, token: &str) -> Option<(Claims, Principal)> {
        if let Ok(claims) = self.issuer.verifier().verify(token) {
            let principal = self.local_subject(&claims.sub)?;
            return Some((claims, principal));
        }
        let claims = self.external.as_ref()?.verify(token).ok()?;
        let principal = Principal::External {
            issuer: claims.iss.clone(),
            subject: claims.sub.clone(),
        };
        Some((claims, principal))
    }

    /// The local account named `subject` by one of Berth's tokens, if it still exists.
    pub(crate) fn local_subject(&self, subject: &str) -> Option<Principal> {
        if subject.is_empty() {
            return Some(Principal::Anonymous);
        }
        let model = self.model();
        if let Some(robot) = model.robots.get(subject) {
            let expired = robot.expires_at.is_some_and(|t| t <= berth_meta::now());
            return (!expired).then(|| Principal::Robot {
                name: subject.to_owned(),
                project: robot.project.clone(),
                actions: robot.actions.clone(),
            });
        }
        if let Some(user) = model.users.get(subject) {
            return Some(Principal::User {
                name: subject.to_owned(),
                admin: user.admin,
            });
        }
        self.htpasswd
            .as_ref()
            .filter(|f| f.contains(subject))
            .map(|_| Principal::user(subject))
    }

    /// When a token issued now to `principal` must expire at the latest: a robot's expiry.
    pub fn not_after(&self, principal: &Principal) -> Option<u64> {
        match principal {
            Principal::Robot { name, .. } => self
                .model()
                .robots
                .get(name)
                .and_then(|r| r.expires_at)
                .map(|t| t.max(0) as u64),
            _ => None,
        }
    }
}

/// What one request needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// Only to be identified (`/v2/`, which clients use to discover the auth scheme).
    Login,
    Catalog,
    Repository(RepositoryName, Action),
    /// The admin API: a password login, or one of Berth's tokens with the scope
    /// `registry:admin:*`. What the caller may then change is decided by their live rights.
    Admin,
}

impl Need {
    pub fn permission(&self) -> Permission<'_> {
        match self {
            Need::Login => Permission::Login,
            Need::Catalog => Permission::Catalog,
            Need::Repository(name, action) => Permission::Repository(name.as_str(), *action),
            Need::Admin => Permission::AdminApi,
        }
    }
}

/// The access an endpoint requires for a method.
pub fn need(endpoint: &Endpoint, method: &Method) -> Need {
    let read = matches!(*method, Method::GET | Method::HEAD);
    let on = |name: &RepositoryName, action| Need::Repository(name.clone(), action);
    match endpoint {
        Endpoint::Base => Need::Login,
        Endpoint::Catalog => Need::Catalog,
        Endpoint::Tags { name } | Endpoint::Referrers { name, .. } => on(name, Action::Pull),
        Endpoint::Manifest { name, .. }
        | Endpoint::InvalidTag { name, .. }
        | Endpoint::Blob { name, .. } => match *method {
            _ if read => on(name, Action::Pull),
            Method::DELETE => on(name, Action::Delete),
            _ => on(name, Action::Push),
        },
        Endpoint::UploadStart { name } | Endpoint::Upload { name, .. } => on(name, Action::Push),
    }
}

/// How the caller proved who they are.
#[derive(Clone, Debug)]
pub enum Credential {
    None,
    /// Basic credentials, checked against the user table, robots or htpasswd.
    Password,
    /// A bearer token and its verified claims.
    Token(Arc<Claims>),
}

/// How a request was authorized: the caller, and what they hold.
#[derive(Clone, Debug)]
pub struct Access {
    pub principal: Principal,
    pub credential: Credential,
    /// Client address, for audit records.
    pub client: String,
}

impl Access {
    pub fn anonymous(client: String) -> Access {
        Access {
            principal: Principal::Anonymous,
            credential: Credential::None,
            client,
        }
    }

    /// The credential as the authorizer weighs it.
    pub fn authorizer_credential(&self) -> berth_auth::Credential<'_> {
        match &self.credential {
            Credential::None => berth_auth::Credential::None,
            Credential::Password => berth_auth::Credential::Password,
            Credential::Token(claims) => berth_auth::Credential::Token(claims),
        }
    }

    /// The caller as the registry's events name them.
    pub fn actor(&self) -> berth_registry::Actor {
        berth_registry::Actor::new(self.principal.name().into_owned(), self.client.clone())
    }

    pub fn claims(&self) -> Option<&Claims> {
        match &self.credential {
            Credential::Token(c) => Some(c),
            _ => None,
        }
    }
}

/// Why a password login was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginRefused {
    /// Too many failures from this address, or for this user from this address.
    RateLimited,
    Invalid,
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

impl Api {
    /// Checks a password login — the one login sequence of every interface. The attempt is
    /// reserved against the failed-login limits before the password is checked, so parallel
    /// guesses cannot all be checked before the first failure counts. Failures are audited
    /// (the audit log folds floods of them into summaries).
    pub async fn check_password(
        &self,
        user: &str,
        password: &str,
        client: &str,
        via: &str,
    ) -> Result<Principal, LoginRefused> {
        let Some(attempt) = self.failed_logins.begin(user, client, password) else {
            self.audit
                .record_refusal(user, "login", via, client, "refused logins (rate limited)");
            return Err(LoginRefused::RateLimited);
        };
        let principal = match &self.auth {
            Authenticator::Open => None,
            Authenticator::Htpasswd { file, .. } => file
                .verify(user, password)
                .await
                .then(|| Principal::user(user)),
            Authenticator::Token(t) => t.login(user, password).await,
        };
        match principal {
            Some(p) => {
                attempt.succeeded();
                Ok(p)
            }
            None => {
                attempt.failed();
                self.audit
                    .record(user, "login", via, "failed", client, "invalid password");
                Err(LoginRefused::Invalid)
            }
        }
    }

    /// The authorization decision for an endpoint's need: [`Api::allows`].
    pub fn may(&self, access: &Access, need: &Need) -> bool {
        self.allows(access, need.permission())
    }

    /// The one decision of every interface, taken by [`berth_auth::Authorizer`] over the
    /// access model as it is now.
    pub fn allows(&self, access: &Access, permission: Permission<'_>) -> bool {
        self.with_authorizer(|authorizer| {
            authorizer.allows(
                &access.principal,
                access.authorizer_credential(),
                permission,
            )
        })
    }

    /// The bound and the decision for the caller's repository lists: the projects they may
    /// draw from (`None`: unbounded, [`Authorizer::listable_projects`]) and the check each
    /// listed name passes.
    pub fn listable<'a>(
        &'a self,
        access: &'a Access,
    ) -> Listable<impl Fn(&RepositoryName) -> bool + 'a> {
        let projects = self
            .with_authorizer(|authorizer| authorizer.listable_projects(&access.principal))
            .map(|projects| projects.into_iter().collect());
        Listable {
            projects,
            visible: move |name: &RepositoryName| self.may_list(access, name),
        }
    }

    /// Runs `decide` with the authorizer of this registry's mode over the model as it is now.
    fn with_authorizer<R>(&self, decide: impl FnOnce(&Authorizer<'_>) -> R) -> R {
        let (mode, model) = match &self.auth {
            Authenticator::Open => (Mode::Open, None),
            Authenticator::Htpasswd { .. } => (Mode::Htpasswd, None),
            Authenticator::Token(t) => (Mode::Token, Some(t.model())),
        };
        // The registry:2 modes decide without a model; one empty model serves them all.
        static EMPTY: std::sync::OnceLock<AccessModel> = std::sync::OnceLock::new();
        decide(&Authorizer {
            mode,
            model: model
                .as_deref()
                .unwrap_or_else(|| EMPTY.get_or_init(AccessModel::default)),
        })
    }

    /// Is `repository` listed in the caller's catalog?
    pub fn may_list(&self, access: &Access, repository: &RepositoryName) -> bool {
        self.allows(access, Permission::ListRepository(repository.as_str()))
    }

    /// The response for a caller that lacks `need`: a 401 challenge naming it for callers
    /// without credentials, else 403 (token holders also get the challenge, marked
    /// `insufficient_scope` (RFC 6750), so clients that fetch narrow tokens can ask again).
    pub fn refusal(&self, headers: &HeaderMap, access: &Access, need: &Need) -> Response {
        let detail = format!("{need:?} is not allowed for {}", access.principal.name());
        if matches!(access.credential, Credential::None) {
            return self.challenge(headers, Some(need), &detail).into_response();
        }
        let mut response = ApiError::Denied(detail).into_response();
        if matches!(access.credential, Credential::Token(_)) {
            if let ApiError::Unauthorized { challenge, .. } =
                self.challenge(headers, Some(need), "")
            {
                let value = format!("{challenge},error=\"insufficient_scope\"");
                if let Ok(v) = http::HeaderValue::from_str(&value) {
                    response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
        }
        response
    }

    /// Who is calling: from a bearer token, Basic credentials, or nobody.
    pub(crate) async fn identify(
        &self,
        headers: &HeaderMap,
        client: &str,
    ) -> Result<Access, ApiError> {
        let anonymous = Access::anonymous(client.to_owned());
        if let Authenticator::Open = self.auth {
            return Ok(anonymous);
        }
        if let (Authenticator::Token(t), Some(token)) = (&self.auth, bearer_token(headers)) {
            let (claims, principal) = t
                .verify_token(token)
                .ok_or_else(|| self.challenge(headers, None, "invalid or expired token"))?;
            return Ok(Access {
                principal,
                credential: Credential::Token(Arc::new(claims)),
                ..anonymous
            });
        }
        let Some((user, password)) = basic_credentials(headers) else {
            return Ok(anonymous);
        };
        match self.check_password(&user, &password, client, "basic").await {
            Ok(principal) => Ok(Access {
                principal,
                credential: Credential::Password,
                ..anonymous
            }),
            Err(LoginRefused::RateLimited) => Err(ApiError::new(
                ErrorCode::TooManyRequests,
                "too many failed logins from this address; try again later",
            )),
            Err(LoginRefused::Invalid) => {
                Err(self.challenge(headers, None, "invalid username or password"))
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
                    Some(Need::Admin) => c.push_str(",scope=\"registry:admin:*\""),
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

pub async fn authorize(State(api): State<Arc<Api>>, mut request: Request, next: Next) -> Response {
    let Some(endpoint) = request.extensions().get::<Endpoint>() else {
        return next.run(request).await;
    };
    let need = need(endpoint, request.method());
    let client = client_address(request.extensions());
    let access = match api.identify(request.headers(), &client).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if !api.may(&access, &need) {
        return api.refusal(request.headers(), &access, &need);
    }
    let user = access.principal.name().into_owned();
    request.extensions_mut().insert(access);
    let mut response = next.run(request).await;
    response
        .extensions_mut()
        .get_or_insert_default::<crate::observe::RequestFacts>()
        .user = user;
    response
}
