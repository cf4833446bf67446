//! `/api/v1/orchestrator/nodes`: compute and orchestrator nodes with their membership and connection.

use axum::Json;
use axum::extract::{Path, State};
use caravel_model::api::{GetNodeResponse, ListNodesResponse};
use caravel_model::command::{Command, CommandResponse};
use caravel_model::node::Eligibility;
use caravel_model::state::LookupError;
use caravel_model::states::NodeMembership;
use serde::Deserialize;

use super::{ApiErr, ApiQuery, ApiState};
use crate::api::jobs::selector_matches;

#[derive(Debug, Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    labels: Option<String>,
    #[serde(default, rename = "filter-approval")]
    filter_approval: Option<String>,
    #[serde(default, rename = "filter-status")]
    filter_status: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    order_by: Option<String>,
    #[serde(default)]
    reverse: Option<bool>,
}

pub async fn list(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ListNodesResponse>, ApiErr> {
    let selector = match &q.labels {
        Some(l) if !l.is_empty() => Some(crate::api::jobs::parse_selector(l)?),
        _ => None,
    };
    let mut nodes = s
        .cluster
        .read_linearizable(|st| {
            st.nodes
                .values()
                .map(|n| with_allocation(st, n))
                .collect::<Vec<_>>()
        })
        .await?;
    for n in nodes.iter_mut() {
        fresh_heartbeat(&s, n);
    }
    nodes.retain(|n| {
        q.filter_approval
            .as_ref()
            .is_none_or(|a| n.membership.as_str().eq_ignore_ascii_case(a))
            && q.filter_status
                .as_ref()
                .is_none_or(|f| n.connection_state.status.as_str().eq_ignore_ascii_case(f))
            && selector
                .as_ref()
                .is_none_or(|sel| selector_matches(sel, &n.info.labels))
    });
    match q.order_by.as_deref().unwrap_or("id") {
        "type" => nodes.sort_by(|a, b| a.info.node_type.cmp(&b.info.node_type)),
        "status" => nodes.sort_by(|a, b| {
            a.connection_state
                .status
                .as_str()
                .cmp(b.connection_state.status.as_str())
        }),
        "available_cpu" => nodes.sort_by(|a, b| {
            a.info
                .compute_node_info
                .available_capacity
                .cpu
                .total_cmp(&b.info.compute_node_info.available_capacity.cpu)
        }),
        "available_memory" => {
            nodes.sort_by_key(|n| n.info.compute_node_info.available_capacity.memory)
        }
        _ => nodes.sort_by(|a, b| a.info.node_id.cmp(&b.info.node_id)),
    }
    if q.reverse.unwrap_or(false) {
        nodes.reverse();
    }
    if let Some(l) = q.limit.filter(|l| *l > 0) {
        nodes.truncate(l);
    }
    Ok(Json(ListNodesResponse {
        nodes,
        next_token: String::new(),
    }))
}

pub async fn get(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<GetNodeResponse>, ApiErr> {
    let node = s
        .cluster
        .read_linearizable(|st| st.find_node(&id).map(|n| with_allocation(st, n)))
        .await?;
    match node {
        Ok(mut node) => {
            fresh_heartbeat(&s, &mut node);
            Ok(Json(GetNodeResponse { node }))
        }
        Err(LookupError::NotFound) => Err(ApiErr::not_found(format!("node {id} not found"))
            .hint("list nodes with `caravel node list`")),
        Err(LookupError::Ambiguous) => Err(ApiErr::bad_request(format!(
            "node id prefix {id} matches several nodes"
        ))
        .hint("give more characters of the id")),
    }
}

/// The node as the scheduler sees it now: `AvailableCapacity` is its `MaxCapacity` less what the
/// live executions placed on it were allocated (running and queued on the node alike), and
/// `RunningExecutions` / `EnqueuedExecutions` count them by state; a registration only tells the
/// capacity the node had when it registered.
fn with_allocation(
    st: &caravel_model::state::ClusterState,
    n: &caravel_model::node::NodeState,
) -> caravel_model::node::NodeState {
    use caravel_model::view::StateView;
    let mut n = n.clone();
    if n.info.node_type != "Compute" {
        return n;
    }
    let ci = &mut n.info.compute_node_info;
    let mut free = ci.max_capacity.clone();
    let (mut running, mut queued) = (0u32, 0u32);
    for e in st.live_executions_on(n.info.node_id.as_str()) {
        for r in e.allocated_resources.tasks.values() {
            free.sub(r);
        }
        if e.compute_state.state_type == caravel_model::ExecutionStateType::Running {
            running += 1;
        } else {
            queued += 1;
        }
    }
    ci.available_capacity = free;
    ci.running_executions = running;
    ci.enqueued_executions = queued;
    n
}

/// Heartbeats are not replicated (only registrations are): show the latest one this orchestrator has
/// seen (from its own sessions, or relayed by followers when it leads).
fn fresh_heartbeat(s: &ApiState, n: &mut caravel_model::node::NodeState) {
    if let Some(at) = s.cluster.last_heartbeat(n.id()) {
        let cs = &mut n.connection_state;
        cs.last_heartbeat = cs.last_heartbeat.max(at);
    }
}

/// Bacalhau's `PutNodeRequest`: approve, reject or delete a node (admin).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutNodeRequest {
    #[serde(rename = "NodeID", alias = "NodeId", alias = "nodeID", default)]
    pub node_id: String,
    #[serde(alias = "action")]
    pub action: String,
    #[serde(default, alias = "message")]
    pub message: String,
    /// `drain` only: seconds the node's batch executions have before they are stopped and placed
    /// elsewhere (default an hour, as Nomad's; 0 moves them now).
    #[serde(default, rename = "DeadlineSeconds")]
    pub deadline_seconds: Option<i64>,
}

/// The longest drain deadline: 30 days.
const MAX_DRAIN_DEADLINE_SECS: i64 = 30 * 86_400;

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutNodeResponse {
    pub success: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// `PUT /api/v1/orchestrator/nodes[/{id}]`: Bacalhau's node actions. A rejected node's session
/// is closed at once and its certificates refused; a deleted node's record goes and the
/// certificates it used are revoked; either way its executions are replaced.
pub async fn update(
    State(s): State<ApiState>,
    body: axum::body::Bytes,
) -> Result<Json<PutNodeResponse>, ApiErr> {
    update_node(s, None, &body).await
}

/// `PUT /api/v1/orchestrator/nodes/{id}`: as [`update`], the node named in the path.
pub async fn update_by_id(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<PutNodeResponse>, ApiErr> {
    update_node(s, Some(id), &body).await
}

async fn update_node(
    s: ApiState,
    id: Option<String>,
    body: &[u8],
) -> Result<Json<PutNodeResponse>, ApiErr> {
    let mut req: PutNodeRequest = super::json_body(body)?;
    if let Some(id) = id {
        if !req.node_id.is_empty() && req.node_id != id {
            return Err(ApiErr::bad_request(format!(
                "the path names node {id} but the body names {}",
                req.node_id
            )));
        }
        req.node_id = id;
    }
    if req.node_id.is_empty() {
        return Err(ApiErr::bad_request("NodeID is required").hint("give the node's id"));
    }
    let node_id = s
        .cluster
        .read_linearizable(|st| st.find_node(&req.node_id).map(|n| n.id().to_string()))
        .await?
        .map_err(|e| match e {
            LookupError::NotFound => ApiErr::not_found(format!("node {} not found", req.node_id))
                .hint("list nodes with `caravel node list`"),
            LookupError::Ambiguous => ApiErr::bad_request(format!(
                "node id prefix {} matches several nodes",
                req.node_id
            )),
        })?;
    let live = s.cluster.read(|st| {
        use caravel_model::view::StateView;
        st.live_executions_on(&node_id).len()
    });
    let eval_ids: Vec<String> = (0..live)
        .map(|_| caravel_model::ids::new_evaluation_id())
        .collect();
    let now = crate::orchestrator::now_ns();
    let eligibility = |e: Eligibility| Command::SetNodeEligibility {
        node_id: node_id.clone(),
        eligibility: e,
        message: req.message.clone(),
        now,
    };
    let cmd = match req.action.to_ascii_lowercase().as_str() {
        "drain" => {
            let secs = req.deadline_seconds.unwrap_or(3600);
            if !(0..=MAX_DRAIN_DEADLINE_SECS).contains(&secs) {
                return Err(
                    ApiErr::bad_request(format!("DeadlineSeconds {secs} is out of range")).hint(
                        format!(
                            "give 0 (move everything now) to {MAX_DRAIN_DEADLINE_SECS} (30 days)"
                        ),
                    ),
                );
            }
            eligibility(Eligibility::Draining {
                deadline: now.saturating_add(secs * 1_000_000_000),
            })
        }
        "eligible" | "undrain" => eligibility(Eligibility::Eligible),
        "ineligible" => eligibility(Eligibility::Ineligible),
        "approve" => Command::SetNodeMembership {
            node_id: node_id.clone(),
            membership: NodeMembership::Approved,
            message: req.message.clone(),
            evaluation_ids: vec![],
            now,
        },
        "reject" => Command::SetNodeMembership {
            node_id: node_id.clone(),
            membership: NodeMembership::Rejected,
            message: req.message.clone(),
            evaluation_ids: eval_ids,
            now,
        },
        "delete" => Command::DeleteNode {
            node_id: node_id.clone(),
            message: req.message.clone(),
            evaluation_ids: eval_ids,
            now,
        },
        other => {
            return Err(
                ApiErr::bad_request(format!("unknown node action {other:?}"))
                    .hint("use approve, reject, delete, drain, eligible or ineligible"),
            );
        }
    };
    match s.cluster.write(cmd).await? {
        CommandResponse::Rejected { message, hint, .. } => {
            Err(ApiErr::new(axum::http::StatusCode::CONFLICT, "Conflict", message).hint(hint))
        }
        _ => {
            tracing::info!(node = %node_id, action = %req.action, "node {}", req.action.to_ascii_lowercase());
            Ok(Json(PutNodeResponse {
                success: true,
                error: String::new(),
            }))
        }
    }
}
