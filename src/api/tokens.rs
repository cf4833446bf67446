//! `/api/v1/orchestrator/tokens`: one-time join tokens for compute nodes, and
//! `/api/v1/orchestrator/revocations`: certificates revoked by fingerprint. Admin only (see
//! `api::auth`). The secret of a token is shown once, in the answer that creates it; the cluster
//! keeps only its SHA-256.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use caravel_model::command::{Command, CommandResponse};
use caravel_model::security::{JoinToken, TokenParts};
use serde::{Deserialize, Serialize};

use super::{ApiErr, ApiState, json_body};

/// Longest life of a token (a week): a join token is a bootstrap credential, not an identity.
const MAX_TTL_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateTokenRequest {
    /// Seconds the token stays valid (default 3600, at most a week).
    #[serde(default, rename = "TTLSeconds")]
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Bind the token to one node id.
    #[serde(default, rename = "NodeID")]
    pub node_id: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateTokenResponse {
    /// The token to give the node (`serve --compute --join-token …`); shown only now.
    pub token: String,
    #[serde(rename = "ID")]
    pub id: String,
    pub expires_at: String,
}

/// A token as listed (never its secret).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TokenInfo {
    #[serde(rename = "ID")]
    pub id: String,
    pub created_at: String,
    pub expires_at: String,
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub description: String,
    pub used_by: String,
    pub state: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn create(
    State(s): State<ApiState>,
    body: Bytes,
) -> Result<Json<CreateTokenResponse>, ApiErr> {
    let req: CreateTokenRequest = if body.is_empty() {
        CreateTokenRequest {
            ttl_seconds: None,
            labels: BTreeMap::new(),
            node_id: String::new(),
            description: String::new(),
        }
    } else {
        json_body(&body)?
    };
    let ttl = req.ttl_seconds.unwrap_or(3600);
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(ApiErr::bad_request(format!(
            "TTLSeconds {ttl} is out of range: 1 to {MAX_TTL_SECS} (a week)"
        ))
        .hint("use --ttl 1h, 24h, …"));
    }
    if !req.node_id.is_empty() {
        caravel_net::tls::check_node_id(&req.node_id)
            .map_err(|e| ApiErr::bad_request(e.to_string()))?;
    }
    let ca_sha256 = s.ca_fingerprint.clone().ok_or_else(|| {
        ApiErr::new(
            StatusCode::CONFLICT,
            "ConfigurationError",
            "this orchestrator has no cluster CA (it runs without TLS), so nodes cannot join by token",
        )
        .hint("run orchestrators with --tls-ca/--tls-cert/--tls-key and TLS.CAKey")
    })?;
    let random = |n: usize| {
        let mut b = vec![0u8; n];
        for chunk in b.chunks_mut(16) {
            let u = uuid::Uuid::new_v4();
            let src = u.as_bytes();
            chunk.copy_from_slice(&src[..chunk.len()]);
        }
        hex(&b)
    };
    let parts = TokenParts {
        id: random(6),
        secret: random(16),
        ca_sha256,
    };
    let now = crate::orchestrator::now_ns();
    let expires_at = now + (ttl as i64) * 1_000_000_000;
    let token = JoinToken {
        id: parts.id.clone(),
        secret_sha256: crate::join::secret_digest(&parts.secret),
        created_at: now,
        expires_at,
        labels: req.labels,
        node_id: req.node_id,
        description: req.description,
        used_by: String::new(),
        used_at: 0,
    };
    match s.cluster.write(Command::CreateJoinToken { token }).await? {
        CommandResponse::Rejected { message, hint, .. } => {
            Err(ApiErr::new(StatusCode::CONFLICT, "Conflict", message).hint(hint))
        }
        _ => {
            tracing::info!(token = %parts.id, ttl_secs = ttl, "join token created");
            Ok(Json(CreateTokenResponse {
                token: parts.format(),
                id: parts.id,
                expires_at: caravel_model::time::rfc3339(expires_at),
            }))
        }
    }
}

pub async fn list(State(s): State<ApiState>) -> Result<Json<serde_json::Value>, ApiErr> {
    let now = crate::orchestrator::now_ns();
    let items: Vec<TokenInfo> = s
        .cluster
        .read_linearizable(|st| {
            st.security
                .join_tokens
                .values()
                .map(|t| TokenInfo {
                    id: t.id.clone(),
                    created_at: caravel_model::time::rfc3339(t.created_at),
                    expires_at: caravel_model::time::rfc3339(t.expires_at),
                    labels: t.labels.clone(),
                    node_id: t.node_id.clone(),
                    description: t.description.clone(),
                    used_by: t.used_by.clone(),
                    state: if t.is_used() {
                        "used"
                    } else if now >= t.expires_at {
                        "expired"
                    } else {
                        "valid"
                    }
                    .into(),
                })
                .collect()
        })
        .await?;
    Ok(Json(serde_json::json!({"Items": items, "NextToken": ""})))
}

pub async fn delete(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    match s
        .cluster
        .write(Command::DeleteJoinToken {
            token_id: id.clone(),
        })
        .await?
    {
        CommandResponse::Rejected { message, hint, .. } => {
            Err(ApiErr::not_found(message).hint(hint))
        }
        _ => Ok(Json(serde_json::json!({"Success": true}))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RevokeRequest {
    /// SHA-256 of the certificate (`caravel cert show` prints it), lower-case hex.
    pub fingerprint: String,
    #[serde(default, rename = "NodeID")]
    pub node_id: String,
    #[serde(default)]
    pub reason: String,
}

/// `POST /api/v1/orchestrator/revocations`: refuse one certificate from now on (a stolen key).
pub async fn revoke(
    State(s): State<ApiState>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiErr> {
    let req: RevokeRequest = json_body(&body)?;
    let fp = req.fingerprint.trim().to_ascii_lowercase().replace(':', "");
    if fp.len() != 64 || !fp.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiErr::bad_request(
            "Fingerprint is the SHA-256 of the certificate: 64 hex digits",
        )
        .hint("caravel cert show FILE prints it"));
    }
    let reason = if req.reason.is_empty() {
        "revoked by an operator".to_string()
    } else {
        format!("revoked by an operator: {}", req.reason)
    };
    s.cluster
        .write(Command::DenyCertificate {
            fingerprint: fp.clone(),
            node_id: req.node_id,
            reason,
            now: crate::orchestrator::now_ns(),
        })
        .await?;
    tracing::warn!(fingerprint = %fp, "certificate revoked");
    Ok(Json(serde_json::json!({"Success": true})))
}

/// `GET /api/v1/orchestrator/revocations`: the deny list.
pub async fn revocations(State(s): State<ApiState>) -> Result<Json<serde_json::Value>, ApiErr> {
    let items: Vec<serde_json::Value> = s
        .cluster
        .read_linearizable(|st| {
            st.security
                .denied
                .values()
                .map(|d| {
                    serde_json::json!({
                        "NodeID": d.node_id,
                        "Fingerprint": d.fingerprint,
                        "Reason": d.reason,
                        "At": caravel_model::time::rfc3339(d.at),
                    })
                })
                .collect()
        })
        .await?;
    Ok(Json(serde_json::json!({"Items": items, "NextToken": ""})))
}
