//! `caravel operator snapshot restore FILE --node-id ID`: builds a fresh one-member orchestrator
//! data dir from a snapshot written by `operator snapshot save` (etcd's `snapshot restore` model: a
//! restore starts a new group; the other members join it with `caravel cluster add`).
//!
//! The snapshot is installed into the new Raft store as if a leader had sent it, with a membership
//! of this node alone, and the log is marked purged up to it; the node then elects itself and serves
//! the restored state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use caravel_cli::Global;
use caravel_cli::cluster::RestoreArgs;
use caravel_model::state::ClusterState;
use caravel_raft_store::NodeAddr;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, LogId, Membership, SnapshotMeta, StoredMembership};

use crate::raft::raft_id;

pub async fn restore(global: &Global, args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let config = caravel_cli::config::load(global)?;
    caravel_net::tls::check_node_id(&args.node_id)
        .map_err(|e| anyhow::anyhow!("--node-id: {e}"))?;
    let data_dir = PathBuf::from(&config.data_dir);
    let raft_dir = data_dir.join("orchestrator").join("raft");
    if raft_dir.exists()
        && raft_dir
            .read_dir()
            .with_context(|| format!("cannot read {}", raft_dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} already holds a Raft store; restore into an empty data dir (--data-dir DIR)",
            raft_dir.display()
        );
    }
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file))?;
    let state = ClusterState::from_snapshot(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a Caravel state snapshot of this version: {e}",
            args.file
        )
    })?;
    std::fs::create_dir_all(&raft_dir)
        .with_context(|| format!("cannot create {}", raft_dir.display()))?;
    std::fs::write(data_dir.join("node_name"), &args.node_id)?;

    let (mut log, mut sm) = caravel_raft_store::open(&raft_dir)
        .with_context(|| format!("cannot open a Raft store in {}", raft_dir.display()))?;
    let closed = log.closed();
    let id = raft_id(&args.node_id);
    let log_id = LogId::new(CommittedLeaderId::new(1, id), 1);
    let mut voters = BTreeSet::new();
    voters.insert(id);
    let mut nodes = BTreeMap::new();
    nodes.insert(id, NodeAddr::named(&args.node_id, &args.raft_address, ""));
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), Membership::new(vec![voters], nodes)),
        snapshot_id: format!("restored-from-{}", args.file),
    };
    sm.install_snapshot(&meta, Box::new(std::io::Cursor::new(bytes)))
        .await
        .context("installing the snapshot")?;
    log.purge(log_id).await.context("marking the log")?;
    drop((log, sm));
    closed.wait().await;
    eprintln!(
        "Restored {} jobs and {} executions into {} as orchestrator {}.\nStart it with: caravel serve --orchestrator --data-dir {} --node-id {} (plus TLS flags), then add members with caravel cluster add",
        state.jobs.len(),
        state.executions.len(),
        data_dir.display(),
        args.node_id,
        data_dir.display(),
        args.node_id
    );
    Ok(ExitCode::SUCCESS)
}
