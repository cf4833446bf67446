//! `caravel`: client, orchestrator and compute node in one binary.

use std::process::ExitCode;

use caravel_cli::{Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    // One crypto provider for the whole process (reqwest and, later, QUIC use rustls with ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Devstack(_)) {
        // A client piped into `head` ends quietly when the pipe closes, like other Unix tools.
        // SAFETY: called before any thread starts; SIG_DFL is a valid disposition for SIGPIPE.
        #[cfg(unix)]
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let res = match &cli.command {
            Command::Serve(args) => caravel::node::serve(&cli.global, args).await,
            Command::Devstack(args) => caravel::devstack::run(&cli.global, args).await,
            Command::Operator(caravel_cli::cluster::OperatorCommand::Snapshot(
                caravel_cli::cluster::SnapshotCommand::Restore(args),
            )) => caravel::operator::restore(&cli.global, args).await,
            _ => return caravel_cli::run(cli).await,
        };
        match res {
            Ok(code) => code,
            Err(e) => {
                eprintln!("Error: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
