//! Mutual TLS over real QUIC on loopback: a peer's node id and role come from its certificate, and
//! peers without a certificate from the cluster CA, of the wrong role, expired or revoked are refused
//! in the handshake; a renewed certificate is picked up without a restart; join requests are signed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use caravel_net::tls::{self, DenyList, Identity, NameCheck, PeerPolicy, Role};

const ALPN: &[u8] = b"caravel-test/1";

fn identity_as(ca: &tls::PemPair, id: &str, role: Role) -> Identity {
    let leaf = tls::issue(ca, id, role).unwrap();
    Identity::from_pem(&ca.cert, &leaf.cert, &leaf.key).unwrap()
}

/// An orchestrator's identity.
fn identity(ca: &tls::PemPair, id: &str) -> Identity {
    identity_as(ca, id, Role::Orchestrator)
}

/// A server that accepts clients of `role` (not on `deny`).
fn server_for(id: &Identity, role: Role, deny: DenyList) -> (quinn::Endpoint, SocketAddr) {
    let policy = PeerPolicy {
        role,
        deny,
        allow_anonymous: false,
    };
    let ep = quinn::Endpoint::server(
        id.server_config(ALPN, &policy).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = ep.local_addr().unwrap();
    (ep, addr)
}

/// A server that accepts compute clients.
fn server(id: &Identity) -> (quinn::Endpoint, SocketAddr) {
    server_for(id, Role::Compute, DenyList::default())
}

/// A compute node's client config: trusts orchestrators of the CA whatever their id.
fn node_client(id: &Identity) -> quinn::Endpoint {
    client(
        id.client_config(ALPN, Role::Orchestrator, NameCheck::Any)
            .unwrap(),
    )
}

fn client(cfg: quinn::ClientConfig) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    ep
}

/// Connects and echoes one message; the client's view of whether it got through.
async fn echo(
    client: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<Vec<u8>, String> {
    let conn = client
        .connect(addr, server_name)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    // The reason the peer closed with (what a node logs), else the local error.
    let why = |e: String| conn.close_reason().map_or(e, |r| r.to_string());
    let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| why(e.to_string()))?;
    tx.write_all(b"ping")
        .await
        .map_err(|e| why(e.to_string()))?;
    tx.finish().map_err(|e| why(e.to_string()))?;
    // TLS 1.3: a refused client certificate shows up after `connect` returned, so read an answer.
    tokio::time::timeout(Duration::from_secs(10), rx.read_to_end(1024))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| why(e.to_string()))
}

/// Accepts connections and echoes; reports each peer's node id (or the handshake error).
fn serve(ep: quinn::Endpoint) -> tokio::sync::mpsc::UnboundedReceiver<Result<String, String>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => {
                        let _ = tx.send(tls::peer_node_id(&conn).map_err(|e| e.to_string()));
                        if let Ok((mut s, mut r)) = conn.accept_bi().await {
                            let msg = r.read_to_end(1024).await.unwrap_or_default();
                            let _ = s.write_all(&msg).await;
                            let _ = s.finish();
                            let _ = conn.closed().await;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    rx
}

#[tokio::test]
async fn the_peers_node_id_is_read_from_its_certificate() {
    let ca = tls::new_ca("test").unwrap();
    let (ep, addr) = server(&identity(&ca, "orch-1"));
    let mut seen = serve(ep);
    let c = node_client(&identity_as(&ca, "node-a", Role::Compute));
    assert_eq!(echo(&c, addr, "orch-1").await.unwrap(), b"ping");
    assert_eq!(seen.recv().await.unwrap().unwrap(), "node-a");
}

#[tokio::test]
async fn a_client_with_a_certificate_from_another_ca_is_refused() {
    let ca = tls::new_ca("test").unwrap();
    let other = tls::new_ca("other").unwrap();
    let (ep, addr) = server(&identity(&ca, "orch-1"));
    let mut seen = serve(ep);
    // Trusts our CA (so it would accept the server) but holds a certificate from another CA.
    let leaf = tls::issue(&other, "node-x", Role::Compute).unwrap();
    let rogue = Identity::from_pem(&ca.cert, &leaf.cert, &leaf.key).unwrap();
    let r = echo(&node_client(&rogue), addr, "orch-1").await;
    assert!(r.is_err(), "a rogue client got through: {r:?}");
    let server_side = seen.recv().await.unwrap();
    assert!(server_side.is_err(), "{server_side:?}");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let ca = tls::new_ca("test").unwrap();
    let (ep, addr) = server(&identity(&ca, "orch-1"));
    let mut seen = serve(ep);
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::pem::PemObject::pem_slice_iter(ca.cert.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls_cfg.alpn_protocols = vec![ALPN.to_vec()];
    let cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls_cfg).unwrap(),
    ));
    let r = echo(&client(cfg), addr, "orch-1").await;
    assert!(r.is_err(), "an anonymous client got through: {r:?}");
    assert!(seen.recv().await.unwrap().is_err());
}

#[tokio::test]
async fn a_server_with_another_name_is_not_trusted_by_a_peer_that_dialled_an_id() {
    let ca = tls::new_ca("test").unwrap();
    let (ep, addr) = server_for(
        &identity(&ca, "orch-2"),
        Role::Orchestrator,
        DenyList::default(),
    );
    let _seen = serve(ep);
    let caller = identity(&ca, "orch-3");
    let c = client(
        caller
            .client_config(ALPN, Role::Orchestrator, NameCheck::Dialled)
            .unwrap(),
    );
    let r = echo(&c, addr, "orch-1").await;
    assert!(r.is_err(), "the client accepted orch-2 as orch-1: {r:?}");
    assert_eq!(echo(&c, addr, "orch-2").await.unwrap(), b"ping");
}

#[tokio::test]
async fn a_compute_certificate_is_refused_where_orchestrators_talk() {
    let ca = tls::new_ca("test").unwrap();
    // The Raft port: orchestrator certificates only.
    let (ep, addr) = server_for(
        &identity(&ca, "orch-1"),
        Role::Orchestrator,
        DenyList::default(),
    );
    let mut seen = serve(ep);
    let node = identity_as(&ca, "node-a", Role::Compute);
    let c = client(
        node.client_config(ALPN, Role::Orchestrator, NameCheck::Dialled)
            .unwrap(),
    );
    let r = echo(&c, addr, "orch-1").await;
    assert!(
        r.is_err(),
        "a compute certificate spoke on the Raft port: {r:?}"
    );
    let why = seen.recv().await.unwrap().unwrap_err();
    assert!(
        why.to_lowercase().contains("purpose") || why.to_lowercase().contains("certificate"),
        "{why}"
    );
    // And an orchestrator certificate is refused on the compute port.
    let (ep, addr) = server(&identity(&ca, "orch-1"));
    let mut seen = serve(ep);
    let r = echo(&node_client(&identity(&ca, "orch-2")), addr, "orch-1").await;
    assert!(
        r.is_err(),
        "an orchestrator certificate opened a compute session: {r:?}"
    );
    assert!(seen.recv().await.unwrap().is_err());
}

#[tokio::test]
async fn a_compute_node_refuses_a_compute_certificate_posing_as_orchestrator() {
    let ca = tls::new_ca("test").unwrap();
    // Another node of the same CA listens where the node expects an orchestrator.
    let impostor = identity_as(&ca, "node-evil", Role::Compute);
    let (ep, addr) = server_for(&impostor, Role::Compute, DenyList::default());
    let _seen = serve(ep);
    let r = echo(
        &node_client(&identity_as(&ca, "node-a", Role::Compute)),
        addr,
        "x",
    )
    .await;
    let e = r.unwrap_err();
    assert!(
        e.to_lowercase().contains("purpose") || e.to_lowercase().contains("certificate"),
        "{e}"
    );
}

#[tokio::test]
async fn expired_and_revoked_certificates_are_refused() {
    let ca = tls::new_ca("test").unwrap();
    let deny = DenyList::default();
    let (ep, addr) = server_for(&identity(&ca, "orch-1"), Role::Compute, deny.clone());
    let mut seen = serve(ep);
    let old =
        tls::issue_expired(&ca, "node-old", Role::Compute, Duration::from_secs(86400)).unwrap();
    let expired = Identity::from_pem(&ca.cert, &old.cert, &old.key).unwrap();
    let r = echo(&node_client(&expired), addr, "orch-1").await;
    assert!(r.is_err(), "an expired certificate got through: {r:?}");
    assert!(
        seen.recv()
            .await
            .unwrap()
            .unwrap_err()
            .to_lowercase()
            .contains("expired")
    );

    let node = identity_as(&ca, "node-b", Role::Compute);
    // A client that would resume its TLS session if the server let it: a resumed handshake skips
    // the certificate, so the server must refuse resumption or a revoked node walks back in.
    let mut tls_cfg = node
        .rustls_client_config(ALPN, Role::Orchestrator, NameCheck::Any)
        .unwrap();
    tls_cfg.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let resuming = client(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls_cfg).unwrap(),
    )));
    assert_eq!(echo(&resuming, addr, "orch-1").await.unwrap(), b"ping");
    seen.recv().await.unwrap().unwrap();
    let info = node.info().unwrap();
    deny.replace(
        [(
            info.fingerprint.clone(),
            "deleted by an operator".to_string(),
        )]
        .into(),
        Default::default(),
    );
    let e = echo(&resuming, addr, "orch-1").await.unwrap_err();
    assert!(
        seen.recv()
            .await
            .unwrap()
            .unwrap_err()
            .to_lowercase()
            .contains("revoked")
    );
    assert!(
        tls::explain_refusal(&e).is_some() || e.to_lowercase().contains("revoked"),
        "the node learns why: {e}"
    );
    // A node denied by id (rejected) is refused whatever certificate it shows.
    deny.replace(
        Default::default(),
        [("node-c".to_string(), "rejected".to_string())].into(),
    );
    let c = identity_as(&ca, "node-c", Role::Compute);
    assert!(echo(&node_client(&c), addr, "orch-1").await.is_err());
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::new_ca("renew").unwrap();
    tls::write_ca(dir.path(), &ca).unwrap();
    let first = tls::issue(&ca, "orch-1", Role::Orchestrator).unwrap();
    let (crt, key) = tls::write_node(dir.path(), "orch-1", &first).unwrap();
    let id = Identity::load(&dir.path().join("ca.crt"), &crt, &key).unwrap();
    let before = id.info().unwrap();
    // mtime resolution: make sure the renewal is seen as a change.
    std::thread::sleep(Duration::from_millis(1100));
    let renewed = tls::issue_for(
        &ca,
        "orch-1",
        Role::Orchestrator,
        Duration::from_secs(30 * 86400),
    )
    .unwrap();
    tls::write_node(dir.path(), "orch-1", &renewed).unwrap();
    id.refresh_now();
    let after = id.info().unwrap();
    assert_ne!(
        before.fingerprint, after.fingerprint,
        "the renewed certificate is in use"
    );
    assert!(after.not_after < before.not_after, "it is the 30-day one");
    // A server built before the renewal presents the new certificate.
    let (ep, addr) = server_for(&id, Role::Compute, DenyList::default());
    let _seen = serve(ep);
    let node = identity_as(&ca, "node-a", Role::Compute);
    let c = node_client(&node);
    let conn = c.connect(addr, "x").unwrap().await.unwrap();
    assert_eq!(
        tls::peer_info(&conn).unwrap().fingerprint,
        after.fingerprint
    );
    // A renewal for another id is refused and the current certificate stays.
    std::thread::sleep(Duration::from_millis(1100));
    let other = tls::issue(&ca, "orch-9", Role::Orchestrator).unwrap();
    std::fs::write(&crt, &other.cert).unwrap();
    std::fs::write(&key, &other.key).unwrap();
    id.refresh_now();
    assert_eq!(id.info().unwrap().fingerprint, after.fingerprint);
}

#[test]
fn certificates_carry_id_role_and_a_year_and_round_trip_through_files() {
    let dir = tempfile::tempdir().unwrap();
    tls::write_ca(dir.path(), &tls::new_ca("files").unwrap()).unwrap();
    let ca = tls::read_ca(dir.path()).unwrap();
    let pair = tls::issue(&ca, "orch-1", Role::Orchestrator).unwrap();
    let (crt, key) = tls::write_node(&dir.path().join("nodes"), "orch-1", &pair).unwrap();
    let id = Identity::load(&dir.path().join("ca.crt"), &crt, &key).unwrap();
    let info = id.info().unwrap();
    assert_eq!(info.node_id.as_deref(), Some("orch-1"));
    assert_eq!(info.role, Some(Role::Orchestrator));
    let days = (info.not_after - info.not_before) / 86400;
    assert!(
        (365..=366).contains(&days),
        "a node certificate lasts a year: {days} days"
    );
    let ca_info = tls::cert_info(&tls::pem_certs(&ca.cert)[0]).unwrap();
    assert!(ca_info.is_ca);
    assert!(
        (ca_info.not_after - ca_info.not_before) / 86400 >= 3650,
        "the CA lasts ten years"
    );
    assert!(id.require_role(Role::Orchestrator).is_ok());
    let e = id.require_role(Role::Compute).unwrap_err().to_string();
    assert!(e.contains("--role compute"), "{e}");
    for bad in ["", "Orch", "a_b", "-x", "x-", &"a".repeat(64)] {
        assert!(
            matches!(
                tls::issue(&ca, bad, Role::Compute),
                Err(tls::Error::BadNodeId(_))
            ),
            "{bad:?}"
        );
    }
    let e = Identity::load(&dir.path().join("ca.crt"), &key, &key)
        .unwrap_err()
        .to_string();
    assert!(e.contains("orch-1.key") && e.contains("certificate"), "{e}");
}

#[test]
fn a_join_request_is_signed_for_the_id_and_role_the_signer_decides() {
    let ca = tls::new_ca("join").unwrap();
    let (csr, key) = tls::new_request("edge-9").unwrap();
    let cert = tls::sign_request(&ca, &csr, "edge-9", Role::Compute).unwrap();
    let id = Identity::from_pem(&ca.cert, &cert, &key).unwrap();
    let info = id.info().unwrap();
    assert_eq!(info.node_id.as_deref(), Some("edge-9"));
    assert_eq!(info.role, Some(Role::Compute));
    // A tampered request does not verify.
    let mut bad = csr.clone();
    let n = bad.len();
    bad[n - 5] ^= 0xff;
    assert!(tls::sign_request(&ca, &bad, "edge-9", Role::Compute).is_err());
}
