//! The REST API client. Errors say what was wrong and what to do next.
//!
//! Credentials come from the environment, as Bacalhau's CLI reads them: an API key
//! (`CARAVEL_API_KEY`, `BACALHAU_API_KEY`, or a file in `CARAVEL_API_KEY_FILE`) sent as
//! `Authorization: Bearer`, else a username and password (`CARAVEL_API_USERNAME` /
//! `CARAVEL_API_PASSWORD`, or the `BACALHAU_` names) sent as Basic. They go only to the API's own
//! address — never to a result URL on another host. HTTPS: `--tls` (or an `https://` host),
//! `--cacert FILE`, `--insecure`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};

/// How long a write keeps being sent again while the cluster has no leader (a failover takes
/// seconds; a lost quorum is reported once this is over).
pub const NO_LEADER_WAIT: Duration = Duration::from_secs(30);
/// How long a read keeps retrying while the cluster has no leader.
pub const NO_LEADER_READ_WAIT: Duration = Duration::from_secs(10);
use caravel_model::api::ApiError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Global;

/// The credential a client sends.
#[derive(Clone, Default)]
pub struct ClientAuth {
    api_key: Option<(String, &'static str)>,
    basic: Option<(String, String, &'static str)>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl ClientAuth {
    /// From `CARAVEL_*` (first) or `BACALHAU_*` environment variables.
    pub fn from_env() -> anyhow::Result<ClientAuth> {
        let mut a = ClientAuth::default();
        if let Some(f) = env("CARAVEL_API_KEY_FILE") {
            let k = std::fs::read_to_string(&f)
                .with_context(|| format!("CARAVEL_API_KEY_FILE: cannot read {f}"))?;
            a.api_key = Some((k.trim().to_string(), "CARAVEL_API_KEY_FILE"));
        } else if let Some(k) = env("CARAVEL_API_KEY") {
            a.api_key = Some((k.trim().to_string(), "CARAVEL_API_KEY"));
        } else if let Some(k) = env("BACALHAU_API_KEY") {
            a.api_key = Some((k.trim().to_string(), "BACALHAU_API_KEY"));
        }
        for (prefix, name) in [
            ("CARAVEL", "CARAVEL_API_USERNAME"),
            ("BACALHAU", "BACALHAU_API_USERNAME"),
        ] {
            if let Some(u) = env(&format!("{prefix}_API_USERNAME")) {
                let p = env(&format!("{prefix}_API_PASSWORD")).unwrap_or_default();
                a.basic = Some((u, p, name));
                break;
            }
        }
        Ok(a)
    }

    /// The `Authorization` value, if any (an API key wins over a username, as in Bacalhau).
    fn header(&self) -> Option<reqwest::header::HeaderValue> {
        use base64::Engine;
        let text = match (&self.api_key, &self.basic) {
            (Some((k, _)), _) => format!("Bearer {k}"),
            (None, Some((u, p, _))) => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            ),
            (None, None) => return None,
        };
        let mut v = reqwest::header::HeaderValue::from_str(&text).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// What would be sent, without the secret (for `auth info` and errors).
    pub fn describe(&self) -> String {
        match (&self.api_key, &self.basic) {
            (Some((_, from)), _) => format!("an API key (Bearer) from {from}"),
            (None, Some((u, _, from))) => {
                format!("username {u:?} with a password (Basic) from {from}")
            }
            (None, None) => "no credential".into(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.api_key.is_none() && self.basic.is_none()
    }
}

/// How the client reaches an HTTPS API.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub use_tls: bool,
    pub ca_file: Option<String>,
    pub insecure: bool,
}

impl ClientTls {
    /// A rustls config: the CA file's roots, else the system's; `insecure` accepts any
    /// certificate (tests only).
    pub fn rustls_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        if self.insecure {
            return Ok(builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
                .with_no_client_auth());
        }
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(f) => {
                use rustls::pki_types::pem::PemObject;
                let pem = std::fs::read(f).with_context(|| format!("--cacert: cannot read {f}"))?;
                for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                    roots
                        .add(c.with_context(|| format!("--cacert {f} is not PEM"))?)
                        .with_context(|| format!("--cacert {f}"))?;
                }
                if roots.is_empty() {
                    anyhow::bail!("--cacert {f} holds no certificate");
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        Ok(builder.with_root_certificates(roots).with_no_client_auth())
    }
}

/// Accepts any server certificate (`--insecure`); handshake signatures are still checked.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[derive(Debug, Clone)]
pub struct ApiClient {
    pub base: String,
    http: reqwest::Client,
    auth: ClientAuth,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        Self::with_stale_reads(base, false)
    }

    /// A client whose reads may be served from the answering member's replica without a
    /// read-index round trip (`--stale`): faster, works without quorum, may miss recent writes.
    pub fn with_stale_reads(base: &str, stale: bool) -> Self {
        Self::build(base, stale, ClientAuth::default(), None)
    }

    /// A client with a credential (devstack, tests: the operator's key).
    pub fn with_auth(base: &str, auth: ClientAuth) -> Self {
        Self::build(base, false, auth, None)
    }

    /// A client that sends an API key (tests, devstack with auth).
    pub fn with_api_key(base: &str, key: &str) -> Self {
        Self::with_auth(
            base,
            ClientAuth {
                api_key: Some((key.to_string(), "the caller")),
                basic: None,
            },
        )
    }

    fn build(
        base: &str,
        stale: bool,
        auth: ClientAuth,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        Self::build_with(base, stale, auth, tls, None)
    }

    /// [`Self::build`], with a timeout on each read of an answer (a profile's `timeout`).
    fn build_with(
        base: &str,
        stale: bool,
        auth: ClientAuth,
        tls: Option<Arc<rustls::ClientConfig>>,
        read_timeout: Option<std::time::Duration>,
    ) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if stale {
            headers.insert(
                "x-caravel-stale-reads",
                reqwest::header::HeaderValue::from_static("true"),
            );
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .default_headers(headers);
        if let Some(t) = &tls {
            b = b.tls_backend_preconfigured((**t).clone());
        }
        if let Some(t) = read_timeout {
            b = b.read_timeout(t);
        }
        let http = b.build().unwrap_or_default();
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            http,
            auth,
            tls,
        }
    }

    /// `--api-host`/`--api-port` (or CARAVEL_API_HOST/PORT), default `http://127.0.0.1:1234`;
    /// https with `--tls` or an `https://` host.
    pub fn from_global(g: &Global) -> anyhow::Result<Self> {
        // A profile gives what the flags and the environment do not (Bacalhau's precedence).
        let profile = crate::profile::active(g)?;
        let explicit = g.api_host.is_some() || g.api_port.is_some();
        let mut tls = ClientTls {
            use_tls: g.tls,
            ca_file: g.cacert.clone(),
            insecure: g.insecure,
        };
        let mut auth = ClientAuth::from_env()?;
        let mut read_timeout = None;
        let mut host = g.api_host.clone().unwrap_or_else(|| "127.0.0.1".into());
        if let Some(p) = &profile {
            if !explicit && !p.endpoint.is_empty() {
                host = p.endpoint.clone();
            }
            tls.insecure |= p.tls.insecure;
            if auth.is_empty() && !p.auth.token.is_empty() {
                auth.api_key = Some((p.auth.token.clone(), "the client profile"));
            }
            if !p.timeout.is_empty() {
                read_timeout = crate::job::go_secs(&p.timeout)
                    .ok()
                    .filter(|s| *s > 0)
                    .map(std::time::Duration::from_secs);
            }
        }
        let port = g.api_port.unwrap_or(1234);
        let base = if host.starts_with("http://") || host.starts_with("https://") {
            host
        } else {
            let host = if host == "0.0.0.0" {
                "127.0.0.1".to_string()
            } else {
                host
            };
            let scheme = if tls.use_tls || tls.ca_file.is_some() || tls.insecure {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}:{port}")
        };
        let rustls = if base.starts_with("https://") {
            Some(Arc::new(tls.rustls_config()?))
        } else {
            None
        };
        Ok(Self::build_with(&base, g.stale, auth, rustls, read_timeout))
    }

    /// The credential this client sends.
    pub fn auth(&self) -> &ClientAuth {
        &self.auth
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to the API, with the credential.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, self.url(path));
        if let Some(h) = self.auth.header() {
            r = r.header(reqwest::header::AUTHORIZATION, h);
        }
        r
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach the Caravel API at {}: {e}\nhint: is a node running? Start one with `caravel serve --orchestrator --compute`, or point --api-host/--api-port at one{}",
            self.base,
            if self.base.starts_with("https://") {
                " (for a self-signed API certificate give --cacert FILE)"
            } else {
                ""
            }
        )
    }

    /// Sends a request, retrying while the cluster has no leader: a `503` with `Retry-After` is
    /// tried again after that many seconds (1–5) — a read for up to [`NO_LEADER_READ_WAIT`], a
    /// write for up to [`NO_LEADER_WAIT`] and only when the API says it was not applied
    /// (`Details.Outcome: NotApplied`), so a write whose outcome is unknown is never sent twice.
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let started = std::time::Instant::now();
        let read = method == reqwest::Method::GET;
        let window = if read {
            NO_LEADER_READ_WAIT
        } else {
            NO_LEADER_WAIT
        };
        let mut told = false;
        loop {
            let resp = build(self.request(method.clone(), path))
                .send()
                .await
                .map_err(|e| self.unreachable(e))?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let body = resp.bytes().await.map_err(|e| self.unreachable(e))?;
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                && let Some(secs) = retry_after
                && started.elapsed() < window
            {
                let err = serde_json::from_slice::<ApiError>(&body).ok();
                let not_applied = err.as_ref().is_some_and(|e| {
                    e.details.get("Outcome").and_then(|v| v.as_str()) == Some("NotApplied")
                });
                if read || not_applied {
                    if !told {
                        eprintln!(
                            "the cluster has no leader right now ({}); retrying for up to {} s…",
                            err.map_or_else(|| status.to_string(), |e| e.message),
                            window.as_secs()
                        );
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_secs(secs.clamp(1, 5))).await;
                    continue;
                }
            }
            return self.handle(status, &body);
        }
    }

    fn handle<T: DeserializeOwned>(
        &self,
        status: reqwest::StatusCode,
        body: &[u8],
    ) -> anyhow::Result<T> {
        if !status.is_success() {
            let mut err = match serde_json::from_slice::<ApiError>(body) {
                Ok(e) => anyhow!("{e}"),
                Err(_) => anyhow!(
                    "the API answered {status}: {}",
                    String::from_utf8_lossy(body)
                ),
            };
            if status == reqwest::StatusCode::UNAUTHORIZED {
                err = err.context(format!("this client sent {}", self.auth.describe()));
            }
            return Err(err);
        }
        serde_json::from_slice(body).with_context(|| {
            format!("the API's answer is not what this client expects (status {status})")
        })
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.call(reqwest::Method::GET, path, |r| r.query(query))
            .await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.call(reqwest::Method::PUT, path, |r| r.json(body))
            .await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.call(reqwest::Method::POST, path, |r| r.json(body))
            .await
    }

    pub async fn delete<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.call(reqwest::Method::DELETE, path, |r| r.json(body))
            .await
    }

    /// Streams a download into the file `dest` (replaced only once complete), never holding the body in
    /// memory, and refuses bodies over `max_bytes`. Returns the bytes written. The credential goes only to
    /// this client's own API, never to another host (a bucket's pre-signed URL, say).
    pub async fn download_to(
        &self,
        url: &str,
        timeout: std::time::Duration,
        dest: &std::path::Path,
        max_bytes: u64,
    ) -> anyhow::Result<u64> {
        use tokio::io::AsyncWriteExt;
        let mut req = self.http.get(url).timeout(timeout);
        if url.starts_with(&format!("{}/", self.base))
            && let Some(h) = self.auth.header()
        {
            req = req.header(reqwest::header::AUTHORIZATION, h);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| anyhow!("downloading {url}: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(match serde_json::from_slice::<ApiError>(&body) {
                Ok(e) => anyhow!("downloading {url}: {e}"),
                Err(_) => anyhow!("downloading {url}: {status}"),
            });
        }
        let part = dest.with_extension("part");
        let mut file = tokio::fs::File::create(&part)
            .await
            .with_context(|| format!("cannot create {}", part.display()))?;
        let mut written: u64 = 0;
        let copied: anyhow::Result<()> = async {
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| anyhow!("downloading {url}: {e}"))?
            {
                written += chunk.len() as u64;
                if written > max_bytes {
                    anyhow::bail!(
                        "downloading {url}: the body is over {}",
                        caravel_model::quantity::format_bytes(max_bytes)
                    );
                }
                file.write_all(&chunk)
                    .await
                    .with_context(|| format!("writing {}", part.display()))?;
            }
            file.sync_all().await?;
            Ok(())
        }
        .await;
        drop(file);
        if let Err(e) = copied {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
        tokio::fs::rename(&part, dest)
            .await
            .with_context(|| format!("cannot write {}", dest.display()))?;
        Ok(written)
    }

    /// The WebSocket URL of a path.
    pub fn ws_url(&self, path: &str) -> String {
        let base = self
            .base
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        format!("{base}{path}")
    }

    /// Opens a WebSocket to the API (logs), with the credential, over TLS when the API is https.
    pub async fn websocket(
        &self,
        url: &str,
    ) -> anyhow::Result<
        tokio_tungstenite::WebSocketStream<
            tokio_util::either::Either<
                tokio::net::TcpStream,
                tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
            >,
        >,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url
            .into_client_request()
            .map_err(|e| anyhow!("bad WebSocket URL {url}: {e}"))?;
        if let Some(h) = self.auth.header()
            && let Ok(v) =
                tokio_tungstenite::tungstenite::http::HeaderValue::from_bytes(h.as_bytes())
        {
            req.headers_mut().insert("authorization", v);
        }
        let u = url::Url::parse(url)?;
        let host = u
            .host_str()
            .context("the WebSocket URL has no host")?
            .to_string();
        let port = u.port_or_known_default().unwrap_or(80);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| anyhow!("cannot connect to {host}:{port}: {e}"))?;
        let io = match (&self.tls, u.scheme()) {
            (Some(cfg), "wss") => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| anyhow!("{host} is not a server name: {e}"))?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| anyhow!("TLS with {host}:{port} failed: {e}"))?;
                tokio_util::either::Either::Right(tls)
            }
            _ => tokio_util::either::Either::Left(tcp),
        };
        let (ws, _) = tokio_tungstenite::client_async(req, io)
            .await
            .map_err(|e| anyhow!("cannot open the WebSocket at {url}: {e}"))?;
        Ok(ws)
    }
}
