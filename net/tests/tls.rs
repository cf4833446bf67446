//! Mutual TLS over real QUIC on loopback: a peer's node id comes from its certificate, and peers
//! without a certificate from the cluster CA are refused in the handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use caravel_net::tls::{self, Identity};

const ALPN: &[u8] = b"caravel-test/1";

fn identity(ca: &tls::PemPair, id: &str) -> Identity {
    let leaf = tls::issue(ca, id).unwrap();
    Identity::from_pem(&ca.cert, &leaf.cert, &leaf.key).unwrap()
}

fn server(id: &Identity) -> (quinn::Endpoint, SocketAddr) {
    let ep = quinn::Endpoint::server(
        id.server_config(ALPN).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = ep.local_addr().unwrap();
    (ep, addr)
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
    let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
    tx.write_all(b"ping").await.map_err(|e| e.to_string())?;
    tx.finish().map_err(|e| e.to_string())?;
    // TLS 1.3: a refused client certificate shows up after `connect` returned, so read an answer.
    tokio::time::timeout(Duration::from_secs(10), rx.read_to_end(1024))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())
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
    let c = client(identity(&ca, "node-a").client_config(ALPN).unwrap());
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
    let leaf = tls::issue(&other, "node-x").unwrap();
    let rogue = Identity::from_pem(&ca.cert, &leaf.cert, &leaf.key).unwrap();
    let r = echo(&client(rogue.client_config(ALPN).unwrap()), addr, "orch-1").await;
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
async fn a_server_with_another_name_is_not_trusted_by_the_client() {
    let ca = tls::new_ca("test").unwrap();
    let (ep, addr) = server(&identity(&ca, "orch-2"));
    let _seen = serve(ep);
    let c = client(identity(&ca, "node-a").client_config(ALPN).unwrap());
    let r = echo(&c, addr, "orch-1").await;
    assert!(r.is_err(), "the client accepted orch-2 as orch-1: {r:?}");
}

#[test]
fn certificates_round_trip_through_files_and_bad_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    tls::write_ca(dir.path(), &tls::new_ca("files").unwrap()).unwrap();
    let ca = tls::read_ca(dir.path()).unwrap();
    let pair = tls::issue(&ca, "orch-1").unwrap();
    let (crt, key) = tls::write_node(&dir.path().join("nodes"), "orch-1", &pair).unwrap();
    Identity::load(&dir.path().join("ca.crt"), &crt, &key).unwrap();
    for bad in ["", "Orch", "a_b", "-x", "x-", &"a".repeat(64)] {
        assert!(
            matches!(tls::issue(&ca, bad), Err(tls::Error::BadNodeId(_))),
            "{bad:?}"
        );
    }
    let e = Identity::load(&dir.path().join("ca.crt"), &key, &key)
        .unwrap_err()
        .to_string();
    assert!(e.contains("orch-1.key") && e.contains("certificate"), "{e}");
}
