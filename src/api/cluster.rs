//! `/api/v1/orchestrator/cluster`: the orchestrator group — who leads, each member's role, log
//! index and lag (`caravel cluster status`), membership changes (`caravel cluster add|remove`), and
//! a snapshot of the replicated state for backups (`caravel operator snapshot save`).
//!
//! Any member answers: status is assembled from this member's Raft metrics and a short STATUS probe
//! of every member; changes run on the leader (forwarded over QUIC when this member is not it).

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use caravel_model::api::{AddMemberRequest, AdminResponse, ClusterStatus, MemberStatus};
use caravel_raft_store::NodeAddr;

use super::{ApiErr, ApiState, json_body};
use crate::orchestrator::{Cluster, WriteError};
use crate::raft::{self, AdminRequest, LeaderError, MemberInfo};

/// How long a status probe of one member may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

pub async fn status(State(s): State<ApiState>) -> Result<Json<ClusterStatus>, ApiErr> {
    Ok(Json(cluster_status(&s.cluster).await))
}

pub async fn cluster_status(cluster: &Cluster) -> ClusterStatus {
    let m = cluster.raft().metrics().borrow().clone();
    let membership = m.membership_config.membership().clone();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let nodes: Vec<(u64, NodeAddr)> = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
    let me = cluster.me().clone();
    let probes = nodes.iter().map(|(id, node)| {
        let raft = cluster.raft().clone();
        let me = me.clone();
        let client = cluster.peers().cloned();
        let (id, node) = (*id, node.clone());
        async move {
            if id == cluster.node_id() {
                return Some(raft::member_info(&raft, &me));
            }
            let client = client?;
            raft::call_peer::<_, MemberInfo>(&client, &node, raft::kind::STATUS, &(), PROBE_TIMEOUT)
                .await
                .ok()
        }
    });
    let infos = futures::future::join_all(probes).await;
    let leader_last = infos
        .iter()
        .flatten()
        .filter(|i| i.state == "leader")
        .map(|i| i.last_log_index)
        .max()
        .unwrap_or(m.last_log_index.unwrap_or(0));
    let name_of = |id: u64| {
        nodes
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, n)| n.name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let members = nodes
        .iter()
        .zip(infos)
        .map(|((id, node), info)| {
            let voter = voters.contains(id);
            // The leader's replication view is exact; fall back to the member's own report.
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned())
                .map(|l| l.map(|l| l.index).unwrap_or(0));
            match info {
                Some(i) => MemberStatus {
                    id: node.name.clone(),
                    raft_address: node.raft_addr.clone(),
                    api_address: i.api_addr.clone(),
                    role: if i.state == "follower" && !voter {
                        "learner".into()
                    } else {
                        i.state.clone()
                    },
                    voter,
                    last_log_index: i.last_log_index,
                    applied_index: i.applied_index,
                    lag: leader_last.saturating_sub(matched.unwrap_or(i.last_log_index)),
                    reachable: true,
                },
                None => MemberStatus {
                    id: node.name.clone(),
                    raft_address: node.raft_addr.clone(),
                    api_address: node.api_addr.clone(),
                    role: "unreachable".into(),
                    voter,
                    last_log_index: matched.unwrap_or(0),
                    applied_index: 0,
                    lag: leader_last.saturating_sub(matched.unwrap_or(0)),
                    reachable: false,
                },
            }
        })
        .collect();
    ClusterStatus {
        leader: m.current_leader.map(name_of).unwrap_or_default(),
        term: m.current_term,
        answered_by: me.name,
        changing: membership.get_joint_config().len() > 1,
        members,
    }
}

/// Runs a membership change on the leader (here, or forwarded).
async fn run_admin(cluster: &Cluster, req: AdminRequest) -> Result<String, ApiErr> {
    let deadline = tokio::time::Instant::now() + raft::ADMIN_TIMEOUT + Duration::from_secs(5);
    loop {
        let res = if cluster.is_leader() {
            raft::admin(cluster.raft(), req.clone()).await
        } else {
            match (cluster.leader(), cluster.peers()) {
                (Some((_, node)), Some(client)) => {
                    raft::call_peer::<_, Result<String, LeaderError>>(
                        client,
                        &node,
                        raft::kind::ADMIN,
                        &req,
                        raft::ADMIN_TIMEOUT + Duration::from_secs(2),
                    )
                    .await
                    .unwrap_or_else(|e| {
                        Err(LeaderError::Refused(format!(
                            "cannot reach the leader {}: {e}",
                            node.name
                        )))
                    })
                }
                _ => Err(LeaderError::NotLeader(None)),
            }
        };
        match res {
            Ok(m) => return Ok(m),
            Err(LeaderError::NotLeader(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(LeaderError::Refused(m)) => {
                return Err(ApiErr::new(StatusCode::CONFLICT, "Conflict", m)
                    .hint("see caravel cluster status"));
            }
            Err(e) => return Err(WriteError::from(e).into()),
        }
    }
}

pub async fn add_member(
    State(s): State<ApiState>,
    body: Bytes,
) -> Result<Json<AdminResponse>, ApiErr> {
    let req: AddMemberRequest = json_body(&body)?;
    caravel_net::tls::check_node_id(&req.id)
        .map_err(|e| ApiErr::bad_request(format!("invalid member id: {e}")))?;
    if req
        .raft_address
        .rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(ApiErr::bad_request(format!(
            "RaftAddress {:?} is not HOST:PORT",
            req.raft_address
        ))
        .hint(
            "the address the new orchestrator's Raft listener is reached at, e.g. 10.0.0.4:1235",
        ));
    }
    let message = run_admin(
        &s.cluster,
        AdminRequest::Add(NodeAddr::named(req.id, req.raft_address, req.api_address)),
    )
    .await?;
    Ok(Json(AdminResponse { message }))
}

pub async fn remove_member(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<AdminResponse>, ApiErr> {
    let message = run_admin(&s.cluster, AdminRequest::Remove(id)).await?;
    Ok(Json(AdminResponse { message }))
}

/// The replicated state as of a linearizable read, in the state machine's snapshot format.
pub async fn snapshot(State(s): State<ApiState>) -> Result<Response, ApiErr> {
    let bytes = s
        .cluster
        .read_linearizable(|st| st.to_snapshot())
        .await?
        .map_err(|e| {
            ApiErr::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("cannot encode the state: {e}"),
            )
        })?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}
