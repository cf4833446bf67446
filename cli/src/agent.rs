//! `agent alive|version|config|node` and `version`.

use std::process::ExitCode;

use caravel_model::api::AliveResponse;
use caravel_model::node::{BuildVersionInfo, NodeInfo};
use clap::{Args, Subcommand};

use crate::ApiClient;
use crate::output::{Format, OutputArgs};

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Is the node alive?
    Alive(OutputArgs),
    /// The node's version.
    Version(OutputArgs),
    /// The node's effective configuration.
    Config(OutputArgs),
    /// The node's info.
    Node(OutputArgs),
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Only the client's version (no server call).
    #[arg(long)]
    pub client: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

fn yaml_default(o: &OutputArgs) -> OutputArgs {
    let mut o = o.clone();
    if o.output == Format::Table {
        o.output = Format::Yaml;
    }
    o
}

pub async fn run(c: &ApiClient, cmd: AgentCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AgentCommand::Alive(o) => {
            let r: AliveResponse = c.get("/api/v1/agent/alive", &[]).await?;
            yaml_default(&o).structured(&r)?;
        }
        AgentCommand::Version(o) => {
            let r: BuildVersionInfo = c.get("/api/v1/agent/version", &[]).await?;
            if !o.structured(&r)? {
                println!("Caravel {}", r.git_version);
            }
        }
        AgentCommand::Config(o) => {
            let r: serde_json::Value = c.get("/api/v1/agent/config", &[]).await?;
            yaml_default(&o).structured(&r)?;
        }
        AgentCommand::Node(o) => {
            let r: NodeInfo = c.get("/api/v1/agent/node", &[]).await?;
            yaml_default(&o).structured(&r)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn version(c: &ApiClient, a: VersionArgs) -> anyhow::Result<ExitCode> {
    let client = BuildVersionInfo::current();
    let server: Option<BuildVersionInfo> = if a.client {
        None
    } else {
        c.get("/api/v1/agent/version", &[]).await.ok()
    };
    let v = serde_json::json!({"ClientVersion": client, "ServerVersion": server});
    if !a.out.structured(&v)? {
        let rows = vec![vec![
            client.git_version.clone(),
            server.map(|s| s.git_version).unwrap_or_else(|| {
                if a.client {
                    "-".into()
                } else {
                    "unreachable".into()
                }
            }),
        ]];
        print!("{}", a.out.table(&["client", "server"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}
