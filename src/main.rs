//! `caravel`: client, orchestrator and compute node in one binary.

use std::process::ExitCode;

use caravel_cli::{Cli, Command};
use clap::Parser;

/// mimalloc, not glibc's malloc: an orchestrator allocates and frees many small objects on every
/// core (job specs, state records, HTTP buffers), and glibc's arenas spent a quarter of a busy
/// leader's CPU in malloc, free and `malloc_consolidate` (docs/benchmarks.md). Without transparent
/// huge pages (`no_thp`): with them every fresh 2 MiB region mimalloc touched was zeroed whole, a
/// tenth of each member's CPU under a write load.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // One crypto provider for the whole process (reqwest and, later, QUIC use rustls with ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Devstack(_)) {
        quiet_on_closed_pipe();
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

/// A client piped into `head` ends quietly when the pipe closes, as other Unix tools do (status
/// 141, as a shell reports a process ended by SIGPIPE). SIGPIPE itself stays ignored (Rust's
/// default): with its default disposition, a request body written with `writev` to a server that
/// has already answered and closed (a 401 or 403 before the upload ends) killed the client without
/// a word instead of letting it print the server's answer.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if (msg.starts_with("failed printing to stdout")
            || msg.starts_with("failed printing to stderr"))
            && msg.contains("Broken pipe")
        {
            std::process::exit(141);
        }
        default(info);
    }));
}
