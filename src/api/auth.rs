//! Who may call the API, and what browsers may not do.
//!
//! ```text
//!  request ─▶ Origin same as Host? ─▶ loopback-only: Host a loopback name? ─▶ write: JSON body?
//!            (403 ForeignOrigin)      (403, DNS rebinding)                    (415)
//!          ─▶ open path? ─▶ credential (Basic / Bearer API key) ─▶ capability for the route ─▶ handler
//!                           (401 Unauthorized)                      (403 Forbidden)
//! ```
//!
//! Users are Bacalhau's `API.Auth.Users` (v1.7+): a username with a password (plain or bcrypt) or an
//! API key, and capabilities (`read:job`, `write:*`, `*`, …). Caravel adds `admin` (membership,
//! snapshots, join tokens, node approval), which no other action implies, and the resources
//! `cluster` and `metrics`. With no users configured the API serves only loopback clients (the quick
//! start and devstack need no credential; a stray `serve` on 0.0.0.0 is not an open door), unless
//! `API.Auth.AllowAnonymous` lets anonymous remote clients read (or write). Secrets are compared as
//! SHA-256 digests in constant time; bcrypt runs on the blocking pool, a few at a time, and a
//! verified password is remembered (by digest) for a minute so a busy client costs one bcrypt.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use caravel_model::config::{AuthConfig, anonymous_level, is_bcrypt_hash};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sha2::{Digest, Sha256};

use super::ApiErr;

/// The peer address of a connection, whichever listener accepted it (see `api::listener`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Health and version: anybody.
    Open,
    Read(&'static str),
    Write(&'static str),
    /// Membership, snapshots, join tokens, node approval: only `admin`.
    Admin,
    /// A path no route serves: any valid credential (then 404).
    Authenticated,
}

impl Need {
    /// The capability a request needs, from its method and path (longest prefix, as Bacalhau's
    /// `EntryPointAuthorizer`).
    pub fn of(method: &Method, path: &str) -> Need {
        let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        let rw = |res: &'static str| {
            if read {
                Need::Read(res)
            } else {
                Need::Write(res)
            }
        };
        let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
        match path {
            "/api/v1/agent/alive"
            | "/api/v1/agent/version"
            | "/api/v1/agent/authconfig"
            | "/livez"
            | "/readyz" => Need::Open,
            _ if under("/api/v1/orchestrator/snapshot") => Need::Admin,
            _ if under("/api/v1/orchestrator/tokens") => Need::Admin,
            _ if under("/api/v1/orchestrator/revocations") => Need::Admin,
            _ if under("/api/v1/orchestrator/cluster") => {
                if read {
                    Need::Read("cluster")
                } else {
                    Need::Admin
                }
            }
            _ if under("/api/v1/orchestrator/nodes") => {
                if read {
                    Need::Read("node")
                } else {
                    Need::Admin
                }
            }
            _ if under("/api/v1/orchestrator/jobs") || under("/api/v1/orchestrator/executions") => {
                rw("job")
            }
            _ if under("/api/v1/agent") => rw("agent"),
            "/metrics" => Need::Read("metrics"),
            _ => Need::Authenticated,
        }
    }

    /// The action a 403 names.
    fn action(&self) -> String {
        match self {
            Need::Read(r) => format!("read:{r}"),
            Need::Write(r) => format!("write:{r}"),
            Need::Admin => "admin".into(),
            Need::Open | Need::Authenticated => String::new(),
        }
    }
}

/// Whether a list of actions grants `need`.
pub fn allows(actions: &[String], need: Need) -> bool {
    let has = |a: &str| actions.iter().any(|x| x == a);
    match need {
        Need::Open | Need::Authenticated => true,
        Need::Admin => has("admin"),
        Need::Read(r) => has("*") || has("read:*") || has(&format!("read:{r}")),
        Need::Write(r) => has("*") || has("write:*") || has(&format!("write:{r}")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API.Auth.Users: user {alias:?}: cannot read {path}: {source}")]
    SecretFile {
        alias: String,
        path: String,
        source: std::io::Error,
    },
    #[error("API.Auth.Users: user {alias:?}: {message}")]
    BadSecret { alias: String, message: String },
}

#[derive(Clone)]
enum Secret {
    /// SHA-256 of the API key.
    ApiKey([u8; 32]),
    /// A username with the SHA-256 of a plain password, or a bcrypt hash.
    Password {
        username: String,
        plain: Option<[u8; 32]>,
        bcrypt: Option<String>,
    },
}

#[derive(Clone)]
struct User {
    alias: String,
    secret: Secret,
    actions: Vec<String>,
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A configured user, by alias.
    User(String),
    /// No credential, allowed by the loopback rule or `AllowAnonymous`.
    Anonymous,
}

/// The API's authentication and authorisation, shared by every request.
pub struct Authorizer {
    users: Vec<User>,
    /// `""`, `"read"` or `"write"`.
    anonymous: &'static str,
    bcrypt_slots: tokio::sync::Semaphore,
    /// SHA-256 of `username \0 password` → (user index, verified at).
    verified: Mutex<HashMap<[u8; 32], (usize, Instant)>>,
    failures: Family<ReasonLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("users", &self.users.len())
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

/// How long a verified password is remembered, and how many are.
const VERIFIED_TTL: Duration = Duration::from_secs(60);
const VERIFIED_MAX: usize = 1024;

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(p);
    }
    h.finalize().into()
}

/// Equality of two digests whose time does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut d = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        d |= x ^ y;
    }
    std::hint::black_box(d) == 0
}

fn read_secret(alias: &str, path: &str) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| Error::SecretFile {
            alias: alias.to_string(),
            path: path.to_string(),
            source,
        })
}

impl Authorizer {
    /// Resolves the configured users (reading `PasswordFile`/`APIKeyFile`), checked as
    /// `Config::validate` checks inline secrets.
    pub fn new(cfg: &AuthConfig) -> Result<Authorizer, Error> {
        let mut users = Vec::new();
        for (i, u) in cfg.users.iter().enumerate() {
            let alias = if u.alias.is_empty() {
                format!("user-{i}")
            } else {
                u.alias.clone()
            };
            let bad = |message: String| Error::BadSecret {
                alias: alias.clone(),
                message,
            };
            let secret = if !u.username.is_empty() {
                let password = if u.password_file.is_empty() {
                    u.password.clone()
                } else {
                    read_secret(&alias, &u.password_file)?
                };
                caravel_model::config::check_password(&password).map_err(bad)?;
                if is_bcrypt_hash(&password) {
                    Secret::Password {
                        username: u.username.clone(),
                        plain: None,
                        bcrypt: Some(password),
                    }
                } else {
                    Secret::Password {
                        username: u.username.clone(),
                        plain: Some(digest(&[password.as_bytes()])),
                        bcrypt: None,
                    }
                }
            } else {
                let key = if u.api_key_file.is_empty() {
                    u.api_key.clone()
                } else {
                    read_secret(&alias, &u.api_key_file)?
                };
                caravel_model::config::check_api_key(&key).map_err(bad)?;
                Secret::ApiKey(digest(&[key.as_bytes()]))
            };
            users.push(User {
                alias,
                secret,
                actions: u
                    .capabilities
                    .iter()
                    .flat_map(|c| c.actions.iter().cloned())
                    .collect(),
            });
        }
        Ok(Authorizer {
            users,
            anonymous: anonymous_level(&cfg.allow_anonymous).unwrap_or(""),
            bcrypt_slots: tokio::sync::Semaphore::new(2),
            verified: Mutex::new(HashMap::new()),
            failures: Default::default(),
        })
    }

    /// With no users and no anonymous access, only loopback clients are served.
    pub fn loopback_only(&self) -> bool {
        self.users.is_empty() && self.anonymous.is_empty()
    }

    /// A warning for the start-up log, when anonymous remote clients are let in.
    pub fn warning(&self) -> Option<String> {
        match self.anonymous {
            "" => None,
            level => Some(format!(
                "API.Auth.AllowAnonymous={level}: clients without a credential may {} jobs and nodes from any host that reaches this API",
                if level == "write" {
                    "read and change"
                } else {
                    "read"
                }
            )),
        }
    }

    /// Counts refused requests by reason (`caravel_api_auth_failures_total`).
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "api_auth_failures",
            "API requests refused before their handler, by reason",
            self.failures.clone(),
        );
    }

    fn refuse(&self, reason: &'static str, err: ApiErr) -> ApiErr {
        self.failures.get_or_create(&ReasonLabel { reason }).inc();
        err
    }

    /// Authenticates a request's credential; `Ok(None)` when it carries none.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<usize>, ApiErr> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let invalid = |why: &str| {
            self.refuse(
                "invalid_credential",
                ApiErr::new(StatusCode::UNAUTHORIZED, "Unauthorized", why.to_string()).hint(
                    "check the API key (CARAVEL_API_KEY / BACALHAU_API_KEY) or the username and password (CARAVEL_API_USERNAME / CARAVEL_API_PASSWORD)",
                ),
            )
        };
        let text = value
            .to_str()
            .map_err(|_| invalid("the Authorization header is not text"))?;
        let (scheme, cred) = text.trim().split_once(' ').unwrap_or((text, ""));
        let cred = cred.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            let d = digest(&[cred.as_bytes()]);
            // Every key is compared, so the time taken does not say which one matched.
            let mut found = None;
            for (i, u) in self.users.iter().enumerate() {
                if let Secret::ApiKey(k) = &u.secret
                    && same(k, &d)
                {
                    found = Some(i);
                }
            }
            return found
                .map(Some)
                .ok_or_else(|| invalid("the API key is not valid"));
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(invalid(
                "unsupported Authorization scheme (use Basic or Bearer)",
            ));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(cred)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| invalid("the Basic credential is not base64 of username:password"))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| invalid("the Basic credential is not username:password"))?;
        let key = digest(&[username.as_bytes(), password.as_bytes()]);
        if let Some((i, at)) = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied()
            && at.elapsed() < VERIFIED_TTL
        {
            return Ok(Some(i));
        }
        let Some((i, user)) = self.users.iter().enumerate().find(
            |(_, u)| matches!(&u.secret, Secret::Password { username: n, .. } if n == username),
        ) else {
            return Err(invalid("unknown username or wrong password"));
        };
        let Secret::Password { plain, bcrypt, .. } = &user.secret else {
            return Err(invalid("unknown username or wrong password"));
        };
        let ok = match (plain, bcrypt) {
            (Some(p), _) => same(p, &digest(&[password.as_bytes()])),
            (None, Some(hash)) => {
                let _slot = self.bcrypt_slots.acquire().await.map_err(|_| {
                    ApiErr::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "ServiceUnavailable",
                        "shutting down",
                    )
                })?;
                let (hash, password) = (hash.clone(), password.to_string());
                tokio::task::spawn_blocking(move || {
                    bcrypt::verify(password, &hash).unwrap_or(false)
                })
                .await
                .unwrap_or(false)
            }
            (None, None) => false,
        };
        if !ok {
            return Err(invalid("unknown username or wrong password"));
        }
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= VERIFIED_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < VERIFIED_TTL);
            if cache.len() >= VERIFIED_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (i, Instant::now()));
        Ok(Some(i))
    }

    /// Decides a request: who calls, or the error to answer with.
    pub async fn check(
        &self,
        client: SocketAddr,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Caller, ApiErr> {
        let need = Need::of(method, path);
        let user = self.authenticate(headers).await;
        let forbidden = |who: &str, need: Need| {
            self.refuse(
                "forbidden",
                ApiErr::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!("{who} may not {} {path}: it needs the {} capability", method, need.action()),
                )
                .hint(match need {
                    Need::Admin => "admin is granted only explicitly: add \"admin\" to the user's Capabilities Actions",
                    _ => "use a credential whose Capabilities include it (API.Auth.Users)",
                }),
            )
        };
        if need == Need::Open {
            return Ok(Caller::Anonymous);
        }
        match user? {
            Some(i) => {
                let u = &self.users[i];
                if allows(&u.actions, need) {
                    Ok(Caller::User(u.alias.clone()))
                } else {
                    Err(forbidden(&format!("user {:?}", u.alias), need))
                }
            }
            None if self.users.is_empty() && client.ip().is_loopback() => Ok(Caller::Anonymous),
            None => {
                let anonymous: Vec<String> = match self.anonymous {
                    "read" => vec!["read:*".into()],
                    "write" => vec!["read:*".into(), "write:*".into()],
                    _ => vec![],
                };
                if !anonymous.is_empty() && allows(&anonymous, need) {
                    return Ok(Caller::Anonymous);
                }
                if !anonymous.is_empty() && need != Need::Authenticated {
                    return Err(forbidden("an anonymous client", need));
                }
                let (reason, message, hint) = if self.users.is_empty() {
                    (
                        "remote_without_users",
                        format!(
                            "this node serves only loopback clients: {} is not one, and no API users are configured",
                            client.ip()
                        ),
                        "configure API.Auth.Users (an APIKey or Username + Password with Capabilities) and send the credential, or set API.Auth.AllowAnonymous=read to let anonymous clients read",
                    )
                } else {
                    (
                        "missing_credential",
                        format!("{method} {path} needs a credential"),
                        "send Authorization: Bearer <API key> (CARAVEL_API_KEY or BACALHAU_API_KEY) or Basic username:password (CARAVEL_API_USERNAME and CARAVEL_API_PASSWORD)",
                    )
                };
                Err(self.refuse(
                    reason,
                    ApiErr::new(StatusCode::UNAUTHORIZED, "Unauthorized", message).hint(hint),
                ))
            }
        }
    }

    /// What anonymous clients may do, for `/api/v1/agent/authconfig`.
    pub fn anonymous_level(&self) -> &'static str {
        self.anonymous
    }
}

/// Whether a `Host` header names this machine's loopback (for a server that serves only loopback
/// clients: a page whose domain resolves to 127.0.0.1 sends its own name, and is refused).
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The authority (`host[:port]`) of an `Origin` value, or `None` for `null` and the unparsable.
fn origin_authority(origin: &str) -> Option<String> {
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    (!authority.is_empty()).then(|| authority.to_ascii_lowercase())
}

/// Whether a request's body is declared JSON.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            let t = t.trim().to_ascii_lowercase();
            t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
        })
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

impl Authorizer {
    /// The checks browsers need: a foreign `Origin` (WebSocket upgrades included), a rebinding
    /// `Host` on a loopback-only server, and writes that are not JSON.
    pub fn check_browser(
        &self,
        client: SocketAddr,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<(), ApiErr> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            let same_origin =
                origin_authority(origin).is_some_and(|a| host.as_deref().is_some_and(|h| h == a));
            if !same_origin {
                return Err(self.refuse(
                    "foreign_origin",
                    ApiErr::new(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        format!("requests from web pages of another origin ({origin}) are refused"),
                    )
                    .hint("use the caravel CLI or an API client; browsers cannot drive this API across origins"),
                ));
            }
        }
        // Rebinding is a page in a local browser reaching 127.0.0.1 under its own name: only
        // loopback clients can do it (remote ones are refused anyway, unless on open paths).
        if self.loopback_only()
            && client.ip().is_loopback()
            && let Some(h) = &host
            && !loopback_host(h)
        {
            return Err(self.refuse(
                "foreign_host",
                ApiErr::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!("this node serves only loopback clients, and the request names the host {h:?}"),
                )
                .hint("call it as 127.0.0.1 or localhost; to serve other hosts configure API.Auth.Users"),
            ));
        }
        let writes = matches!(*method, Method::PUT | Method::POST | Method::PATCH)
            || (*method == Method::DELETE && has_body(headers));
        if writes && !is_json(headers) {
            return Err(self.refuse(
                "not_json",
                ApiErr::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!("{method} needs a JSON body with Content-Type: application/json"),
                )
                .hint("send the header Content-Type: application/json"),
            ));
        }
        Ok(())
    }
}

/// How long a refused request's upload is read (and dropped) before the answer.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads what a refused client is still uploading, up to the API's body limit and for at most
/// [`DRAIN_TIME`], and drops it. Answering and closing in the middle of an upload resets the
/// connection, and the client then reports a failure to send instead of the answer (Go's net/http
/// reads an unread body before closing for the same reason). Nothing read is kept.
async fn drain(body: axum::body::Body) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut read = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > super::BODY_LIMIT {
                break;
            }
        }
    })
    .await;
}

/// The middleware: browser checks, then authentication and authorisation for the route.
pub async fn middleware(
    State(auth): State<Arc<Authorizer>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let decided = match auth.check_browser(client, req.method(), req.headers()) {
        Ok(()) => {
            auth.check(client, req.method(), req.uri().path(), req.headers())
                .await
        }
        Err(e) => Err(e),
    };
    match decided {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(client = %client, method = %req.method(), path = %req.uri().path(), status = e.status().as_u16(), reason = %e.message(), "API request refused");
            drain(req.into_body()).await;
            let unauthorized = e.status() == StatusCode::UNAUTHORIZED;
            let mut resp = e.into_response();
            if unauthorized {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"caravel\""),
                );
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravel_model::config::{AuthUser, Capability};

    fn user(alias: &str, key: &str, actions: &[&str]) -> AuthUser {
        AuthUser {
            alias: alias.into(),
            api_key: key.into(),
            capabilities: vec![Capability {
                actions: actions.iter().map(|a| a.to_string()).collect(),
            }],
            ..Default::default()
        }
    }

    fn bearer(k: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {k}").parse().unwrap(),
        );
        h
    }

    const REMOTE: SocketAddr =
        SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9)), 5000);
    const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5000);

    #[test]
    fn routes_need_bacalhaus_capabilities_and_admin_for_the_cluster() {
        use Need::*;
        let get = Method::GET;
        assert_eq!(Need::of(&get, "/api/v1/agent/alive"), Open);
        assert_eq!(Need::of(&get, "/api/v1/agent/config"), Read("agent"));
        assert_eq!(
            Need::of(&Method::PUT, "/api/v1/orchestrator/jobs"),
            Write("job")
        );
        assert_eq!(
            Need::of(&get, "/api/v1/orchestrator/jobs/j-1/logs"),
            Read("job")
        );
        assert_eq!(
            Need::of(&get, "/api/v1/orchestrator/executions/e-1/result"),
            Read("job")
        );
        assert_eq!(Need::of(&get, "/api/v1/orchestrator/nodes"), Read("node"));
        assert_eq!(Need::of(&Method::PUT, "/api/v1/orchestrator/nodes"), Admin);
        assert_eq!(Need::of(&get, "/api/v1/orchestrator/snapshot"), Admin);
        assert_eq!(
            Need::of(&Method::DELETE, "/api/v1/orchestrator/cluster/members/x"),
            Admin
        );
        assert_eq!(
            Need::of(&get, "/api/v1/orchestrator/cluster"),
            Read("cluster")
        );
        assert_eq!(
            Need::of(&Method::POST, "/api/v1/orchestrator/tokens"),
            Admin
        );
        assert_eq!(Need::of(&get, "/metrics"), Read("metrics"));
        assert_eq!(Need::of(&get, "/api/v1/orchestrator/jobsx"), Authenticated);
        let star = vec!["*".to_string()];
        assert!(allows(&star, Write("job")) && allows(&star, Read("metrics")));
        assert!(!allows(&star, Admin), "* never implies admin");
        assert!(!allows(&["write:*".into()], Read("job")));
        assert!(allows(&["admin".into()], Admin));
    }

    #[tokio::test]
    async fn keys_are_checked_and_capabilities_enforced() {
        let a = Authorizer::new(&AuthConfig {
            users: vec![
                user("ci", &"c".repeat(24), &["read:job", "write:job"]),
                user("ops", &"o".repeat(24), &["*", "admin"]),
            ],
            allow_anonymous: String::new(),
        })
        .unwrap();
        let put = Method::PUT;
        let jobs = "/api/v1/orchestrator/jobs";
        assert!(matches!(
            a.check(REMOTE, &put, jobs, &bearer(&"c".repeat(24))).await,
            Ok(Caller::User(u)) if u == "ci"
        ));
        let e = a
            .check(
                REMOTE,
                &Method::GET,
                "/api/v1/orchestrator/snapshot",
                &bearer(&"c".repeat(24)),
            )
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        let e = a
            .check(REMOTE, &put, jobs, &bearer("nope-nope-nope-nope-x"))
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        // With users configured, loopback needs a credential too.
        let e = a
            .check(LOCAL, &put, jobs, &HeaderMap::new())
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert!(
            a.check(
                LOCAL,
                &Method::GET,
                "/api/v1/agent/alive",
                &HeaderMap::new()
            )
            .await
            .is_ok()
        );
    }

    #[tokio::test]
    async fn passwords_plain_and_bcrypt_work_and_are_remembered() {
        let hash = bcrypt::hash("s3cret-password", 4).unwrap();
        let mk = |name: &str, pw: &str| AuthUser {
            alias: name.into(),
            username: name.into(),
            password: pw.into(),
            capabilities: vec![Capability {
                actions: vec!["read:*".into()],
            }],
            ..Default::default()
        };
        let a = Authorizer::new(&AuthConfig {
            users: vec![mk("plain", "plain-password"), mk("hashed", &hash)],
            allow_anonymous: String::new(),
        })
        .unwrap();
        let basic = |u: &str, p: &str| {
            let mut h = HeaderMap::new();
            let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            h.insert(header::AUTHORIZATION, format!("Basic {v}").parse().unwrap());
            h
        };
        let get = Method::GET;
        let path = "/api/v1/orchestrator/jobs";
        assert!(
            a.check(REMOTE, &get, path, &basic("plain", "plain-password"))
                .await
                .is_ok()
        );
        assert!(
            a.check(REMOTE, &get, path, &basic("hashed", "s3cret-password"))
                .await
                .is_ok()
        );
        assert!(
            a.check(REMOTE, &get, path, &basic("hashed", "s3cret-password"))
                .await
                .is_ok()
        );
        assert_eq!(a.verified.lock().unwrap().len(), 2);
        let e = a
            .check(REMOTE, &get, path, &basic("hashed", "wrong-password"))
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        let e = a
            .check(REMOTE, &get, path, &basic("nobody", "plain-password"))
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn without_users_only_loopback_is_served_unless_anonymous_is_allowed() {
        let none = Authorizer::new(&AuthConfig::default()).unwrap();
        let put = Method::PUT;
        let jobs = "/api/v1/orchestrator/jobs";
        assert!(
            none.check(LOCAL, &put, jobs, &HeaderMap::new())
                .await
                .is_ok()
        );
        assert!(
            none.check(
                LOCAL,
                &Method::GET,
                "/api/v1/orchestrator/snapshot",
                &HeaderMap::new()
            )
            .await
            .is_ok()
        );
        let e = none
            .check(REMOTE, &Method::GET, jobs, &HeaderMap::new())
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert!(
            e.hint_text().contains("API.Auth.Users"),
            "{}",
            e.hint_text()
        );
        let read = Authorizer::new(&AuthConfig {
            users: vec![],
            allow_anonymous: "read".into(),
        })
        .unwrap();
        assert!(read.warning().is_some());
        assert!(
            read.check(REMOTE, &Method::GET, jobs, &HeaderMap::new())
                .await
                .is_ok()
        );
        let e = read
            .check(REMOTE, &put, jobs, &HeaderMap::new())
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        let write = Authorizer::new(&AuthConfig {
            users: vec![],
            allow_anonymous: "write".into(),
        })
        .unwrap();
        assert!(
            write
                .check(REMOTE, &put, jobs, &HeaderMap::new())
                .await
                .is_ok()
        );
        let e = write
            .check(
                REMOTE,
                &Method::POST,
                "/api/v1/orchestrator/cluster/members",
                &HeaderMap::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            e.status(),
            StatusCode::FORBIDDEN,
            "anonymous is never admin"
        );
    }

    #[test]
    fn browsers_cannot_post_across_origins_rebind_or_send_forms() {
        let a = Authorizer::new(&AuthConfig::default()).unwrap();
        let h = |pairs: &[(header::HeaderName, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(k.clone(), v.parse().unwrap());
            }
            m
        };
        let json = (header::CONTENT_TYPE, "application/json");
        let host = (header::HOST, "127.0.0.1:1234");
        assert!(
            a.check_browser(LOCAL, &Method::PUT, &h(&[json.clone(), host.clone()]))
                .is_ok()
        );
        let e = a
            .check_browser(
                LOCAL,
                &Method::POST,
                &h(&[(header::CONTENT_TYPE, "text/plain"), host.clone()]),
            )
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let e = a
            .check_browser(
                LOCAL,
                &Method::PUT,
                &h(&[
                    json.clone(),
                    host.clone(),
                    (header::ORIGIN, "http://evil.example"),
                ]),
            )
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert!(
            a.check_browser(
                LOCAL,
                &Method::GET,
                &h(&[host.clone(), (header::ORIGIN, "http://127.0.0.1:1234")])
            )
            .is_ok(),
            "a page of the API's own origin is fine"
        );
        let e = a
            .check_browser(
                LOCAL,
                &Method::GET,
                &h(&[(header::HOST, "rebind.evil.example:1234")]),
            )
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        for ok in ["localhost:1234", "[::1]:1234", "127.0.0.2", "LOCALHOST"] {
            assert!(
                a.check_browser(LOCAL, &Method::GET, &h(&[(header::HOST, ok)]))
                    .is_ok(),
                "{ok}"
            );
        }
        assert!(
            a.check_browser(LOCAL, &Method::DELETE, &h(std::slice::from_ref(&host)))
                .is_ok(),
            "a DELETE without a body needs no content type"
        );
    }
}
