//! `node list|describe`.

use std::process::ExitCode;

use caravel_model::api::{GetNodeResponse, ListNodesResponse};
use caravel_model::quantity::format_bytes;
use clap::{Args, Subcommand};

use crate::ApiClient;
use crate::output::{Format, OutputArgs, table};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    List(ListArgs),
    /// Describe one node (id or unique prefix).
    Describe {
        id: String,
        #[command(flatten)]
        out: OutputArgs,
    },
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Label selector, e.g. region=eu.
    #[arg(long)]
    labels: Option<String>,
    /// approved, pending or rejected.
    #[arg(long)]
    filter_approval: Option<String>,
    /// connected or disconnected.
    #[arg(long)]
    filter_status: Option<String>,
    #[arg(long)]
    limit: Option<u32>,
    #[arg(long)]
    order_by: Option<String>,
    #[arg(long)]
    order_reversed: bool,
    #[command(flatten)]
    out: OutputArgs,
}

pub async fn run(c: &ApiClient, cmd: NodeCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NodeCommand::List(a) => {
            let mut q = vec![];
            if let Some(l) = a.labels {
                q.push(("labels", l));
            }
            if let Some(f) = a.filter_approval {
                q.push(("filter-approval", f));
            }
            if let Some(f) = a.filter_status {
                q.push(("filter-status", f));
            }
            if let Some(l) = a.limit {
                q.push(("limit", l.to_string()));
            }
            if let Some(o) = a.order_by {
                q.push(("order_by", o));
            }
            if a.order_reversed {
                q.push(("reverse", "true".into()));
            }
            let r: ListNodesResponse = c.get("/api/v1/orchestrator/nodes", &q).await?;
            if !a.out.structured(&r)? {
                let rows: Vec<Vec<String>> = r
                    .nodes
                    .iter()
                    .map(|n| {
                        let ci = &n.info.compute_node_info;
                        vec![
                            n.info.node_id.clone(),
                            n.info.node_type.clone(),
                            n.membership.as_str().into(),
                            n.connection_state.status.as_str().into(),
                            n.info
                                .labels
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(" "),
                            format!(
                                "{:.1} / {:.1}",
                                ci.available_capacity.cpu, ci.max_capacity.cpu
                            ),
                            format!(
                                "{} / {}",
                                format_bytes(ci.available_capacity.memory),
                                format_bytes(ci.max_capacity.memory)
                            ),
                            ci.execution_engines.join(","),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "id", "type", "approval", "status", "labels", "cpu", "memory",
                            "engines"
                        ],
                        &rows,
                        a.out.hide_header
                    )
                );
            }
        }
        NodeCommand::Describe { id, out } => {
            let r: GetNodeResponse = c
                .get(&format!("/api/v1/orchestrator/nodes/{id}"), &[])
                .await?;
            let mut out = out;
            if out.output == Format::Table {
                out.output = Format::Yaml;
            }
            out.structured(&r.node)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
