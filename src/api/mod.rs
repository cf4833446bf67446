//! The REST API: Bacalhau's v1 paths and JSON bodies (reference §2) on axum, plus `GET /metrics`.
//! Errors use Bacalhau's `APIError` body with a stable `Code` and a `Hint`; a user mistake is a 4xx,
//! never a 500; no quorum is a 503 with `Retry-After`.

mod agent;
pub mod auth;
pub mod cluster;
mod jobs;
pub mod limits;
pub mod listener;
mod nodes;
mod tokens;

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use caravel_model::api::ApiError;
use caravel_model::config::Config;
use caravel_model::node::NodeInfo;

use crate::orchestrator::{Cluster, WriteError};

/// Largest request body, as Bacalhau's.
pub const BODY_LIMIT: usize = 10 << 20;

/// What every handler reads. axum clones the state for every request (once per middleware layer
/// and handler), so it is one `Arc`: a clone of the node's `Config` and `NodeInfo` per request was a
/// tenth of a busy orchestrator's CPU.
#[derive(Clone, Debug)]
pub struct ApiState(std::sync::Arc<ApiShared>);

impl ApiState {
    pub fn new(shared: ApiShared) -> Self {
        ApiState(std::sync::Arc::new(shared))
    }
}

impl std::ops::Deref for ApiState {
    type Target = ApiShared;
    fn deref(&self) -> &ApiShared {
        &self.0
    }
}

#[derive(Debug)]
pub struct ApiShared {
    pub cluster: Cluster,
    pub node_info: NodeInfo,
    pub config: Config,
    pub auth: std::sync::Arc<auth::Authorizer>,
    pub limits: std::sync::Arc<limits::Limits>,
    /// SHA-256 of the cluster CA's certificate (join tokens pin it); `None` without TLS.
    pub ca_fingerprint: Option<String>,
}

/// Liveness (`/livez`, `/api/v1/agent/alive`): the process answers.
pub use agent::alive;

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/agent/alive", get(agent::alive))
        .route("/api/v1/agent/version", get(agent::version))
        .route("/api/v1/agent/node", get(agent::node))
        .route("/api/v1/agent/config", get(agent::config))
        .route("/api/v1/agent/authconfig", get(agent::authconfig))
        .route(
            "/api/v1/orchestrator/jobs",
            get(jobs::list).put(jobs::submit).post(jobs::submit),
        )
        .route(
            "/api/v1/orchestrator/jobs/{id}",
            get(jobs::get).delete(jobs::stop),
        )
        .route(
            "/api/v1/orchestrator/jobs/diff",
            axum::routing::put(jobs::diff).post(jobs::diff),
        )
        .route("/api/v1/orchestrator/jobs/{id}/history", get(jobs::history))
        .route(
            "/api/v1/orchestrator/jobs/{id}/versions",
            get(jobs::versions),
        )
        .route(
            "/api/v1/orchestrator/jobs/{id}/rerun",
            axum::routing::put(jobs::rerun).post(jobs::rerun),
        )
        .route(
            "/api/v1/orchestrator/jobs/{id}/executions",
            get(jobs::executions),
        )
        .route("/api/v1/orchestrator/jobs/{id}/results", get(jobs::results))
        .route("/api/v1/orchestrator/jobs/{id}/logs", get(jobs::logs))
        .route(
            "/api/v1/orchestrator/executions/{id}/result",
            get(jobs::download_result),
        )
        .route(
            "/api/v1/orchestrator/nodes",
            get(nodes::list).put(nodes::update),
        )
        .route(
            "/api/v1/orchestrator/nodes/{id}",
            get(nodes::get).put(nodes::update_by_id),
        )
        .route(
            "/api/v1/orchestrator/tokens",
            get(tokens::list).post(tokens::create),
        )
        .route(
            "/api/v1/orchestrator/tokens/{id}",
            axum::routing::delete(tokens::delete),
        )
        .route(
            "/api/v1/orchestrator/revocations",
            get(tokens::revocations).post(tokens::revoke),
        )
        .route("/api/v1/orchestrator/cluster", get(cluster::status))
        .route(
            "/api/v1/orchestrator/cluster/members",
            axum::routing::post(cluster::add_member),
        )
        .route(
            "/api/v1/orchestrator/cluster/members/{id}",
            axum::routing::delete(cluster::remove_member),
        )
        .route("/api/v1/orchestrator/snapshot", get(cluster::snapshot))
        .route("/metrics", get(metrics))
        .route("/livez", get(agent::alive))
        .route("/readyz", get(agent::ready))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.limits.clone(),
            limits::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn metrics(State(s): State<ApiState>, headers: axum::http::HeaderMap) -> Response {
    let body = s.cluster.metrics().render(&s.cluster);
    crate::metrics::exposition::respond(&headers, body)
}

async fn not_found(req: Request) -> ApiErr {
    ApiErr::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
    .hint("check the path; the server may be older than the CLI")
}

/// Whether the client opted into reads from this member's replica without a read-index round
/// trip: header `X-Caravel-Stale-Reads: true` or query parameter `stale=true`. Such reads may miss
/// the latest writes (by at most the replication lag shown in `caravel cluster status`).
fn stale_requested(req: &Request) -> bool {
    let yes = |v: &str| v.eq_ignore_ascii_case("true") || v == "1";
    req.headers()
        .get("x-caravel-stale-reads")
        .and_then(|v| v.to_str().ok())
        .is_some_and(yes)
        || req.uri().query().is_some_and(|q| {
            q.split('&').any(|kv| {
                kv.split_once('=')
                    .is_some_and(|(k, v)| k == "stale" && yes(v))
            })
        })
}

/// Counts and times every request by its route template, and adds Bacalhau's version headers.
async fn observe(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    // Metric labels come from closed sets: any other method a client invents is "other".
    let method = match req.method().as_str() {
        m @ ("GET" | "PUT" | "POST" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH") => m,
        _ => "other",
    }
    .to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let stale = stale_requested(&req);
    let mut resp = crate::orchestrator::STALE_READS
        .scope(stale, next.run(req))
        .await;
    s.cluster
        .metrics()
        .observe_request(&method, &route, resp.status().as_u16(), started.elapsed());
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("v{}", caravel_model::VERSION)) {
        h.insert("X-Bacalhau-Git-Version", v);
    }
    resp
}

/// An API error in Bacalhau's shape.
#[derive(Debug)]
pub struct ApiErr {
    status: StatusCode,
    code: &'static str,
    message: String,
    hint: String,
    details: std::collections::BTreeMap<String, serde_json::Value>,
    retry_after: Option<u64>,
}

impl ApiErr {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiErr {
            status,
            code,
            message: message.into(),
            hint: String::new(),
            details: Default::default(),
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }
    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = h.into();
        self
    }
    pub fn status(&self) -> StatusCode {
        self.status
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn hint_text(&self) -> &str {
        &self.hint
    }
    /// Adds `Retry-After: secs` to the response.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    pub fn detail(mut self, k: &str, v: serde_json::Value) -> Self {
        self.details.insert(k.into(), v);
        self
    }
}

/// `Details` key of a 503 answer to a write: [`OUTCOME_NOT_APPLIED`] (no leader took it: sending
/// it again is safe) or [`OUTCOME_UNKNOWN`] (it may still commit: check before sending again).
pub const OUTCOME_DETAIL: &str = "Outcome";
pub const OUTCOME_NOT_APPLIED: &str = "NotApplied";
pub const OUTCOME_UNKNOWN: &str = "Unknown";

impl From<WriteError> for ApiErr {
    fn from(e: WriteError) -> Self {
        let mut err = match &e {
            WriteError::Fatal(_) => ApiErr::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            ),
            WriteError::Refused(_) => ApiErr::new(StatusCode::CONFLICT, "Conflict", e.to_string()),
            WriteError::Unknown(_) => ApiErr::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                e.to_string(),
            )
            .hint("the outcome is unknown: check (e.g. caravel job list) before retrying"),
            _ => ApiErr::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                e.to_string(),
            )
            .hint("the orchestrators have no quorum or no leader right now; retry shortly"),
        };
        if err.status == StatusCode::SERVICE_UNAVAILABLE {
            err.retry_after = Some(1);
            // Whether a client may send the write again: only when it surely was not proposed.
            let outcome = match e {
                WriteError::NoLeader(_) => OUTCOME_NOT_APPLIED,
                _ => OUTCOME_UNKNOWN,
            };
            err = err.detail(OUTCOME_DETAIL, serde_json::Value::from(outcome));
        }
        err
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let body = ApiError {
            status: self.status.as_u16(),
            message: self.message,
            request_id: caravel_model::ids::new_evaluation_id(),
            code: self.code.to_string(),
            component: "APIServer".into(),
            hint: self.hint,
            details: self.details,
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Query parameters whose parse errors answer in Bacalhau's error shape (axum's own rejection is
/// plain text).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiErr;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let query = go_query(parts.uri.query().unwrap_or_default())?;
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize::<_, T>(de).map(ApiQuery).map_err(|e| {
            ApiErr::bad_request(format!("invalid query parameters: {}: {}", e.path(), e.inner()))
                .hint("check the parameter names and values (e.g. limit is a number, reverse is true or false)")
        })
    }
}

/// Query parameters that are booleans: Go's server reads them with `strconv.ParseBool`.
const BOOL_PARAMS: &[&str] = &["reverse", "all_job_versions", "follow", "tail", "local"];

/// Rewrites a query string as Bacalhau's Go server reads it: booleans in every spelling
/// `strconv.ParseBool` takes (`1`, `t`, `True`, `FALSE`…), repeated `labels` joined into one
/// selector (each is a requirement), and of any other repeated parameter the first (Go's
/// `Query().Get`).
pub fn go_query(raw: &str) -> Result<String, ApiErr> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw).map_err(|e| {
        ApiErr::bad_request(format!("invalid query string: {e}"))
            .hint("encode the parameters as key=value pairs joined by &")
    })?;
    let mut out: Vec<(String, String)> = Vec::with_capacity(pairs.len());
    for (k, mut v) in pairs {
        if BOOL_PARAMS.contains(&k.as_str()) {
            v = match caravel_model::parse::go_parse_bool(&v) {
                Some(b) => b.to_string(),
                None => {
                    return Err(ApiErr::bad_request(format!(
                        "invalid query parameters: {k}={v:?} is not a boolean"
                    ))
                    .hint(format!("give {k}=true or {k}=false (1, t, T, TRUE, True and their opposites are accepted)")));
                }
            };
        }
        match out.iter_mut().find(|(seen, _)| *seen == k) {
            Some((_, first)) if k == "labels" => {
                if !v.trim().is_empty() {
                    if !first.trim().is_empty() {
                        first.push(',');
                    }
                    first.push_str(&v);
                }
            }
            Some(_) => {}
            None => out.push((k, v)),
        }
    }
    serde_urlencoded::to_string(&out).map_err(|e| ApiErr::bad_request(e.to_string()))
}

/// Parses a JSON body into our error shape (axum's own rejection is plain text).
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiErr> {
    serde_json::from_slice(body).map_err(|e| {
        ApiErr::bad_request(format!("the request body is not valid JSON: {e}"))
            .hint("send a JSON document")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_booleans_and_repeated_labels_read_as_go_reads_them() {
        for (t, f) in [
            ("1", "0"),
            ("t", "f"),
            ("T", "F"),
            ("True", "False"),
            ("TRUE", "FALSE"),
        ] {
            assert_eq!(go_query(&format!("reverse={t}")).unwrap(), "reverse=true");
            assert_eq!(go_query(&format!("follow={f}")).unwrap(), "follow=false");
        }
        let e = go_query("reverse=yes").unwrap_err();
        assert!(
            e.message.contains("reverse=\"yes\" is not a boolean"),
            "{}",
            e.message
        );
        // `limit=1` is a number, not a boolean.
        assert_eq!(go_query("limit=1").unwrap(), "limit=1");
        assert_eq!(
            go_query("labels=a%3Db&labels=c+in+%28x%2Cy%29&labels=").unwrap(),
            "labels=a%3Db%2Cc+in+%28x%2Cy%29"
        );
        assert_eq!(go_query("limit=5&limit=9").unwrap(), "limit=5");
        assert_eq!(go_query("").unwrap(), "");
    }
}
