//! The REST API client. Errors say what was wrong and what to do next.

use anyhow::{Context, anyhow};
use caravel_model::api::ApiError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Global;

#[derive(Debug, Clone)]
pub struct ApiClient {
    pub base: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        Self::with_stale_reads(base, false)
    }

    /// A client whose reads may be served from the answering member's replica without a
    /// read-index round trip (`--stale`): faster, works without quorum, may miss recent writes.
    pub fn with_stale_reads(base: &str, stale: bool) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if stale {
            headers.insert(
                "x-caravel-stale-reads",
                reqwest::header::HeaderValue::from_static("true"),
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .default_headers(headers)
            .build()
            .unwrap_or_default();
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    /// `--api-host`/`--api-port` (or CARAVEL_API_HOST/PORT), default `http://127.0.0.1:1234`.
    pub fn from_global(g: &Global) -> Self {
        let host = g.api_host.clone().unwrap_or_else(|| "127.0.0.1".into());
        let port = g.api_port.unwrap_or(1234);
        if host.starts_with("http://") || host.starts_with("https://") {
            return Self::with_stale_reads(&host, g.stale);
        }
        let host = if host == "0.0.0.0" {
            "127.0.0.1".to_string()
        } else {
            host
        };
        Self::with_stale_reads(&format!("http://{host}:{port}"), g.stale)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach the Caravel API at {}: {e}\nhint: is a node running? Start one with `caravel serve --orchestrator --compute`, or point --api-host/--api-port at one",
            self.base
        )
    }

    async fn handle<T: DeserializeOwned>(
        &self,
        resp: Result<reqwest::Response, reqwest::Error>,
    ) -> anyhow::Result<T> {
        let resp = resp.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ApiError>(&body) {
                Ok(e) => anyhow!("{e}"),
                Err(_) => anyhow!(
                    "the API answered {status}: {}",
                    String::from_utf8_lossy(&body)
                ),
            });
        }
        serde_json::from_slice(&body).with_context(|| {
            format!("the API's answer is not what this client expects (status {status})")
        })
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.handle(self.http.get(self.url(path)).query(query).send().await)
            .await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.handle(self.http.put(self.url(path)).json(body).send().await)
            .await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.handle(self.http.post(self.url(path)).json(body).send().await)
            .await
    }

    pub async fn delete<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.handle(self.http.delete(self.url(path)).json(body).send().await)
            .await
    }

    /// Downloads a URL into memory (results archives), with a timeout.
    pub async fn download(
        &self,
        url: &str,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Vec<u8>> {
        let resp = self
            .http
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| anyhow!("downloading {url}: {e}"))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| anyhow!("downloading {url}: {e}"))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ApiError>(&body) {
                Ok(e) => anyhow!("downloading {url}: {e}"),
                Err(_) => anyhow!("downloading {url}: {status}"),
            });
        }
        Ok(body.to_vec())
    }

    /// The WebSocket URL of a path.
    pub fn ws_url(&self, path: &str) -> String {
        let base = self
            .base
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        format!("{base}{path}")
    }
}
