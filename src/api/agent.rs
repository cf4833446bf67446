//! `/api/v1/agent/*`: liveness, version, this node's info and its (redacted) config.

use axum::Json;
use axum::extract::State;
use caravel_model::api::AliveResponse;
use caravel_model::node::BuildVersionInfo;

use super::ApiState;

pub async fn alive() -> Json<AliveResponse> {
    Json(AliveResponse {
        status: "OK".into(),
    })
}

pub async fn version() -> Json<BuildVersionInfo> {
    Json(BuildVersionInfo::current())
}

pub async fn node(State(s): State<ApiState>) -> Json<caravel_model::NodeInfo> {
    Json(s.node_info.clone())
}

/// The effective config with every secret redacted (Bacalhau's lower-case `config` key).
pub async fn config(State(s): State<ApiState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "config": s.config.redacted() }))
}

/// Bacalhau v1.7+ `/api/v1/agent/authconfig`: the SSO settings a client may use (Caravel has no
/// OAuth2 provider: every field is empty), plus what anonymous clients may do.
pub async fn authconfig(State(s): State<ApiState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "Version": "1.0.0",
        "Config": {
            "ProviderID": "", "ProviderName": "", "Issuer": "", "JWKSUri": "", "Audience": "",
            "TokenEndpoint": "", "DeviceAuthorizationEndpoint": "", "DeviceClientID": "",
            "Scopes": [], "PollingInterval": 0
        },
        "Methods": ["basic", "apikey"],
        "Anonymous": s.auth.anonymous_level(),
        "LoopbackOnly": s.auth.loopback_only(),
    }))
}

/// Readiness (Kubernetes `readinessProbe`): 200 once this orchestrator knows a leader, else 503.
pub async fn ready(State(s): State<ApiState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let leader = s.cluster.raft().metrics().borrow().current_leader;
    match leader {
        Some(l) => {
            Json(serde_json::json!({"Status": "OK", "Leader": l.to_string()})).into_response()
        }
        None => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"Status": "NoLeader"})),
        )
            .into_response(),
    }
}
