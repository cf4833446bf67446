//! `cert ca|issue|show|renew|revoke`: the cluster CA and node certificates for mutual TLS between
//! nodes. Every node certificate binds a node id and a role (orchestrator or compute); node
//! certificates are valid for a year, the CA for ten.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use caravel_net::tls;
use clap::Subcommand;

use crate::ApiClient;

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
        /// orchestrator (Raft, peer calls, serves compute sessions) or compute (dials them).
        #[arg(long)]
        role: tls::Role,
        #[arg(long)]
        out_dir: PathBuf,
        /// Validity in days (default 365).
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
    /// Print what a certificate says: node id, role, validity, SHA-256 fingerprint.
    Show {
        file: PathBuf,
        #[command(flatten)]
        out: crate::output::OutputArgs,
    },
    /// Issue a fresh certificate and key for the same node id and role, replacing the files in
    /// place (atomically); a running node picks them up within 10 s, without a restart.
    Renew {
        #[arg(long)]
        ca_dir: PathBuf,
        /// The certificate to renew (its key is FILE with .key instead of .crt).
        #[arg(long)]
        cert: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
    /// Refuse a certificate from now on, cluster-wide (a stolen key): by file or fingerprint
    /// (admin). `caravel node delete` revokes every certificate a node used.
    Revoke {
        #[arg(
            long,
            conflicts_with = "fingerprint",
            required_unless_present = "fingerprint"
        )]
        cert: Option<PathBuf>,
        #[arg(long)]
        fingerprint: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn utc(secs: i64) -> String {
    caravel_model::time::rfc3339(secs.saturating_mul(1_000_000_000))
}

fn read_leaf(file: &Path) -> anyhow::Result<Vec<u8>> {
    let pem =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    tls::pem_certs(&pem)
        .into_iter()
        .next()
        .with_context(|| format!("{} holds no PEM certificate", file.display()))
}

fn read_ca(ca_dir: &Path) -> anyhow::Result<tls::PemPair> {
    tls::read_ca(ca_dir).with_context(|| {
        format!(
            "no CA in {}; create one with `caravel cert ca --out-dir {}`",
            ca_dir.display(),
            ca_dir.display()
        )
    })
}

fn days(d: u64) -> anyhow::Result<std::time::Duration> {
    if d == 0 || d > 3650 {
        bail!("--days must be 1-3650");
    }
    Ok(std::time::Duration::from_secs(d * 86400))
}

pub async fn run(c: &ApiClient, cmd: CertCommand) -> anyhow::Result<ExitCode> {
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
            let ca = tls::new_ca(&cluster)?;
            tls::write_ca(&out_dir, &ca)?;
            let leaf = tls::pem_certs(&ca.cert)
                .into_iter()
                .next()
                .unwrap_or_default();
            let info = tls::cert_info(&leaf)?;
            eprintln!(
                "wrote {0}/ca.crt and {0}/ca.key (keep ca.key secret); valid until {1}; SHA-256 {2}",
                out_dir.display(),
                utc(info.not_after),
                info.fingerprint
            );
        }
        CertCommand::Issue {
            ca_dir,
            node_id,
            role,
            out_dir,
            days: d,
        } => {
            let ca = read_ca(&ca_dir)?;
            let pair = tls::issue_for(&ca, &node_id, role, days(d)?)?;
            let (crt, key) = tls::write_node(&out_dir, &node_id, &pair)?;
            let info = tls::cert_info(&tls::pem_certs(&pair.cert)[0])?;
            eprintln!(
                "wrote {} and {} ({role} {node_id}, valid until {})",
                crt.display(),
                key.display(),
                utc(info.not_after)
            );
        }
        CertCommand::Show { file, out } => {
            let info = tls::cert_info(&read_leaf(&file)?)?;
            let v = serde_json::json!({
                "File": file,
                "NodeID": info.node_id,
                "Role": info.role.map(|r| r.to_string()),
                "CA": info.is_ca,
                "NotBefore": utc(info.not_before),
                "NotAfter": utc(info.not_after),
                "ExpiresInDays": (info.not_after - now_secs()) / 86400,
                "Fingerprint": info.fingerprint,
            });
            if !out.structured(&v)? {
                println!("file:        {}", file.display());
                if info.is_ca {
                    println!("kind:        cluster CA");
                } else {
                    println!(
                        "node id:     {}",
                        info.node_id.as_deref().unwrap_or("(none)")
                    );
                    println!(
                        "role:        {}",
                        info.role
                            .map_or("(none: issued before roles; reissue it)".into(), |r| r
                                .to_string())
                    );
                }
                println!("valid from:  {}", utc(info.not_before));
                println!(
                    "valid until: {} ({} days left)",
                    utc(info.not_after),
                    v["ExpiresInDays"]
                );
                println!("sha256:      {}", info.fingerprint);
            }
        }
        CertCommand::Renew {
            ca_dir,
            cert,
            days: d,
        } => {
            let ca = read_ca(&ca_dir)?;
            let info = tls::cert_info(&read_leaf(&cert)?)?;
            let (Some(id), Some(role)) = (info.node_id.clone(), info.role) else {
                bail!(
                    "{} names no node id or role; issue a new one with `caravel cert issue --role …`",
                    cert.display()
                );
            };
            let dir = cert.parent().unwrap_or(Path::new("."));
            if cert.file_name().and_then(|f| f.to_str()) != Some(&format!("{id}.crt")) {
                bail!(
                    "{} is for node {id}; renew writes {id}.crt and {id}.key next to it, so name it {id}.crt",
                    cert.display()
                );
            }
            let pair = tls::issue_for(&ca, &id, role, days(d)?)?;
            let (crt, key) = tls::write_node(dir, &id, &pair)?;
            let new = tls::cert_info(&tls::pem_certs(&pair.cert)[0])?;
            eprintln!(
                "renewed {} and {} ({role} {id}): valid until {} (was {}); a running node picks it up within 10 s",
                crt.display(),
                key.display(),
                utc(new.not_after),
                utc(info.not_after)
            );
        }
        CertCommand::Revoke {
            cert,
            fingerprint,
            reason,
        } => {
            let (fp, node) = match (cert, fingerprint) {
                (Some(f), _) => {
                    let info = tls::cert_info(&read_leaf(&f)?)?;
                    (info.fingerprint, info.node_id.unwrap_or_default())
                }
                (None, Some(fp)) => (fp, String::new()),
                (None, None) => bail!("give --cert FILE or --fingerprint SHA256"),
            };
            let _: serde_json::Value = c
                .post(
                    "/api/v1/orchestrator/revocations",
                    &serde_json::json!({"Fingerprint": fp, "NodeID": node, "Reason": reason}),
                )
                .await?;
            println!("Ok");
            eprintln!("certificate {fp} is refused from now on by every orchestrator");
        }
    }
    Ok(ExitCode::SUCCESS)
}
