//! Caravel's command tree (clap) with Bacalhau's commands and flags, and the REST API client.
//! One file per noun. `serve` and `devstack` are parsed here and run by the root package (they need
//! the orchestrator and compute crates, which this crate must not depend on).

pub mod agent;
pub mod cert;
pub mod client;
pub mod config;
pub mod input;
pub mod job;
pub mod node;
pub mod output;
pub mod wasm;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use client::ApiClient;

#[derive(Debug, Parser)]
#[command(
    name = "caravel",
    version,
    about = "Compute over data: run jobs next to the data, on highly available orchestrators",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Host of the API to talk to (0.0.0.0 means this machine); may be a full URL.
    #[arg(long, global = true, env = "CARAVEL_API_HOST")]
    pub api_host: Option<String>,
    /// Port of the API.
    #[arg(long, global = true, env = "CARAVEL_API_PORT")]
    pub api_port: Option<u16>,
    /// The node's data directory (config file: DATA_DIR/config.yaml).
    #[arg(long, global = true, env = "CARAVEL_DIR")]
    pub data_dir: Option<String>,
    /// A YAML config file, or Key=Value (dot path, any case); repeatable, later wins.
    #[arg(short = 'c', long = "config", global = true)]
    pub config: Vec<String>,
}

// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: orchestrator, compute, or both (hybrid).
    Serve(ServeArgs),
    /// Run a whole local cluster for development and demos.
    Devstack(DevstackArgs),
    /// Submit, follow and inspect jobs.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Run a WebAssembly module as a job.
    #[command(subcommand)]
    Wasm(wasm::WasmCommand),
    /// Inspect the cluster's nodes.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Ask the node you talk to about itself.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Show and change the local configuration.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Client and server versions.
    Version(agent::VersionArgs),
    /// Cluster CA and node certificates for mutual TLS between nodes.
    #[command(subcommand)]
    Cert(cert::CertCommand),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Run the orchestrator (job store, scheduler, API).
    #[arg(long)]
    pub orchestrator: bool,
    /// Run the compute node (executes jobs).
    #[arg(long)]
    pub compute: bool,
    /// Node name (default: generated once and kept in the data dir).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DevstackArgs {
    /// Run this job spec on the devstack, print its output and exit (0 if it completed).
    #[arg(long, value_name = "FILE")]
    pub run: Option<String>,
    /// Orchestrators to start (this issue: 1, hybrid with the compute node).
    #[arg(long, default_value_t = 1)]
    pub orchestrators: u32,
    /// Compute nodes to start.
    #[arg(long, default_value_t = 1)]
    pub compute: u32,
}

/// Runs a client command (everything but serve and devstack).
pub async fn run(cli: Cli) -> ExitCode {
    let client = ApiClient::from_global(&cli.global);
    let res = match cli.command {
        Command::Job(c) => job::run(&client, c).await,
        Command::Wasm(c) => wasm::run(&client, c).await,
        Command::Node(c) => node::run(&client, c).await,
        Command::Agent(c) => agent::run(&client, c).await,
        Command::Config(c) => config::run(&cli.global, c),
        Command::Version(a) => agent::version(&client, a).await,
        Command::Cert(c) => cert::run(c),
        Command::Serve(_) | Command::Devstack(_) => Ok(ExitCode::from(2)),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
