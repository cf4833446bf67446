//! Compute sessions over real QUIC on loopback: messages both ways in order per channel, identity and
//! CA checks, bad frames and wrong channels closing one connection only, reconnecting to the next
//! orchestrator, overlapping dials (a silent orchestrator skipped, a slow path not given up on),
//! load shedding of handshakes, bulk results not holding back reports; plus the pure backoff and
//! probe pacing and the message↔channel mapping.

use std::net::SocketAddr;
use std::time::Duration;

use caravel_model::execution::{Execution, ExecutionUpdate};
use caravel_model::node::NodeInfo;
use caravel_model::spec::Job;
use caravel_model::states::ExecutionStateType;
use caravel_model::wire::{ToCompute, ToOrchestrator};
use caravel_net::frame::{self, Frame};
use caravel_net::session::{
    self, Backoff, Channel, ClientIdentity, Congestion, Connected, IncomingSession, SessionClient,
    SessionOptions, SessionSecurity, SessionServer,
};
use caravel_net::tls::{self, Identity, PemPair};
use caravel_net::{ComputeEnd, OrchestratorEnd};
use futures::future::BoxFuture;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Bound on every wait, so a broken build fails instead of hanging (not a performance assertion).
const T: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("gave up waiting for {what}"))
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// An orchestrator's identity.
fn identity(ca: &PemPair, id: &str) -> Identity {
    let leaf = tls::issue(ca, id, tls::Role::Orchestrator).unwrap();
    Identity::from_pem(&ca.cert, &leaf.cert, &leaf.key).unwrap()
}

/// A compute node's identity, for bare QUIC clients.
fn node_identity(ca: &PemPair, id: &str) -> Identity {
    let leaf = tls::issue(ca, id, tls::Role::Compute).unwrap();
    Identity::from_pem(&ca.cert, &leaf.cert, &leaf.key).unwrap()
}

fn client_identity(ca: &PemPair, id: &str) -> ClientIdentity {
    let leaf = tls::issue(ca, id, tls::Role::Compute).unwrap();
    ClientIdentity::from_pem(&ca.cert, &leaf.cert, &leaf.key).unwrap()
}

fn info(id: &str) -> Box<NodeInfo> {
    Box::new(NodeInfo {
        node_id: id.into(),
        ..Default::default()
    })
}

fn hello(id: &str) -> ToOrchestrator {
    ToOrchestrator::Hello {
        info: info(id),
        last_seq: 0,
    }
}

fn update(id: &str) -> ExecutionUpdate {
    ExecutionUpdate {
        execution_id: id.into(),
        state: ExecutionStateType::Running,
        message: String::new(),
        run_output: None,
        published_result: None,
        topic: "Running Execution".into(),
        time: 1,
    }
}

fn report(seq: u64) -> ToOrchestrator {
    ToOrchestrator::Report {
        seq,
        update: update(&format!("e{seq}")),
    }
}

fn start(
    ca: &PemPair,
    id: &str,
    stop: &CancellationToken,
) -> (SessionServer, mpsc::Receiver<IncomingSession>) {
    SessionServer::start(
        "127.0.0.1:0".parse().unwrap(),
        &identity(ca, id),
        SessionOptions::default(),
        SessionSecurity::default(),
        stop.clone(),
    )
    .unwrap()
}

type Handed = (ComputeEnd, Connected);

/// A session callback that hands each `ComputeEnd` to the test and ends when the transport drops it.
fn hand_over(
    tx: mpsc::Sender<Handed>,
) -> impl FnMut(ComputeEnd, Connected) -> BoxFuture<'static, ()> {
    move |end, connected| {
        let tx = tx.clone();
        Box::pin(async move {
            let gone = end.outbox.clone();
            let _ = tx.send((end, connected)).await;
            gone.closed().await;
        })
    }
}

/// Starts a compute node's session loop; returns its stats and the ends it is handed.
fn spawn_node(
    ca: &PemPair,
    id: &str,
    orchestrators: Vec<String>,
    stop: &CancellationToken,
) -> (session::SessionStats, mpsc::Receiver<Handed>) {
    spawn_node_with(ca, id, orchestrators, SessionOptions::default(), stop)
}

fn spawn_node_with(
    ca: &PemPair,
    id: &str,
    orchestrators: Vec<String>,
    opts: SessionOptions,
    stop: &CancellationToken,
) -> (session::SessionStats, mpsc::Receiver<Handed>) {
    let (tx, rx) = mpsc::channel(4);
    let client = SessionClient::new(orchestrators, &client_identity(ca, id), opts)
        .unwrap()
        .with_seed(7);
    let stats = client.stats();
    tokio::spawn(client.run(stop.clone(), hand_over(tx)));
    (stats, rx)
}

/// Connects a node and returns both ends once the orchestrator has accepted its Hello.
async fn connect_node(
    ca: &PemPair,
    id: &str,
    addr: SocketAddr,
    incoming: &mut mpsc::Receiver<IncomingSession>,
    stop: &CancellationToken,
) -> (
    ComputeEnd,
    Connected,
    IncomingSession,
    session::SessionStats,
) {
    let (stats, mut handed) = spawn_node(ca, id, vec![addr.to_string()], stop);
    let (cend, connected) = within("a ComputeEnd", handed.recv()).await.unwrap();
    cend.outbox.send(hello(id)).await.unwrap();
    let mut sess = within("an IncomingSession", incoming.recv()).await.unwrap();
    assert_eq!(sess.node_id, id);
    assert_eq!(
        within("Hello", sess.end.rx.recv()).await.unwrap(),
        hello(id)
    );
    (cend, connected, sess, stats)
}

/// The node says Hello on `end`; the orchestrator hands out its session.
async fn hello_is_accepted(
    end: &ComputeEnd,
    incoming: &mut mpsc::Receiver<IncomingSession>,
    id: &str,
) {
    end.outbox.send(hello(id)).await.unwrap();
    let sess = within("the session", incoming.recv()).await.unwrap();
    assert_eq!(sess.node_id, id);
}

/// A bare QUIC client with `identity`, for sending what a well-behaved node never would.
async fn raw_connect(
    identity: &Identity,
    addr: SocketAddr,
) -> (quinn::Endpoint, quinn::Connection) {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(
        identity
            .client_config(
                session::SESSION_ALPN,
                tls::Role::Orchestrator,
                tls::NameCheck::Any,
            )
            .unwrap(),
    );
    let conn = within("a raw handshake", ep.connect(addr, "orch-1").unwrap())
        .await
        .unwrap();
    (ep, conn)
}

fn close_reason(e: &quinn::ConnectionError) -> (u64, String) {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => (
            c.error_code.into_inner(),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        other => panic!("expected an application close, got {other}"),
    }
}

fn frame_of(m: &ToOrchestrator) -> Vec<u8> {
    session::encode_to_orchestrator(m).unwrap().1.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_carries_messages_both_ways_in_order_on_each_channel() {
    let ca = tls::new_ca("t").unwrap();
    let stop = CancellationToken::new();
    let (server, mut incoming) = start(&ca, "orch-1", &stop);
    let (mut cend, connected, sess, node_stats) =
        connect_node(&ca, "node-1", server.local_addr(), &mut incoming, &stop).await;
    assert_eq!(connected.server_id, "orch-1");
    assert_eq!(connected.orchestrator, server.local_addr().to_string());
    let OrchestratorEnd { tx, mut rx } = sess.end;

    // Orchestrator → node.
    let mut down = vec![ToCompute::Ack { seq: 0 }];
    down.push(ToCompute::Run {
        execution: Box::new(Execution {
            id: "run-1".into(),
            ..Default::default()
        }),
        job: Box::new(Job {
            name: "j".into(),
            ..Default::default()
        }),
    });
    for i in 0..20 {
        down.push(ToCompute::Cancel {
            execution_id: format!("e{i}"),
            reason: "test".into(),
        });
        if i % 5 == 0 {
            down.push(ToCompute::Ack { seq: i });
        }
    }
    down.push(ToCompute::Logs {
        request_id: 1,
        execution_id: "run-1".into(),
        follow: true,
        tail: false,
    });
    down.push(ToCompute::FetchResult {
        request_id: 2,
        execution_id: "run-1".into(),
    });
    down.push(ToCompute::CancelRequest { request_id: 1 });
    for m in &down {
        tx.send(m.clone()).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < down.len() {
        got.push(within("commands", cend.inbox.recv()).await.unwrap());
    }
    for ch in [Channel::Control, Channel::Commands] {
        let sent: Vec<_> = down
            .iter()
            .filter(|m| session::compute_channel(m) == ch)
            .collect();
        let recv: Vec<_> = got
            .iter()
            .filter(|m| session::compute_channel(m) == ch)
            .collect();
        assert_eq!(recv, sent, "order on the {ch} channel");
    }

    // Node → orchestrator.
    let mut up = Vec::new();
    for seq in 1..=30u64 {
        up.push(report(seq));
        if seq % 10 == 0 {
            up.push(ToOrchestrator::Heartbeat {
                info: info("node-1"),
            });
        }
        if seq <= 5 {
            up.push(ToOrchestrator::LogLine {
                request_id: 7,
                stream: 1,
                line: format!("line {seq}"),
            });
            up.push(ToOrchestrator::ResultChunk {
                request_id: 8,
                data: vec![seq as u8; 1000],
            });
        }
    }
    up.push(ToOrchestrator::LogEnd {
        request_id: 7,
        error: String::new(),
    });
    up.push(ToOrchestrator::ResultEnd {
        request_id: 8,
        error: String::new(),
    });
    for m in &up {
        cend.outbox.send(m.clone()).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < up.len() {
        got.push(within("reports", rx.recv()).await.unwrap());
    }
    for ch in [
        Channel::Control,
        Channel::Reports,
        Channel::Logs,
        Channel::Results,
    ] {
        let sent: Vec<_> = up
            .iter()
            .filter(|m| session::orchestrator_channel(m) == ch)
            .collect();
        let recv: Vec<_> = got
            .iter()
            .filter(|m| session::orchestrator_channel(m) == ch)
            .collect();
        assert_eq!(recv, sent, "order on the {ch} channel");
    }

    // Both sides counted the same frames, and the link's path statistics are readable.
    let server_counts = server.stats().channel(Channel::Reports);
    let node_counts = node_stats.channel(Channel::Reports);
    assert_eq!(server_counts.frames_in, 30);
    assert_eq!(node_counts.frames_out, 30);
    assert_eq!(server_counts.bytes_in, node_counts.bytes_out);
    assert_eq!(server.stats().snapshot().connected, 1);
    assert!(node_stats.is_connected());
    let link = node_stats.link().expect("a current link");
    assert!(link.stats().path.cwnd > 0);
    assert!(sess.link.stats().path.sent_packets > 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_claiming_another_node_id_is_refused_and_nothing_is_handed_out() {
    let ca = tls::new_ca("t").unwrap();
    let stop = CancellationToken::new();
    let (server, mut incoming) = start(&ca, "orch-1", &stop);
    let (_ep, conn) = raw_connect(&node_identity(&ca, "node-a"), server.local_addr()).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame_of(&hello("node-b"))).await.unwrap();
    let (code, reason) = close_reason(&within("the close", conn.closed()).await);
    assert_eq!(code, u64::from(session::CLOSE_REFUSED));
    assert_eq!(reason, "certificate is for node-a, Hello claims node-b");
    assert!(matches!(
        incoming.try_recv(),
        Err(mpsc::error::TryRecvError::Empty)
    ));
    eventually("the refusal to be counted", || {
        server.stats().snapshot().refused == 1
    })
    .await;
    assert_eq!(server.stats().snapshot().handshakes, 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_is_refused() {
    let ca = tls::new_ca("t").unwrap();
    let other = tls::new_ca("other").unwrap();
    let stop = CancellationToken::new();
    let (server, mut incoming) = start(&ca, "orch-1", &stop);
    // Trusts the right CA (so it accepts the server) but presents a certificate of another one.
    let leaf = tls::issue(&other, "node-x", tls::Role::Compute).unwrap();
    let stranger = Identity::from_pem(&ca.cert, &leaf.cert, &leaf.key).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(
        stranger
            .client_config(
                session::SESSION_ALPN,
                tls::Role::Orchestrator,
                tls::NameCheck::Any,
            )
            .unwrap(),
    );
    // TLS 1.3: the client may finish its handshake before the server has judged its certificate.
    let err = match within(
        "the handshake",
        ep.connect(server.local_addr(), "orch-1").unwrap(),
    )
    .await
    {
        Err(e) => e,
        Ok(conn) => {
            if let Ok((mut send, _)) = conn.open_bi().await {
                let _ = send.write_all(&frame_of(&hello("node-x"))).await;
            }
            within("the close", conn.closed()).await
        }
    };
    assert!(
        matches!(err, quinn::ConnectionError::ConnectionClosed(_)),
        "refused by TLS, not by the application: {err}"
    );
    eventually("the failed handshake to be counted", || {
        server.stats().snapshot().handshake_failures >= 1
    })
    .await;
    assert!(matches!(
        incoming.try_recv(),
        Err(mpsc::error::TryRecvError::Empty)
    ));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_an_orchestrator_certified_by_another_ca() {
    let ca = tls::new_ca("t").unwrap();
    let other = tls::new_ca("other").unwrap();
    let stop = CancellationToken::new();
    let (server, _incoming) = start(&other, "orch-1", &stop);
    let (stats, _handed) = spawn_node(&ca, "node-1", vec![server.local_addr().to_string()], &stop);
    eventually("a failed handshake", || {
        stats.snapshot().handshake_failures >= 1
    })
    .await;
    let err = stats.last_error().unwrap();
    assert!(err.contains("certificate"), "{err}");
    assert_eq!(stats.snapshot().handshakes, 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_frame_or_a_message_on_the_wrong_channel_closes_only_that_connection() {
    let ca = tls::new_ca("t").unwrap();
    let stop = CancellationToken::new();
    let (server, mut incoming) = start(&ca, "orch-1", &stop);
    let (mut good, _, good_sess, _) =
        connect_node(&ca, "node-good", server.local_addr(), &mut incoming, &stop).await;
    let OrchestratorEnd {
        tx: good_tx,
        rx: mut good_rx,
    } = good_sess.end;

    // A corrupted frame after a valid Hello.
    let (_ep1, bad) = raw_connect(&node_identity(&ca, "node-bad"), server.local_addr()).await;
    let (mut send, _recv) = bad.open_bi().await.unwrap();
    send.write_all(&frame_of(&hello("node-bad"))).await.unwrap();
    let mut bad_sess = within("the bad node's session", incoming.recv())
        .await
        .unwrap();
    assert_eq!(bad_sess.node_id, "node-bad");
    let mut corrupt = frame_of(&ToOrchestrator::Heartbeat {
        info: info("node-bad"),
    });
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x40;
    send.write_all(&corrupt).await.unwrap();
    let (code, reason) = close_reason(&within("the close", bad.closed()).await);
    assert_eq!(code, u64::from(session::CLOSE_PROTOCOL));
    assert_eq!(
        reason,
        "bad frame on the control channel: frame checksum mismatch (corrupted frame)"
    );
    assert_eq!(
        within("the bad session's end", bad_sess.end.rx.recv()).await,
        Some(hello("node-bad"))
    );
    assert_eq!(
        within("the bad session's end", bad_sess.end.rx.recv()).await,
        None
    );

    // A report on the control stream.
    let (_ep2, wrong) = raw_connect(&node_identity(&ca, "node-wrong"), server.local_addr()).await;
    let (mut send, _recv) = wrong.open_bi().await.unwrap();
    send.write_all(&frame_of(&hello("node-wrong")))
        .await
        .unwrap();
    let _wrong_sess = within("the wrong node's session", incoming.recv())
        .await
        .unwrap();
    send.write_all(&frame_of(&report(1))).await.unwrap();
    let (code, reason) = close_reason(&within("the close", wrong.closed()).await);
    assert_eq!(code, u64::from(session::CLOSE_PROTOCOL));
    assert_eq!(
        reason,
        "Report belongs on the reports channel, not the control channel"
    );

    // A uni stream claiming to be the control channel.
    let (_ep3, sneaky) = raw_connect(&node_identity(&ca, "node-sneaky"), server.local_addr()).await;
    let (mut send, _recv) = sneaky.open_bi().await.unwrap();
    send.write_all(&frame_of(&hello("node-sneaky")))
        .await
        .unwrap();
    let _sneaky_sess = within("the sneaky node's session", incoming.recv())
        .await
        .unwrap();
    let mut uni = sneaky.open_uni().await.unwrap();
    uni.write_all(&frame_of(&ToOrchestrator::Heartbeat {
        info: info("node-sneaky"),
    }))
    .await
    .unwrap();
    let (_, reason) = close_reason(&within("the close", sneaky.closed()).await);
    assert_eq!(reason, "the peer may not open a control stream");

    // Frames announcing more than the limit, on every uni stream it may open.
    let (_ep4, big) = raw_connect(&node_identity(&ca, "node-big"), server.local_addr()).await;
    let (mut send, _recv) = big.open_bi().await.unwrap();
    send.write_all(&frame_of(&hello("node-big"))).await.unwrap();
    let _big_sess = within("the big node's session", incoming.recv())
        .await
        .unwrap();
    let mut header = caravel_net::frame::encode(1, b"").to_vec();
    header[0..4].copy_from_slice(&(1u32 << 30).to_be_bytes());
    for _ in 0..64 {
        let Ok(mut uni) = big.open_uni().await else {
            break;
        };
        if uni.write_all(&header).await.is_err() {
            break;
        }
    }
    let (code, reason) = close_reason(&within("the close", big.closed()).await);
    assert_eq!(code, u64::from(session::CLOSE_PROTOCOL));
    assert!(reason.contains("larger than the limit"), "{reason}");

    // The well-behaved node's session carries on, both ways.
    good_tx.send(ToCompute::Ack { seq: 9 }).await.unwrap();
    assert_eq!(
        within("the good node's Ack", good.inbox.recv()).await,
        Some(ToCompute::Ack { seq: 9 })
    );
    good.outbox.send(report(1)).await.unwrap();
    assert_eq!(
        within("the good node's report", good_rx.recv()).await,
        Some(report(1))
    );
    // One per bad session; the oversized one may be counted once more for each of its streams read
    // before its close took effect.
    let errors = server.stats().snapshot().protocol_errors;
    assert!((4..=3 + 64).contains(&errors), "{errors} protocol errors");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_speaking_another_protocol_version_is_refused_naming_both_versions() {
    let ca = tls::new_ca("t").unwrap();
    let stop = CancellationToken::new();
    let (server, mut incoming) = start(&ca, "orch-1", &stop);
    let (_ep, conn) = raw_connect(&node_identity(&ca, "node-old"), server.local_addr()).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let mut raw = frame_of(&hello("node-old"));
    raw[4..6].copy_from_slice(&9u16.to_be_bytes());
    send.write_all(&raw).await.unwrap();
    let (code, reason) = close_reason(&within("the close", conn.closed()).await);
    assert_eq!(code, u64::from(session::CLOSE_PROTOCOL));
    assert_eq!(
        reason,
        format!(
            "bad frame on the control channel: peer speaks Caravel protocol version 9, this node speaks version {}: upgrade the older side",
            frame::PROTOCOL_VERSION
        )
    );
    assert!(incoming.try_recv().is_err());
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reconnects_to_the_next_orchestrator_when_its_orchestrator_shuts_down() {
    let ca = tls::new_ca("t").unwrap();
    let (stop1, stop2, node_stop) = (
        CancellationToken::new(),
        CancellationToken::new(),
        CancellationToken::new(),
    );
    let (s1, mut in1) = start(&ca, "orch-1", &stop1);
    let (s2, mut in2) = start(&ca, "orch-2", &stop2);
    let (stats, mut handed) = spawn_node(
        &ca,
        "node-1",
        vec![s1.local_addr().to_string(), s2.local_addr().to_string()],
        &node_stop,
    );

    let (mut first, c1) = within("the first session", handed.recv()).await.unwrap();
    assert_eq!(c1.server_id, "orch-1");
    first.outbox.send(hello("node-1")).await.unwrap();
    let sess1 = within("orch-1's session", in1.recv()).await.unwrap();
    assert_eq!(sess1.node_id, "node-1");

    stop1.cancel();
    assert_eq!(
        within("the first session's end", first.inbox.recv()).await,
        None
    );

    let (second, c2) = within("the second session", handed.recv()).await.unwrap();
    assert_eq!(c2.server_id, "orch-2");
    assert_eq!(c2.orchestrator, s2.local_addr().to_string());
    second.outbox.send(hello("node-1")).await.unwrap();
    let mut sess2 = within("orch-2's session", in2.recv()).await.unwrap();
    assert_eq!(
        within("Hello", sess2.end.rx.recv()).await,
        Some(hello("node-1"))
    );
    let snap = stats.snapshot();
    assert_eq!(snap.handshakes, 2);
    assert_eq!(snap.reconnect_attempts, 1);
    assert_eq!(snap.connected, 1);
    let err = stats.last_error().unwrap();
    assert!(err.contains("orchestrator shutting down"), "{err}");
    node_stop.cancel();
    stop2.cancel();
}

/// Relays UDP between one client and `upstream`, holding every datagram back `delay` each way: a
/// path whose round trip is `2 × delay`.
async fn slow_path(upstream: SocketAddr, delay: Duration, stop: CancellationToken) -> SocketAddr {
    use std::sync::Arc;
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let relay = |from: Arc<tokio::net::UdpSocket>,
                 to: Arc<tokio::net::UdpSocket>,
                 towards_upstream: bool| {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let (n, src) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = from.recv_from(&mut buf) => r.unwrap(),
                };
                let dest = if towards_upstream {
                    *client.lock().unwrap() = Some(src);
                    upstream
                } else {
                    match *client.lock().unwrap() {
                        Some(c) => c,
                        None => continue,
                    }
                };
                let (to, datagram) = (to.clone(), buf[..n].to_vec());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = to.send_to(&datagram, dest).await;
                });
            }
        })
    };
    relay(front.clone(), back.clone(), true);
    relay(back, front, false);
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_orchestrator_is_skipped_without_waiting_out_its_handshake_timeout() {
    let ca = tls::new_ca("t").unwrap();
    let (stop, node_stop) = (CancellationToken::new(), CancellationToken::new());
    // Bound and never read: datagrams to it vanish, as into a cut link or a dead host.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (live, mut incoming) = start(&ca, "orch-live", &stop);
    let opts = SessionOptions {
        probe_interval: Duration::from_millis(200),
        ..SessionOptions::default()
    };
    let (stats, mut handed) = spawn_node_with(
        &ca,
        "node-1",
        vec![
            silent.local_addr().unwrap().to_string(),
            live.local_addr().to_string(),
        ],
        opts,
        &node_stop,
    );
    let (end, connected) = within("a session", handed.recv()).await.unwrap();
    assert_eq!(connected.server_id, "orch-live");
    // The dial to the silent address is still open (its handshake timeout is 10 s): the live
    // orchestrator was dialled beside it, not after it.
    let snap = stats.snapshot();
    assert_eq!(snap.unanswered_dials, 0, "{snap:?}");
    assert_eq!(snap.handshake_failures, 0, "{snap:?}");
    assert_eq!(snap.reconnect_attempts, 0, "{snap:?}");
    assert!(snap.redials >= 1, "{snap:?}");
    hello_is_accepted(&end, &mut incoming, "node-1").await;
    node_stop.cancel();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_slower_than_the_probe_interval_still_connects_with_its_first_dial() {
    let ca = tls::new_ca("t").unwrap();
    let (stop, node_stop) = (CancellationToken::new(), CancellationToken::new());
    let (server, mut incoming) = start(&ca, "orch-1", &stop);
    // A 2 s round trip against a 200 ms probe interval: about ten dials start before the first
    // answer, and none of them may be given up for being slow.
    let front = slow_path(server.local_addr(), Duration::from_secs(1), stop.clone()).await;
    let opts = SessionOptions {
        probe_interval: Duration::from_millis(200),
        ..SessionOptions::default()
    };
    let (stats, mut handed) =
        spawn_node_with(&ca, "node-1", vec![front.to_string()], opts, &node_stop);
    let (end, connected) = within("a session", handed.recv()).await.unwrap();
    assert_eq!(connected.server_id, "orch-1");
    let snap = stats.snapshot();
    assert_eq!(snap.handshake_failures, 0, "{snap:?}");
    assert_eq!(snap.unanswered_dials, 0, "{snap:?}");
    assert!(snap.redials >= 3, "{snap:?}");
    end.outbox.send(hello("node-1")).await.unwrap();
    let mut sess = within("the session", incoming.recv()).await.unwrap();
    assert_eq!(
        within("Hello", sess.end.rx.recv()).await,
        Some(hello("node-1"))
    );
    // Exactly one connection was accepted: the other answered dials were dropped.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), incoming.recv())
            .await
            .is_err(),
        "a second session was handed out"
    );
    node_stop.cancel();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_with_too_many_handshakes_in_progress_refuses_dials_and_the_node_backs_off()
{
    let ca = tls::new_ca("t").unwrap();
    let (stop, node_stop) = (CancellationToken::new(), CancellationToken::new());
    let opts = SessionOptions {
        max_pending_handshakes: 1,
        ..SessionOptions::default()
    };
    let (server, mut incoming) = SessionServer::start(
        "127.0.0.1:0".parse().unwrap(),
        &identity(&ca, "orch-1"),
        opts,
        SessionSecurity::default(),
        stop.clone(),
    )
    .unwrap();
    // A connection that never sends its Hello holds the only place.
    let (ep, hog) = raw_connect(&node_identity(&ca, "node-hog"), server.local_addr()).await;
    let (stats, mut handed) = spawn_node(
        &ca,
        "node-1",
        vec![server.local_addr().to_string()],
        &node_stop,
    );
    eventually("a refused dial", || {
        stats.snapshot().handshake_failures >= 2
    })
    .await;
    let err = stats.last_error().unwrap();
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(server.stats().snapshot().shed >= 2);
    assert_eq!(stats.snapshot().connected, 0);
    // The place frees up; the node's next round gets in.
    hog.close(0u32.into(), b"done");
    drop(ep);
    let (end, _) = within("a session", handed.recv()).await.unwrap();
    hello_is_accepted(&end, &mut incoming, "node-1").await;
    node_stop.cancel();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_sent_after_a_big_result_overtakes_it() {
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 80; // 20 MiB
    let ca = tls::new_ca("t").unwrap();
    let stop = CancellationToken::new();
    let (server, mut incoming) = start(&ca, "orch-1", &stop);
    let (cend, _, sess, _) =
        connect_node(&ca, "node-1", server.local_addr(), &mut incoming, &stop).await;
    let mut rx = sess.end.rx;

    // The whole result is handed to the transport before the report is (the orchestrator is not
    // reading yet), so a single ordered pipe would deliver the report last.
    for i in 0..CHUNKS {
        let m = ToOrchestrator::ResultChunk {
            request_id: 3,
            data: vec![i as u8; CHUNK],
        };
        within("the outbox", cend.outbox.send(m)).await.unwrap();
    }
    let end = ToOrchestrator::ResultEnd {
        request_id: 3,
        error: String::new(),
    };
    within("the outbox", cend.outbox.send(end)).await.unwrap();
    cend.outbox.send(report(1)).await.unwrap();
    // The orchestrator has the report off the wire while the result is still held back by its
    // full queue (the orchestrator reads nothing until now).
    eventually("the report frame to arrive", || {
        server.stats().channel(Channel::Reports).frames_in == 1
    })
    .await;

    let mut report_at = None;
    let mut data = Vec::with_capacity(CHUNKS * CHUNK);
    let mut i = 0usize;
    loop {
        match within("the result", rx.recv()).await.unwrap() {
            ToOrchestrator::Report { seq: 1, .. } => report_at = Some(i),
            ToOrchestrator::ResultChunk {
                request_id: 3,
                data: d,
            } => data.extend_from_slice(&d),
            ToOrchestrator::ResultEnd {
                request_id: 3,
                error,
            } => {
                assert_eq!(error, "");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
        i += 1;
    }
    let report_at = report_at.expect("the report arrived before the result ended");
    assert!(report_at < CHUNKS, "report at {report_at}");
    assert_eq!(data.len(), CHUNKS * CHUNK);
    for (n, chunk) in data.chunks(CHUNK).enumerate() {
        assert!(
            chunk.iter().all(|b| *b == n as u8),
            "chunk {n} intact and in order"
        );
    }
    stop.cancel();
}

/// `Compute.CongestionControl`: a node sending with each of quinn's controllers delivers a whole
/// 8 MiB result intact and in order (the choice changes pacing, never what arrives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_congestion_controller_delivers_a_whole_result_in_order() {
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 32;
    let ca = tls::new_ca("t").unwrap();
    for congestion in [Congestion::Cubic, Congestion::NewReno, Congestion::Bbr] {
        assert_eq!(congestion.as_str().parse::<Congestion>(), Ok(congestion));
        let (stop, node_stop) = (CancellationToken::new(), CancellationToken::new());
        let (server, mut incoming) = start(&ca, "orch-1", &stop);
        let opts = SessionOptions {
            congestion,
            ..SessionOptions::default()
        };
        let (_, mut handed) = spawn_node_with(
            &ca,
            "node-1",
            vec![server.local_addr().to_string()],
            opts,
            &node_stop,
        );
        let (cend, _) = within("a ComputeEnd", handed.recv()).await.unwrap();
        cend.outbox.send(hello("node-1")).await.unwrap();
        let mut sess = within("the session", incoming.recv()).await.unwrap();
        assert_eq!(
            within("Hello", sess.end.rx.recv()).await,
            Some(hello("node-1"))
        );
        let sender = tokio::spawn(async move {
            for i in 0..CHUNKS {
                let m = ToOrchestrator::ResultChunk {
                    request_id: 1,
                    data: vec![i as u8; CHUNK],
                };
                cend.outbox.send(m).await.unwrap();
            }
            let end = ToOrchestrator::ResultEnd {
                request_id: 1,
                error: String::new(),
            };
            cend.outbox.send(end).await.unwrap();
            cend
        });
        let mut next = 0usize;
        loop {
            match within("the result", sess.end.rx.recv()).await.unwrap() {
                ToOrchestrator::ResultChunk {
                    request_id: 1,
                    data,
                } => {
                    assert_eq!(data.len(), CHUNK, "{congestion:?}");
                    assert!(
                        data.iter().all(|b| *b == next as u8),
                        "{congestion:?}: chunk {next} intact and in order"
                    );
                    next += 1;
                }
                ToOrchestrator::ResultEnd {
                    request_id: 1,
                    error,
                } => {
                    assert_eq!(error, "");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(next, CHUNKS, "{congestion:?}");
        drop(sender.await.unwrap());
        node_stop.cancel();
        stop.cancel();
    }
    assert_eq!(
        "BBR".parse::<Congestion>(),
        Ok(Congestion::Bbr),
        "names are read in any case"
    );
    let e = "vegas".parse::<Congestion>().unwrap_err();
    assert!(e.contains("cubic, newreno or bbr"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------------------------

#[test]
fn backoff_ceilings_double_from_250_ms_and_stop_at_30_s() {
    let (base, cap) = (Duration::from_millis(250), Duration::from_secs(30));
    let ceilings: Vec<_> = (0..9)
        .map(|a| session::backoff_ceiling(base, cap, a).as_millis())
        .collect();
    assert_eq!(
        ceilings,
        [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
    );
    assert_eq!(session::backoff_ceiling(base, cap, u32::MAX), cap);
    assert_eq!(session::full_jitter(cap, 0.0), Duration::ZERO);
    assert_eq!(session::full_jitter(cap, 0.5), Duration::from_secs(15));
    assert_eq!(session::full_jitter(cap, 7.0), cap);
}

#[test]
fn jittered_backoff_grows_is_bounded_deterministic_per_seed_and_resets() {
    let (base, cap) = (Duration::from_millis(250), Duration::from_secs(30));
    let mut a = Backoff::new(base, cap, 42);
    let delays: Vec<_> = (0..200).map(|_| a.next_delay()).collect();
    for (i, d) in delays.iter().enumerate() {
        assert!(
            *d <= session::backoff_ceiling(base, cap, i as u32),
            "{i}: {d:?}"
        );
    }
    // Same seed, same sequence; another seed, another one.
    let mut again = Backoff::new(base, cap, 42);
    assert_eq!(
        (0..200).map(|_| again.next_delay()).collect::<Vec<_>>(),
        delays
    );
    let mut other = Backoff::new(base, cap, 43);
    assert_ne!(
        (0..200).map(|_| other.next_delay()).collect::<Vec<_>>(),
        delays
    );
    // Grows: late delays are spread over [0, 30 s], far above the first ceilings.
    let late = &delays[100..];
    let mean = late.iter().sum::<Duration>() / late.len() as u32;
    assert!(
        mean > Duration::from_secs(10) && mean < Duration::from_secs(20),
        "{mean:?}"
    );
    assert!(late.iter().any(|d| *d > Duration::from_secs(20)));
    // Reset: back to the first ceiling.
    a.reset();
    assert_eq!(a.attempt(), 0);
    assert!(a.next_delay() <= base);
    assert_eq!(a.attempt(), 1);
}

#[test]
fn probe_delays_stay_within_a_quarter_of_the_interval_and_leave_the_backoff_alone() {
    let interval = Duration::from_secs(2);
    assert_eq!(
        session::probe_jitter(interval, 0.0),
        Duration::from_millis(1500)
    );
    assert_eq!(
        session::probe_jitter(interval, 1.0),
        Duration::from_millis(2500)
    );
    assert_eq!(
        session::probe_jitter(interval, 9.0),
        Duration::from_millis(2500)
    );
    let (base, cap) = (Duration::from_millis(250), Duration::from_secs(30));
    let mut a = Backoff::new(base, cap, 42);
    let probes: Vec<_> = (0..500).map(|_| a.next_probe(interval)).collect();
    assert!(
        probes
            .iter()
            .all(|p| (Duration::from_millis(1500)..=Duration::from_millis(2500)).contains(p))
    );
    let mean = probes.iter().sum::<Duration>() / probes.len() as u32;
    assert!(
        (Duration::from_millis(1900)..=Duration::from_millis(2100)).contains(&mean),
        "{mean:?}"
    );
    // Probing neither grows the backoff nor shifts its sequence.
    assert_eq!(a.attempt(), 0);
    let mut fresh = Backoff::new(base, cap, 42);
    assert_eq!(
        (0..20).map(|_| a.next_delay()).collect::<Vec<_>>(),
        (0..20).map(|_| fresh.next_delay()).collect::<Vec<_>>()
    );
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9 -]{0,16}"
}

/// Which variant, by an exhaustive match: a new variant fails to compile here until it is generated.
fn compute_variant(m: &ToCompute) -> usize {
    match m {
        ToCompute::Run { .. } => 0,
        ToCompute::Cancel { .. } => 1,
        ToCompute::Ack { .. } => 2,
        ToCompute::Logs { .. } => 3,
        ToCompute::FetchResult { .. } => 4,
        ToCompute::CancelRequest { .. } => 5,
        ToCompute::LogsFrom { .. } => 6,
    }
}
const COMPUTE_VARIANTS: usize = 7;

fn orchestrator_variant(m: &ToOrchestrator) -> usize {
    match m {
        ToOrchestrator::Hello { .. } => 0,
        ToOrchestrator::Report { .. } => 1,
        ToOrchestrator::Heartbeat { .. } => 2,
        ToOrchestrator::LogLine { .. } => 3,
        ToOrchestrator::LogEnd { .. } => 4,
        ToOrchestrator::ResultChunk { .. } => 5,
        ToOrchestrator::ResultEnd { .. } => 6,
        ToOrchestrator::Inventory { .. } => 7,
        ToOrchestrator::LogLineAt { .. } => 8,
    }
}
const ORCHESTRATOR_VARIANTS: usize = 9;

fn to_compute() -> impl Strategy<Value = ToCompute> {
    prop_oneof![
        (text(), text()).prop_map(|(id, name)| ToCompute::Run {
            execution: Box::new(Execution {
                id,
                ..Default::default()
            }),
            job: Box::new(Job {
                name,
                ..Default::default()
            }),
        }),
        (text(), text()).prop_map(|(execution_id, reason)| ToCompute::Cancel {
            execution_id,
            reason
        }),
        any::<u64>().prop_map(|seq| ToCompute::Ack { seq }),
        (any::<u64>(), text(), any::<bool>(), any::<bool>()).prop_map(
            |(request_id, execution_id, follow, tail)| ToCompute::Logs {
                request_id,
                execution_id,
                follow,
                tail
            }
        ),
        (any::<u64>(), text()).prop_map(|(request_id, execution_id)| ToCompute::FetchResult {
            request_id,
            execution_id
        }),
        any::<u64>().prop_map(|request_id| ToCompute::CancelRequest { request_id }),
        (
            any::<u64>(),
            text(),
            any::<bool>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(request_id, execution_id, follow, stdout_offset, stderr_offset)| {
                    ToCompute::LogsFrom {
                        request_id,
                        execution_id,
                        follow,
                        stdout_offset,
                        stderr_offset,
                    }
                }
            ),
    ]
}

fn to_orchestrator() -> impl Strategy<Value = ToOrchestrator> {
    prop_oneof![
        (text(), any::<u64>()).prop_map(|(id, last_seq)| ToOrchestrator::Hello {
            info: info(&id),
            last_seq
        }),
        (any::<u64>(), text()).prop_map(|(seq, id)| ToOrchestrator::Report {
            seq,
            update: update(&id)
        }),
        text().prop_map(|id| ToOrchestrator::Heartbeat { info: info(&id) }),
        (any::<u64>(), any::<u8>(), text()).prop_map(|(request_id, stream, line)| {
            ToOrchestrator::LogLine {
                request_id,
                stream,
                line,
            }
        }),
        (any::<u64>(), text())
            .prop_map(|(request_id, error)| ToOrchestrator::LogEnd { request_id, error }),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..512))
            .prop_map(|(request_id, data)| ToOrchestrator::ResultChunk { request_id, data }),
        (any::<u64>(), text())
            .prop_map(|(request_id, error)| ToOrchestrator::ResultEnd { request_id, error }),
        proptest::collection::vec(text(), 0..4)
            .prop_map(|running| ToOrchestrator::Inventory { running }),
        (any::<u64>(), any::<u8>(), text(), any::<u64>()).prop_map(
            |(request_id, stream, line, end_offset)| ToOrchestrator::LogLineAt {
                request_id,
                stream,
                line,
                end_offset,
            }
        ),
    ]
}

fn as_frame(raw: &[u8]) -> Frame {
    frame::decode(&mut bytes::BytesMut::from(raw), 1 << 20)
        .unwrap()
        .unwrap()
}

/// The same payload under another channel's kind byte.
fn retagged(f: &Frame, c: Channel) -> Frame {
    as_frame(&frame::encode(c.kind(), &f.payload))
}

#[test]
fn the_generators_cover_every_variant() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen_c = [false; COMPUTE_VARIANTS];
    let mut seen_o = [false; ORCHESTRATOR_VARIANTS];
    for _ in 0..500 {
        seen_c[compute_variant(&to_compute().new_tree(&mut runner).unwrap().current())] = true;
        seen_o[orchestrator_variant(&to_orchestrator().new_tree(&mut runner).unwrap().current())] =
            true;
    }
    assert!(seen_c.iter().all(|s| *s), "{seen_c:?}");
    assert!(seen_o.iter().all(|s| *s), "{seen_o:?}");
}

proptest! {
    /// Every orchestrator → node message decodes back on its own channel and is refused on any other.
    #[test]
    fn every_command_round_trips_on_its_channel_only(m in to_compute()) {
        let (channel, raw) = session::encode_to_compute(&m).unwrap();
        prop_assert_eq!(channel, session::compute_channel(&m));
        prop_assert!(matches!(channel, Channel::Control | Channel::Commands));
        let f = as_frame(&raw);
        prop_assert_eq!(f.kind, channel.kind());
        prop_assert_eq!(session::decode_to_compute(channel, &f).unwrap(), m);
        for other in Channel::ALL.into_iter().filter(|c| *c != channel) {
            let wrong = session::decode_to_compute(other, &f).unwrap_err();
            prop_assert!(matches!(wrong, session::Error::WrongChannel { .. }), "{}", wrong);
            let retag = session::decode_to_compute(channel, &retagged(&f, other)).unwrap_err();
            prop_assert!(matches!(retag, session::Error::KindMismatch { .. }), "{}", retag);
        }
    }

    /// Every node → orchestrator message decodes back on its own channel and is refused on any other.
    #[test]
    fn every_report_round_trips_on_its_channel_only(m in to_orchestrator()) {
        let (channel, raw) = session::encode_to_orchestrator(&m).unwrap();
        prop_assert_eq!(channel, session::orchestrator_channel(&m));
        prop_assert_ne!(channel, Channel::Commands);
        prop_assert_eq!(channel.is_bulk(), session::bulk_request(&m).is_some());
        let f = as_frame(&raw);
        prop_assert_eq!(Channel::from_kind(f.kind), Some(channel));
        prop_assert_eq!(session::decode_to_orchestrator(channel, &f).unwrap(), m);
        for other in Channel::ALL.into_iter().filter(|c| *c != channel) {
            let wrong = session::decode_to_orchestrator(other, &f).unwrap_err();
            prop_assert!(matches!(wrong, session::Error::WrongChannel { .. }), "{}", wrong);
            let retag = session::decode_to_orchestrator(channel, &retagged(&f, other)).unwrap_err();
            prop_assert!(matches!(retag, session::Error::KindMismatch { .. }), "{}", retag);
        }
    }
}
