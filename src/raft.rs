//! The root's adapter between openraft and the rest: the Raft configuration and the network factory.
//!
//! This issue runs a single-voter group, so no peer is ever dialled: the factory returns clients that
//! report peers as unreachable (openraft then backs off). The HA issue replaces [`PeerNetwork`] with
//! RPCs over mutual-TLS QUIC; nothing else changes, because every write already goes through
//! `Raft::client_write`, every node has a [`NodeAddr`], and leader-only work follows Raft's metrics.

use std::io;

use caravel_raft_store::{NodeAddr, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;

/// Raft timing for loopback and LAN; see docs/ARCHITECTURE.md for why (openraft's RPC timeout is the
/// heartbeat interval, so it must leave room for an fsync and a round trip).
pub fn raft_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "caravel".into(),
        heartbeat_interval: 250,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
        max_in_snapshot_log_to_keep: 5_000,
        ..Default::default()
    }
}

/// The network factory. Single-voter for now: see the module docs.
#[derive(Debug, Clone, Default)]
pub struct PeerNetwork;

#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;
    async fn new_client(&mut self, target: NodeId, _node: &NodeAddr) -> PeerClient {
        PeerClient { target }
    }
}

impl PeerClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, NodeAddr, E> {
        let e = io::Error::new(
            io::ErrorKind::NotConnected,
            format!(
                "no transport to Raft peer {} in a single-voter node",
                self.target
            ),
        );
        RPCError::Unreachable(Unreachable::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
