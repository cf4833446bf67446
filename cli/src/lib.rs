//! Caravel's command tree (clap) with Bacalhau's commands and flags, and the REST API client.
//! One file per noun. `serve` and `devstack` are parsed here and run by the root package (they need
//! the orchestrator and compute crates, which this crate must not depend on).

pub mod agent;
pub mod auth;
pub mod cert;
pub mod client;
pub mod cluster;
pub mod config;
pub mod docker;
pub mod input;
pub mod job;
pub mod jobflags;
pub mod node;
pub mod output;
pub mod profile;
pub mod results;
pub mod template;
pub mod wasm;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use client::ApiClient;

#[derive(Debug, Parser)]
#[command(
    name = "caravel",
    version,
    about = "Compute over data: run jobs next to the data, on highly available orchestrators"
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
    /// The client profile to use (`caravel profile list`; default: the selected one).
    #[arg(long, global = true, env = "CARAVEL_PROFILE")]
    pub profile: Option<String>,
    /// A YAML config file, or Key=Value (dot path, any case); repeatable, later wins.
    #[arg(short = 'c', long = "config", global = true)]
    pub config: Vec<String>,
    /// Let the orchestrator answer reads from its own replica without confirming it is current
    /// (faster; answers even without quorum; may miss the latest writes).
    #[arg(long, global = true, env = "CARAVEL_STALE_READS")]
    pub stale: bool,
    /// Talk to the API over HTTPS (API.TLS.UseTLS; also BACALHAU_API_TLS_USETLS).
    #[arg(long, global = true, env = "CARAVEL_API_TLS_USETLS")]
    pub tls: bool,
    /// CA certificate (PEM) that signed the API's certificate (API.TLS.CAFile).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "CARAVEL_API_TLS_CAFILE"
    )]
    pub cacert: Option<String>,
    /// Do not verify the API's certificate (tests only; API.TLS.Insecure).
    #[arg(long, global = true, env = "CARAVEL_API_TLS_INSECURE")]
    pub insecure: bool,
}

impl Global {
    /// Bacalhau's names for the client's TLS settings, where Caravel's are not set.
    pub fn with_bacalhau_env(mut self) -> Self {
        let yes = |n: &str| {
            std::env::var(n)
                .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
                .unwrap_or(false)
        };
        self.tls |= yes("BACALHAU_API_TLS_USETLS");
        self.insecure |= yes("BACALHAU_API_TLS_INSECURE");
        if self.cacert.is_none() {
            self.cacert = std::env::var("BACALHAU_API_TLS_CAFILE")
                .ok()
                .filter(|v| !v.is_empty());
        }
        if self.api_host.is_none() {
            self.api_host = std::env::var("BACALHAU_API_HOST")
                .ok()
                .filter(|v| !v.is_empty());
        }
        if self.api_port.is_none() {
            self.api_port = std::env::var("BACALHAU_API_PORT")
                .ok()
                .and_then(|v| v.parse().ok());
        }
        self
    }
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
    /// Run a container image as a job.
    #[command(subcommand)]
    Docker(docker::DockerCommand),
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
    /// The orchestrator group: status, add and remove members.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Operator tasks: backups of the replicated state.
    #[command(subcommand)]
    Operator(cluster::OperatorCommand),
    /// API credentials: what this client sends, and password hashes for API.Auth.Users.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Named client settings (endpoint, timeout, token, TLS), as Bacalhau's profiles.
    #[command(subcommand)]
    Profile(profile::ProfileCommand),
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
    /// This node's id: its name, its Raft member id, and the id bound into its certificate
    /// (same as --name when both are given).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Initial orchestrators, `ID@HOST:PORT` (their Raft addresses), comma separated. List this node
    /// too to form a new group; leave it out to start empty and join with `caravel cluster add`.
    #[arg(long, value_delimiter = ',', value_name = "ID@HOST:PORT")]
    pub peers: Vec<String>,
    /// Port of the Raft (QUIC/UDP) listener (Orchestrator.RaftPort; default 1235).
    #[arg(long)]
    pub raft_port: Option<u16>,
    /// Cluster CA certificate (PEM) for mutual TLS (TLS.CA).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<String>,
    /// This node's certificate (PEM), issued by `caravel cert issue` (TLS.Cert).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// This node's private key (PEM) (TLS.Key).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<String>,
    /// Port compute nodes dial for their QUIC sessions (Orchestrator.ComputePort; default 4222).
    #[arg(long)]
    pub compute_port: Option<u16>,
    /// For a compute-only node: the orchestrators to dial, HOST:PORT comma separated
    /// (Compute.Orchestrators).
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT")]
    pub orchestrators: Vec<String>,
    /// For a compute-only node: serve `GET /metrics` on HOST:PORT (Compute.MetricsAddr; default:
    /// no listening port at all).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// For a compute-only node without a certificate: a one-time join token
    /// (`caravel node token create`) to obtain one (Compute.Auth.Token; or Compute.Auth.TokenFile).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CARAVEL_JOIN_TOKEN",
        hide_env_values = true
    )]
    pub join_token: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DevstackArgs {
    /// Run this job spec on the devstack, print its output and exit (0 if it completed).
    #[arg(long, value_name = "FILE")]
    pub run: Option<String>,
    /// Orchestrators to start (1, 3 or 5 for a Raft group that survives 0, 1 or 2 failures).
    #[arg(long, default_value_t = 1)]
    pub orchestrators: u32,
    /// Compute nodes to start (0 is allowed; Bacalhau's spelling `--computes` works too).
    #[arg(long, visible_alias = "computes", default_value_t = 1)]
    pub compute: u32,
    /// Run every node as its own OS process even for one orchestrator (always so for more than one
    /// orchestrator or compute node), and write DATA_DIR/devstack.json.
    #[arg(long)]
    pub processes: bool,
}

/// Runs a client command (everything but serve and devstack).
pub async fn run(cli: Cli) -> ExitCode {
    let global = cli.global.clone().with_bacalhau_env();
    let command = match cli.command {
        // Local files only: no API client (and no profile) needed.
        Command::Profile(c) => {
            return match profile::run(&global, c) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        other => other,
    };
    let client = match ApiClient::from_global(&global) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let res = match command {
        Command::Job(c) => job::run(&client, c).await,
        Command::Wasm(c) => wasm::run(&client, c).await,
        Command::Docker(c) => docker::run(&client, c).await,
        Command::Node(c) => node::run(&client, c).await,
        Command::Agent(c) => agent::run(&client, c).await,
        Command::Config(c) => config::run(&cli.global, c),
        Command::Version(a) => agent::version(&client, a).await,
        Command::Cert(cmd) => cert::run(&client, cmd).await,
        Command::Auth(cmd) => auth::run(&client, cmd).await,
        Command::Cluster(c) => cluster::run(&client, c).await,
        Command::Operator(cluster::OperatorCommand::Snapshot(cluster::SnapshotCommand::Save {
            file,
        })) => cluster::save(&client, &file).await,
        Command::Operator(_) => Ok(ExitCode::from(2)),
        Command::Serve(_) | Command::Devstack(_) | Command::Profile(_) => Ok(ExitCode::from(2)),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand's flags are consistent (clap's debug assertions, for the whole tree).
    #[test]
    fn the_command_tree_is_valid() {
        super::Cli::command().debug_assert();
    }

    /// Bacalhau's spellings: `devstack --computes N`, `wasm run -I` as a comma list (repeatable).
    #[test]
    fn bacalhau_spellings_of_devstack_computes_and_wasm_imports_parse() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from(["caravel", "devstack", "--computes", "3"]).unwrap();
        match cli.command {
            super::Command::Devstack(a) => assert_eq!(a.compute, 3),
            other => panic!("parsed as {other:?}"),
        }
        let argv = [
            "caravel",
            "wasm",
            "run",
            "m.wasm",
            "-I",
            "/a.wasm,/b.wasm",
            "-I",
            "/c.wasm",
        ];
        match super::Cli::try_parse_from(argv).unwrap().command {
            super::Command::Wasm(crate::wasm::WasmCommand::Run(a)) => {
                assert_eq!(a.import_modules, ["/a.wasm", "/b.wasm", "/c.wasm"])
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
