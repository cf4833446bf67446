//! Joining by one-time token: both ends.
//!
//! ```text
//!  admin: caravel node token create ──API──▶ leader: CreateJoinToken{id, sha256(secret), expiry}
//!  node:  serve --compute --join-token cvj1.ID.SECRET.CA_SHA256
//!           makes a key + CSR ──QUIC caravel-join/1 (server pinned by CA_SHA256)──▶ orchestrator
//!  orchestrator: ConsumeJoinToken through Raft (single use, expiry, id binding)
//!                └─ accepted: signs the CSR's key as a compute certificate with TLS.CAKey
//!  node:  stores DATA/tls/{ca.crt, ID.crt, ID.key} and uses them from then on
//! ```
//!
//! The token's secret travels only inside TLS to a server whose CA the node pinned; the cluster
//! keeps only its SHA-256. Every attempt is logged (never the secret) and counted in
//! `caravel_join_attempts_total{outcome}`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use caravel_model::command::{Command, CommandResponse};
use caravel_model::config::Config;
use caravel_model::security::TokenParts;
use caravel_model::wire::{JoinRequest, JoinResponse};
use caravel_net::tls;
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sha2::Digest;

use crate::metrics::OutcomeLabel;
use crate::orchestrator::Cluster;

/// Lower-case hex SHA-256 of a token's secret (what the state keeps).
pub fn secret_digest(secret: &str) -> String {
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The orchestrator's side: decides join requests on the compute port. Cheap to clone.
#[derive(Clone)]
pub struct Joiner {
    cluster: Cluster,
    ca: tls::PemPair,
    ca_sha256: String,
    attempts: Family<OutcomeLabel, Counter>,
    /// Joins decided at once; more wait (each needs a Raft write and a signature).
    slots: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Joiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joiner")
            .field("ca_sha256", &self.ca_sha256)
            .finish_non_exhaustive()
    }
}

impl Joiner {
    /// From `TLS.CA` and `TLS.CAKey`; `None` when `TLS.CAKey` is not set (joining is off).
    pub fn from_config(config: &Config, cluster: &Cluster) -> anyhow::Result<Option<Arc<Joiner>>> {
        if config.tls.ca_key.is_empty() {
            return Ok(None);
        }
        let ca = tls::read_ca_files(Path::new(&config.tls.ca), Path::new(&config.tls.ca_key))
            .context("TLS.CAKey: cannot read the CA for signing join requests")?;
        let ca_sha256 = tls::pem_fingerprint(&ca.cert)?;
        // A key that does not belong to the CA would sign certificates nobody trusts: check now.
        let probe = tls::issue(&ca, "join-probe", tls::Role::Compute)
            .context("TLS.CAKey does not sign with TLS.CA")?;
        tls::Identity::from_pem(&ca.cert, &probe.cert, &probe.key)
            .context("TLS.CAKey is not the key of TLS.CA")?;
        let attempts = Family::<OutcomeLabel, Counter>::default();
        let a = attempts.clone();
        cluster.metrics().register_with(move |r| {
            r.register(
                "join_attempts",
                "Compute nodes' attempts to join by token, by outcome",
                a,
            )
        });
        Ok(Some(Arc::new(Joiner {
            cluster: cluster.clone(),
            ca,
            ca_sha256,
            attempts,
            slots: Arc::new(tokio::sync::Semaphore::new(4)),
        })))
    }

    fn count(&self, outcome: &str) {
        self.attempts
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    async fn decide(&self, remote: SocketAddr, req: JoinRequest) -> JoinResponse {
        let _slot = self.slots.acquire().await;
        let refuse = |outcome: &str, reason: String| {
            self.count(outcome);
            tracing::warn!(%remote, node = %req.node_id, %reason, "join refused");
            JoinResponse::Refused { reason }
        };
        let parts = match TokenParts::parse(&req.token) {
            Ok(p) => p,
            Err(e) => return refuse("malformed", e),
        };
        if parts.ca_sha256 != self.ca_sha256 {
            return refuse(
                "wrong_cluster",
                "the token is for another cluster (its CA fingerprint is not this cluster's)"
                    .into(),
            );
        }
        if let Err(e) = tls::check_node_id(&req.node_id) {
            return refuse("bad_node_id", e.to_string());
        }
        let cmd = Command::ConsumeJoinToken {
            token_id: parts.id.clone(),
            secret_sha256: secret_digest(&parts.secret),
            node_id: req.node_id.clone(),
            now: crate::orchestrator::now_ns(),
        };
        let labels = match self.cluster.write(cmd).await {
            Ok(CommandResponse::TokenAccepted { labels }) => labels,
            Ok(CommandResponse::Rejected { message, hint, .. }) => {
                return refuse(
                    "refused",
                    if hint.is_empty() {
                        message
                    } else {
                        format!("{message}; {hint}")
                    },
                );
            }
            Ok(other) => return refuse("error", format!("unexpected answer {other:?}")),
            Err(e) => {
                return refuse(
                    "unavailable",
                    format!("the cluster cannot decide now ({e}); try again"),
                );
            }
        };
        match tls::sign_request(&self.ca, &req.csr_der, &req.node_id, tls::Role::Compute) {
            Ok(cert_pem) => {
                self.count("accepted");
                tracing::info!(%remote, node = %req.node_id, token = %parts.id, "node joined by token: compute certificate issued");
                JoinResponse::Accepted {
                    cert_pem,
                    ca_pem: self.ca.cert.clone(),
                    labels,
                }
            }
            Err(e) => refuse(
                "bad_request",
                format!("the certificate request is invalid: {e}"),
            ),
        }
    }
}

impl caravel_net::session::JoinHandler for Joiner {
    fn join(&self, remote: SocketAddr, request: JoinRequest) -> BoxFuture<'static, JoinResponse> {
        let joiner = self.clone();
        Box::pin(async move { joiner.decide(remote, request).await })
    }
}

/// Where a compute node keeps the certificate it obtained by joining.
pub fn joined_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// The node's TLS files `(ca, cert, key)`: configured ones, else those of an earlier join, else
/// obtained now with the join token (`Compute.Auth.Token`, `Compute.Auth.TokenFile` or
/// `--join-token`).
pub async fn certificate_files(
    config: &Config,
    data_dir: &Path,
    node_id: &str,
) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let t = &config.tls;
    if !t.ca.is_empty() || !t.cert.is_empty() || !t.key.is_empty() {
        if t.ca.is_empty() || t.cert.is_empty() || t.key.is_empty() {
            bail!(
                "set all three of --tls-ca, --tls-cert and --tls-key (TLS.CA, TLS.Cert, TLS.Key), or none and join with --join-token"
            );
        }
        return Ok((
            t.ca.clone().into(),
            t.cert.clone().into(),
            t.key.clone().into(),
        ));
    }
    let dir = joined_dir(data_dir);
    let files = (
        dir.join("ca.crt"),
        dir.join(format!("{node_id}.crt")),
        dir.join(format!("{node_id}.key")),
    );
    if files.0.is_file() && files.1.is_file() && files.2.is_file() {
        // The token is spent: a token file that is gone or unreadable by now is no error.
        if join_token(config).ok().flatten().is_some() {
            eprintln!(
                "note: {node_id} already holds a certificate from an earlier join ({}); the join token is not used",
                files.1.display()
            );
        }
        return Ok(files);
    }
    let Some(token) = join_token(config)? else {
        bail!(
            "a compute-only node talks to orchestrators over mutual-TLS QUIC and needs a certificate: \
             give --tls-ca, --tls-cert and --tls-key (caravel cert issue --role compute --node-id {node_id}), \
             or a one-time join token with --join-token (an operator makes one with caravel node token create)"
        );
    };
    let parts = TokenParts::parse(&token).map_err(anyhow::Error::msg)?;
    let (csr_der, key_pem) = tls::new_request(node_id)?;
    let req = JoinRequest {
        token,
        node_id: node_id.to_string(),
        csr_der,
    };
    eprintln!(
        "joining the cluster as {node_id} with token {} (orchestrators: {})…",
        parts.id,
        config.compute.orchestrators.join(", ")
    );
    let answer = caravel_net::session::join(
        &config.compute.orchestrators,
        &parts.ca_sha256,
        &req,
        Duration::from_secs(20),
    )
    .await
    .context("cannot reach an orchestrator to join (is TLS.CAKey set on them, and the compute port open?)")?;
    match answer {
        JoinResponse::Refused { reason } => bail!("the cluster refused the join: {reason}"),
        JoinResponse::Accepted {
            cert_pem,
            ca_pem,
            labels,
        } => {
            if tls::pem_fingerprint(&ca_pem)? != parts.ca_sha256 {
                bail!("the orchestrator sent a CA that is not the one the token pins; refusing it");
            }
            let pair = tls::PemPair {
                cert: cert_pem,
                key: key_pem,
            };
            // Check what we got before keeping it: it must work with our key, for our id.
            let id = tls::Identity::from_pem(&ca_pem, &pair.cert, &pair.key)
                .context("the certificate the cluster sent does not match this node's key")?;
            id.require_role(tls::Role::Compute)?;
            if id.node_id().as_deref() != Some(node_id) {
                bail!(
                    "the cluster sent a certificate for {:?}, not {node_id}",
                    id.node_id()
                );
            }
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            tls::write_node(&dir, node_id, &pair)?;
            std::fs::write(&files.0, &ca_pem)
                .with_context(|| format!("cannot write {}", files.0.display()))?;
            if !labels.is_empty() {
                std::fs::write(dir.join("labels.json"), serde_json::to_vec(&labels)?)?;
            }
            eprintln!(
                "joined: certificate stored in {} (valid for a year; renew with caravel cert renew)",
                dir.display()
            );
            Ok(files)
        }
    }
}

/// Labels a join token gave this node (kept next to its certificate).
pub fn joined_labels(data_dir: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read(joined_dir(data_dir).join("labels.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn join_token(config: &Config) -> anyhow::Result<Option<String>> {
    let a = &config.compute.auth;
    if !a.token_file.is_empty() {
        let t = std::fs::read_to_string(&a.token_file)
            .with_context(|| format!("Compute.Auth.TokenFile: cannot read {}", a.token_file))?;
        return Ok(Some(t.trim().to_string()));
    }
    Ok((!a.token.trim().is_empty()).then(|| a.token.trim().to_string()))
}
