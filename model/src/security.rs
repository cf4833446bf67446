//! Replicated security state: one-time join tokens, the deny list of revoked certificates and
//! nodes, and the certificates each node was seen with (so deleting a node revokes them).
//!
//! Secrets are never stored: a join token is kept as the SHA-256 of its secret, compared in
//! `apply` (deterministic: the command carries the digest of what the node presented).
//!
//! A token is `cvj1.<id>.<secret>.<ca-sha256>`: 12 hex digits of id, 32 hex digits (128 bits) of
//! secret, and the SHA-256 of the cluster CA's certificate, which the joining node pins (kubeadm's
//! discovery hash).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A one-time token that lets a new compute node obtain a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct JoinToken {
    pub id: String,
    /// SHA-256 of the secret, lower-case hex.
    pub secret_sha256: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// Labels the joining node gets.
    pub labels: BTreeMap<String, String>,
    /// The only node id it may be used for; empty = any id not already registered.
    pub node_id: String,
    pub description: String,
    /// Set once used.
    pub used_by: String,
    pub used_at: i64,
}

impl JoinToken {
    pub fn is_used(&self) -> bool {
        !self.used_by.is_empty()
    }
}

/// Why a certificate or node may not connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Denial {
    pub node_id: String,
    /// Empty for a whole node (rejected: any certificate for its id).
    pub fingerprint: String,
    pub reason: String,
    pub at: i64,
}

/// The key of a denial: `cert/<fingerprint>` or `node/<id>`.
pub fn denial_key(d: &Denial) -> String {
    if d.fingerprint.is_empty() {
        format!("node/{}", d.node_id)
    } else {
        format!("cert/{}", d.fingerprint)
    }
}

/// The prefix of join tokens, with the format version.
pub const TOKEN_PREFIX: &str = "cvj1";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenParts {
    pub id: String,
    pub secret: String,
    pub ca_sha256: String,
}

impl std::fmt::Debug for TokenParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenParts")
            .field("id", &self.id)
            .field("ca_sha256", &self.ca_sha256)
            .finish_non_exhaustive()
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

impl TokenParts {
    /// Parses `cvj1.<id>.<secret>.<ca-sha256>`, refusing anything else with what is wrong.
    pub fn parse(token: &str) -> Result<TokenParts, String> {
        let t = token.trim();
        let parts: Vec<&str> = t.split('.').collect();
        match parts.as_slice() {
            [TOKEN_PREFIX, id, secret, ca] => {
                if !is_hex(id, 12) || !is_hex(secret, 32) || !is_hex(ca, 64) {
                    return Err("the join token is malformed (a part has the wrong length or is not lower-case hex): copy it again from `caravel node token create`".into());
                }
                Ok(TokenParts {
                    id: id.to_string(),
                    secret: secret.to_string(),
                    ca_sha256: ca.to_string(),
                })
            }
            [p, ..] if p.starts_with("cvj") => Err(format!(
                "the join token has format {p}, this build reads {TOKEN_PREFIX}: upgrade the compute node"
            )),
            _ => Err("this is not a Caravel join token (cvj1.<id>.<secret>.<ca-sha256>): create one with `caravel node token create`".into()),
        }
    }

    pub fn format(&self) -> String {
        format!(
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.id, self.secret, self.ca_sha256
        )
    }
}

/// The security tables of the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Security {
    pub join_tokens: BTreeMap<String, JoinToken>,
    /// By [`denial_key`].
    pub denied: BTreeMap<String, Denial>,
    /// Node id → fingerprints of the certificates it connected with.
    pub node_certs: BTreeMap<String, std::collections::BTreeSet<String>>,
}

impl Security {
    /// Why a node with this certificate may not connect, if it may not.
    pub fn denial(&self, node_id: &str, fingerprint: &str) -> Option<&Denial> {
        self.denied
            .get(&format!("cert/{fingerprint}"))
            .or_else(|| self.denied.get(&format!("node/{node_id}")))
    }

    /// The deny list as two maps (fingerprint → reason, node id → reason), for the TLS verifiers.
    pub fn deny_maps(&self) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let mut certs = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        for d in self.denied.values() {
            if d.fingerprint.is_empty() {
                nodes.insert(d.node_id.clone(), d.reason.clone());
            } else {
                certs.insert(d.fingerprint.clone(), d.reason.clone());
            }
        }
        (certs, nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_round_trip_and_malformed_ones_say_why() {
        let t = TokenParts {
            id: "0123456789ab".into(),
            secret: "0123456789abcdef0123456789abcdef".into(),
            ca_sha256: "a".repeat(64),
        };
        assert_eq!(TokenParts::parse(&t.format()).unwrap(), t);
        assert!(
            !format!("{t:?}").contains(&t.secret),
            "Debug hides the secret"
        );
        let e = TokenParts::parse("cvj1.0123456789ab.short.aa").unwrap_err();
        assert!(e.contains("malformed"), "{e}");
        let e = TokenParts::parse("cvj9.a.b.c").unwrap_err();
        assert!(e.contains("upgrade"), "{e}");
        let e = TokenParts::parse("abcdef.0123456789abcdef").unwrap_err();
        assert!(e.contains("not a Caravel join token"), "{e}");
    }
}
