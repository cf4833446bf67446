//! `cert ca|issue`: the cluster CA and node certificates for mutual TLS between nodes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use caravel_net::tls;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a cluster CA: writes OUT_DIR/ca.crt and OUT_DIR/ca.key.
    Ca {
        #[arg(long)]
        out_dir: PathBuf,
        /// A name for the cluster, written into the CA certificate.
        #[arg(long, default_value = "caravel")]
        cluster: String,
        /// Replace an existing CA (every node certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate: writes OUT_DIR/NODE_ID.crt and OUT_DIR/NODE_ID.key.
    Issue {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        node_id: String,
        #[arg(long)]
        out_dir: PathBuf,
    },
}

pub fn run(cmd: CertCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertCommand::Ca {
            out_dir,
            cluster,
            force,
        } => {
            if out_dir.join("ca.key").exists() && !force {
                bail!(
                    "{} already holds a CA; use --force to replace it (nodes it issued certificates to would no longer be trusted)",
                    out_dir.display()
                );
            }
            tls::write_ca(&out_dir, &tls::new_ca(&cluster)?)?;
            eprintln!(
                "wrote {0}/ca.crt and {0}/ca.key (keep ca.key secret)",
                out_dir.display()
            );
        }
        CertCommand::Issue {
            ca_dir,
            node_id,
            out_dir,
        } => {
            let ca = tls::read_ca(&ca_dir).with_context(|| {
                format!(
                    "no CA in {}; create one with `caravel cert ca --out-dir {}`",
                    ca_dir.display(),
                    ca_dir.display()
                )
            })?;
            let pair = tls::issue(&ca, &node_id)?;
            let (crt, key) = tls::write_node(&out_dir, &node_id, &pair)?;
            eprintln!("wrote {} and {}", crt.display(), key.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
