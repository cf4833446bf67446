//! `cluster status|add|remove` (the orchestrator group) and `operator snapshot save` (a backup of
//! the replicated state). `operator snapshot restore` runs in the node binary (it writes a Raft
//! store), see the root crate's `operator` module.

use std::process::ExitCode;

use anyhow::{Context, bail};
use caravel_model::api::{AddMemberRequest, AdminResponse, ClusterStatus};
use clap::{Args, Subcommand};

use crate::ApiClient;
use crate::output::OutputArgs;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Who leads, each member's role, log index and lag.
    Status {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Add an orchestrator: it joins as a learner, catches up, then becomes a voter. Start it first
    /// with `caravel serve --orchestrator --node-id ID --peers <the current members>`.
    Add {
        /// ID@HOST:PORT: the new member's node id and Raft address.
        member: String,
        /// Its API address (shown in status; optional).
        #[arg(long)]
        api_address: Option<String>,
    },
    /// Remove an orchestrator from the group (refused for the last voter).
    Remove {
        /// Node id of the member.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Backups of the replicated state.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save the replicated state (as of a linearizable read) to FILE.
    Save { file: String },
    /// Build a fresh one-member orchestrator data dir from FILE (offline). Start that node, then
    /// add the other members with `caravel cluster add`.
    Restore(RestoreArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The snapshot file written by `snapshot save`.
    pub file: String,
    /// Node id of the restored orchestrator.
    #[arg(long)]
    pub node_id: String,
    /// Its Raft address, HOST:PORT, as other members will reach it.
    #[arg(long, default_value = "127.0.0.1:1235")]
    pub raft_address: String,
}

pub async fn run(c: &ApiClient, cmd: ClusterCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClusterCommand::Status { out } => {
            let s: ClusterStatus = c.get("/api/v1/orchestrator/cluster", &[]).await?;
            if out.structured(&s)? {
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = s
                .members
                .iter()
                .map(|m| {
                    vec![
                        m.id.clone(),
                        m.raft_address.clone(),
                        m.api_address.clone(),
                        m.role.clone(),
                        m.last_log_index.to_string(),
                        m.applied_index.to_string(),
                        m.lag.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                out.table(
                    &[
                        "ID",
                        "RAFT ADDRESS",
                        "API",
                        "ROLE",
                        "LAST LOG",
                        "APPLIED",
                        "LAG"
                    ],
                    &rows
                )
            );
            eprintln!(
                "Leader: {}  Term: {}{}",
                if s.leader.is_empty() {
                    "none (no quorum?)"
                } else {
                    &s.leader
                },
                s.term,
                if s.changing {
                    "  (membership change in flight)"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Add {
            member,
            api_address,
        } => {
            let (id, addr) = member.split_once('@').with_context(|| {
                format!("{member:?} is not ID@HOST:PORT (e.g. orch-4@10.0.0.4:1235)")
            })?;
            let r: AdminResponse = c
                .post(
                    "/api/v1/orchestrator/cluster/members",
                    &AddMemberRequest {
                        id: id.into(),
                        raft_address: addr.into(),
                        api_address: api_address.unwrap_or_default(),
                    },
                )
                .await?;
            println!("{}", r.message);
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Remove { id } => {
            let r: AdminResponse = c
                .delete(&format!("/api/v1/orchestrator/cluster/members/{id}"), &())
                .await?;
            println!("{}", r.message);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Largest snapshot `operator snapshot save` writes.
const MAX_SNAPSHOT_BYTES: u64 = 64 << 30;

/// `operator snapshot save`.
pub async fn save(c: &ApiClient, file: &str) -> anyhow::Result<ExitCode> {
    let path = std::path::Path::new(file);
    let bytes = c
        .download_to(
            &c.url("/api/v1/orchestrator/snapshot"),
            std::time::Duration::from_secs(300),
            path,
            MAX_SNAPSHOT_BYTES,
        )
        .await?;
    if bytes == 0 {
        let _ = std::fs::remove_file(path);
        bail!("the orchestrator sent an empty snapshot");
    }
    eprintln!("Saved {bytes} bytes of cluster state to {file}");
    Ok(ExitCode::SUCCESS)
}
