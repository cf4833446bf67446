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

pub async fn config(State(s): State<ApiState>) -> Json<serde_json::Value> {
    // Nothing secret lives in the config file (secrets come from env or files), so nothing to redact yet.
    Json(serde_json::json!({ "config": s.config }))
}
