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

/// A raw QUIC connection to `server` as `id`, for sending what a real client never would.
async fn raw_connection(ca: &tls::PemPair, id: &str, server: &Server) -> quinn::Connection {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(
        identity(ca, id)
            .client_config(
                rpc::RAFT_ALPN,
                tls::Role::Orchestrator,
                tls::NameCheck::Dialled,
            )
            .unwrap(),
    );
    ep.connect(server.local_addr(), "orch-1")
        .unwrap()
        .await
        .unwrap()
}

fn violations(server: &Server, kind: &str) -> u64 {
    server
        .stats()
        .violations()
        .into_iter()
        .find(|(k, _)| *k == kind)
        .unwrap()
        .1
}

/// Abuse: a peer that opens many streams each announcing a frame over the limit loses its
/// connection at the first (counted), allocates nothing on the server, and another peer's calls go
/// on being answered.
#[tokio::test]
async fn a_peer_announcing_oversized_frames_loses_its_connection_only() {
    let ca = tls::new_ca("t").unwrap();
    let stop = CancellationToken::new();
    let server = start(&ca, &stop);
    let addr = server.local_addr().to_string();
    let good = Client::new(
        &identity(&ca, "orch-2"),
        rpc::RAFT_ALPN,
        TransportOptions::default(),
    )
    .unwrap();
    assert_eq!(
        &good.call(&addr, "orch-1", 1, b"a", T).await.unwrap()[..],
        b"orch-2:a"
    );

    let bad = raw_connection(&ca, "orch-3", &server).await;
    let mut header = caravel_net::frame::encode(1, b"").to_vec();
    header[0..4].copy_from_slice(&(1u32 << 30).to_be_bytes());
    for _ in 0..50 {
        let Ok((mut tx, _rx)) = bad.open_bi().await else {
            break;
        };
        if tx.write_all(&header).await.is_err() {
            break;
        }
    }
    let reason = tokio::time::timeout(T, bad.closed())
        .await
        .expect("the server closes the connection");
    assert!(
        format!("{reason}").contains("frame larger than the limit"),
        "{reason}"
    );
    assert!(violations(&server, "oversized_frame") >= 1);
    assert_eq!(
        &good.call(&addr, "orch-1", 1, b"b", T).await.unwrap()[..],
        b"orch-2:b"
    );
    stop.cancel();
}

/// A request that never finishes arriving closes its connection after the read timeout.
#[tokio::test]
async fn a_request_that_stalls_is_cut_after_the_read_timeout() {
    let ca = tls::new_ca("t").unwrap();
    let stop = CancellationToken::new();
    let server = Server::start(
        "127.0.0.1:0".parse().unwrap(),
        &identity(&ca, "orch-1"),
        rpc::RAFT_ALPN,
        TransportOptions {
            read_timeout: Duration::from_millis(500),
            ..TransportOptions::default()
        },
        Arc::new(Echo),
        stop.clone(),
    )
    .unwrap();
    let slow = raw_connection(&ca, "orch-3", &server).await;
    let (mut tx, _rx) = slow.open_bi().await.unwrap();
    // A header announcing 1 KiB, then nothing.
    let mut header = caravel_net::frame::encode(1, b"").to_vec();
    header[0..4].copy_from_slice(&1024u32.to_be_bytes());
    tx.write_all(&header).await.unwrap();
    let reason = tokio::time::timeout(T, slow.closed()).await.unwrap();
    assert!(format!("{reason}").contains("timed out"), "{reason}");
    assert_eq!(violations(&server, "read_timeout"), 1);
    stop.cancel();
}

/// One peer may hold only `max_connections_per_peer` connections; the next is closed (counted),
/// and a connection given back makes room again.
#[tokio::test]
async fn a_peer_cannot_hold_more_than_its_connections() {
    let ca = tls::new_ca("t").unwrap();
    let stop = CancellationToken::new();
    let server = Server::start(
        "127.0.0.1:0".parse().unwrap(),
        &identity(&ca, "orch-1"),
        rpc::RAFT_ALPN,
        TransportOptions {
            max_connections_per_peer: 2,
            ..TransportOptions::default()
        },
        Arc::new(Echo),
        stop.clone(),
    )
    .unwrap();
    let call = |conn: quinn::Connection| async move {
        let (mut tx, mut rx) = conn.open_bi().await.ok()?;
        caravel_net::frame::write(&mut tx, 1, b"x").await.ok()?;
        tx.finish().ok()?;
        caravel_net::frame::read(&mut rx, 1 << 20).await.ok()?
    };
    let a = raw_connection(&ca, "orch-3", &server).await;
    let b = raw_connection(&ca, "orch-3", &server).await;
    assert!(call(a.clone()).await.is_some());
    assert!(call(b.clone()).await.is_some());
    let c = raw_connection(&ca, "orch-3", &server).await;
    let reason = tokio::time::timeout(T, c.closed()).await.unwrap();
    assert!(
        format!("{reason}").contains("too many connections"),
        "{reason}"
    );
    assert_eq!(violations(&server, "too_many_connections"), 1);
    // Another peer is not affected.
    let other = raw_connection(&ca, "orch-2", &server).await;
    assert!(call(other).await.is_some());
    a.close(0u32.into(), b"done");
    // Once the server has noticed, orch-3 may connect again.
    let mut again = None;
    for _ in 0..50 {
        let d = raw_connection(&ca, "orch-3", &server).await;
        if call(d.clone()).await.is_some() {
            again = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "a freed slot is reusable");
    stop.cancel();
}
