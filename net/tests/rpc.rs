//! Orchestrator RPCs over real QUIC on loopback: answers, remote errors, large bodies, refusal of
//! peers from another CA, and a peer sending garbage that loses only its own stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use caravel_net::rpc::{self, Client, Handler, Server, TransportOptions};
use caravel_net::tls::{self, Identity};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

fn identity(ca: &tls::PemPair, id: &str) -> Identity {
    let leaf = tls::issue(ca, id, tls::Role::Orchestrator).unwrap();
    Identity::from_pem(&ca.cert, &leaf.cert, &leaf.key).unwrap()
}

/// Echoes the body prefixed with the caller's id; kind 9 answers an error.
struct Echo;
impl Handler for Echo {
    fn handle(
        &self,
        peer: String,
        kind: u8,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        Box::pin(async move {
            if kind == 9 {
                return Err("kind 9 is refused".into());
            }
            let mut out = format!("{peer}:").into_bytes();
            out.extend_from_slice(&body);
            Ok(out)
        })
    }
}

fn start(ca: &tls::PemPair, shutdown: &CancellationToken) -> Server {
    Server::start(
        "127.0.0.1:0".parse().unwrap(),
        &identity(ca, "orch-1"),
        rpc::RAFT_ALPN,
        TransportOptions::default(),
        Arc::new(Echo),
        shutdown.clone(),
    )
    .unwrap()
}

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_call_is_answered_with_the_callers_certified_id() {
    let ca = tls::new_ca("t").unwrap();
    let stop = CancellationToken::new();
    let server = start(&ca, &stop);
    let addr = server.local_addr().to_string();
    let client = Client::new(
        &identity(&ca, "orch-2"),
        rpc::RAFT_ALPN,
        TransportOptions::default(),
    )
    .unwrap();
    let a = client.call(&addr, "orch-1", 1, b"hi", T).await.unwrap();
    assert_eq!(&a[..], b"orch-2:hi");
    // The connection is reused and a remote error comes back as such.
    let e = client.call(&addr, "orch-1", 9, b"", T).await.unwrap_err();
    assert!(matches!(e, rpc::Error::Remote { .. }), "{e}");
    assert!(e.to_string().contains("kind 9 is refused"), "{e}");
    // Bodies far larger than a datagram cross intact.
    let big = vec![7u8; 5 << 20];
    let a = client.call(&addr, "orch-1", 1, &big, T).await.unwrap();
    assert_eq!(a.len(), big.len() + "orch-2:".len());
    stop.cancel();
}

#[tokio::test]
async fn a_peer_from_another_ca_is_refused() {
    let ca = tls::new_ca("t").unwrap();
    let rogue_ca = tls::new_ca("rogue").unwrap();
    let stop = CancellationToken::new();
    let server = start(&ca, &stop);
    // The rogue trusts the real CA but presents a certificate the server does not trust.
    let rogue_leaf = tls::issue(&rogue_ca, "orch-2", tls::Role::Orchestrator).unwrap();
    let rogue = Identity::from_pem(&ca.cert, &rogue_leaf.cert, &rogue_leaf.key).unwrap();
    let client = Client::new(&rogue, rpc::RAFT_ALPN, TransportOptions::default()).unwrap();
    let e = client
        .call(&server.local_addr().to_string(), "orch-1", 1, b"x", T)
        .await
        .unwrap_err();
    assert!(!matches!(e, rpc::Error::Remote { .. }), "{e}");
    stop.cancel();
}

#[tokio::test]
async fn an_unreachable_peer_is_reported_as_such_and_not_cached() {
    let ca = tls::new_ca("t").unwrap();
    let client = Client::new(
        &identity(&ca, "orch-2"),
        rpc::RAFT_ALPN,
        TransportOptions {
            idle_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .unwrap();
    // Nothing listens there: the handshake times out.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap().to_string();
    drop(sock);
    let e = client
        .call(&addr, "orch-1", 1, b"x", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(e, rpc::Error::Connect { .. } | rpc::Error::Timeout { .. }),
        "{e}"
    );
    // A server that appears later is reached by the same client.
    let stop = CancellationToken::new();
    let server = Server::start(
        addr.parse().unwrap(),
        &identity(&ca, "orch-1"),
        rpc::RAFT_ALPN,
        TransportOptions::default(),
        Arc::new(Echo),
        stop.clone(),
    )
    .unwrap();
    assert_eq!(server.local_addr().to_string(), addr);
    let a = client.call(&addr, "orch-1", 1, b"late", T).await.unwrap();
    assert_eq!(&a[..], b"orch-2:late");
    stop.cancel();
}

#[tokio::test]
async fn a_garbage_frame_fails_its_stream_only() {
    let ca = tls::new_ca("t").unwrap();
    let stop = CancellationToken::new();
    let server = start(&ca, &stop);
    let id = identity(&ca, "orch-2");
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(
        id.client_config(
            rpc::RAFT_ALPN,
            tls::Role::Orchestrator,
            tls::NameCheck::Dialled,
        )
        .unwrap(),
    );
    let conn = ep
        .connect(server.local_addr(), "orch-1")
        .unwrap()
        .await
        .unwrap();
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    tx.write_all(b"this is not a caravel frame at all")
        .await
        .unwrap();
    tx.finish().unwrap();
    let answer = caravel_net::frame::read(&mut rx, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.kind, 1, "an error answer");
    assert!(
        String::from_utf8_lossy(&answer.payload).contains("bad request frame"),
        "{:?}",
        answer.payload
    );
    // The same connection still serves a well-formed request.
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    caravel_net::frame::write(&mut tx, 1, b"ok").await.unwrap();
    tx.finish().unwrap();
    let answer = caravel_net::frame::read(&mut rx, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&answer.payload[..], b"orch-2:ok");
    stop.cancel();
}
