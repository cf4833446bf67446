//! A real single-voter `openraft::Raft` on this store: the wiring the orchestrator uses.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use caravel_model::command::{Command, CommandResponse};
use caravel_raft_store::{NodeAddr, NodeId, StateMachineStore, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Config, Raft, ServerState};
use tempfile::TempDir;

use crate::fixtures;

/// A single voter never dials a peer.
struct NoNetwork;
struct NoPeer;

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoPeer;
    async fn new_client(&mut self, _target: NodeId, _node: &NodeAddr) -> NoPeer {
        NoPeer
    }
}

fn unreachable<E: std::error::Error>() -> RPCError<NodeId, NodeAddr, E> {
    RPCError::Unreachable(Unreachable::new(&io::Error::new(
        io::ErrorKind::NotConnected,
        "no peers in this test",
    )))
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        Err(unreachable())
    }
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }
    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        Err(unreachable())
    }
}

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

async fn start(dir: &Path) -> (Raft<TypeConfig>, StateMachineStore) {
    let (log, sm) = caravel_raft_store::open(dir).unwrap();
    let config = Arc::new(
        Config {
            cluster_name: "test".into(),
            ..Default::default()
        }
        .validate()
        .unwrap(),
    );
    let raft = Raft::new(1, config, NoNetwork, log, sm.clone())
        .await
        .unwrap();
    (raft, sm)
}

fn submit(id: &str, name: &str, now: i64) -> Command {
    Command::SubmitJob {
        job: fixtures::job(id, name),
        evaluation: fixtures::evaluation(&format!("e-{id}"), id),
        force: false,
        now,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_voter_commits_applies_snapshots_and_restarts_on_this_store() {
    let dir = TempDir::new().unwrap();
    let me = NodeAddr::new("127.0.0.1:7001", "127.0.0.1:1234");
    {
        let (raft, sm) = start(dir.path()).await;
        assert!(!raft.is_initialized().await.unwrap());
        raft.initialize(BTreeMap::from([(1, me.clone())]))
            .await
            .unwrap();
        raft.wait(WAIT)
            .state(ServerState::Leader, "elected")
            .await
            .unwrap();

        let mut applied = sm.subscribe_applied();
        let resp = raft
            .client_write(std::sync::Arc::new(submit("j-1", "one", fixtures::T0)))
            .await
            .unwrap();
        assert_eq!(
            resp.data,
            CommandResponse::JobSubmitted {
                job_id: "j-1".into(),
                evaluation_id: "e-j-1".into(),
                version: 1
            }
        );
        assert!(
            sm.state().read().unwrap().jobs.contains_key("j-1"),
            "applied before client_write returns"
        );
        assert!(*applied.borrow_and_update() >= resp.log_id.index);

        // Snapshot and purge everything, so the restart must rely on the persisted state machine.
        raft.trigger().snapshot().await.unwrap();
        raft.wait(WAIT)
            .snapshot(resp.log_id, "snapshot built")
            .await
            .unwrap();
        raft.trigger().purge_log(resp.log_id.index).await.unwrap();
        raft.wait(WAIT)
            .purged(Some(resp.log_id), "purged")
            .await
            .unwrap();
        let closed = sm.closed();
        raft.shutdown().await.unwrap();
        drop((raft, sm));
        // openraft's state-machine task may still hold the store for a moment after shutdown.
        tokio::time::timeout(WAIT.unwrap(), closed.wait())
            .await
            .expect("the store closes after shutdown");
    }

    let (raft, sm) = start(dir.path()).await;
    assert!(raft.is_initialized().await.unwrap());
    raft.wait(WAIT)
        .state(ServerState::Leader, "re-elected")
        .await
        .unwrap();
    assert!(
        sm.state().read().unwrap().jobs.contains_key("j-1"),
        "state reloaded after restart"
    );
    let resp = raft
        .client_write(std::sync::Arc::new(submit("j-2", "two", fixtures::T0 + 1)))
        .await
        .unwrap();
    assert!(
        matches!(resp.data, CommandResponse::JobSubmitted { .. }),
        "{:?}",
        resp.data
    );
    let again = raft
        .client_write(std::sync::Arc::new(submit("j-1", "one", fixtures::T0)))
        .await
        .unwrap();
    assert!(
        matches!(again.data, CommandResponse::JobSubmitted { version: 1, .. }),
        "a retried submit answers as the first time"
    );
    assert_eq!(sm.state().read().unwrap().jobs.len(), 2);
    let metrics = raft.metrics().borrow().clone();
    assert_eq!(
        metrics.membership_config.membership().get_node(&1),
        Some(&me)
    );
    raft.shutdown().await.unwrap();
}
