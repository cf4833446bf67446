//! Request/response RPCs between orchestrators over mutual-TLS QUIC: Raft's append-entries, vote
//! and install-snapshot, writes forwarded to the leader, read-index requests and membership admin.
//!
//! ```text
//!   RpcClient ── one QUIC connection per peer (lazy, re-dialled after any failure) ──▶ RpcServer
//!       call(kind, body) = open a bi-stream, write one frame, finish; read one frame back
//! ```
//!
//! The payloads are opaque bytes here (the root crate encodes openraft's types with postcard);
//! this module owns only transport: TLS identities (peers need an orchestrator certificate from the
//! cluster CA and are identified by the node id bound into it), frames ([`crate::frame`]), size limits, timeouts.
//! A stream that sends a bad frame gets an error answer and is closed; the connection and the process
//! carry on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::frame;
use crate::tls::{Identity, NameCheck, PeerPolicy, Role};

/// ALPN of the orchestrator-to-orchestrator protocol; the version is part of it, so a peer of
/// another major version fails the handshake with "no application protocol".
pub const RAFT_ALPN: &[u8] = b"caravel-raft/1";

/// Answer kinds.
const OK: u8 = 0;
const ERR: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr} answered with an error: {message}")]
    Remote { addr: String, message: String },
    #[error("connection to {addr} failed: {reason}")]
    Transport { addr: String, reason: String },
    #[error("bad frame from {addr}: {source}")]
    Frame {
        addr: String,
        #[source]
        source: frame::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::Error),
    #[error("cannot bind {addr}: {reason}")]
    Bind { addr: String, reason: String },
}

impl Error {
    /// Whether the peer could not be reached at all (as opposed to answering slowly or with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Connect { .. } | Error::Transport { .. })
    }
}

/// QUIC transport settings and limits of orchestrator links: a dead peer is noticed within
/// `idle_timeout`; keep-alives keep a quiet link (and NAT bindings) open. What one peer may cost this
/// member is bounded by `max_connections_per_peer` × (`max_streams` tasks, `in_flight_bytes` of frame
/// payloads being read or handled, `connection_window` of bytes buffered by QUIC).
#[derive(Debug, Clone, Copy)]
pub struct TransportOptions {
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
    pub max_frame: usize,
    /// Streams (requests) one connection may have open at once.
    pub max_streams: u32,
    /// A request frame must arrive whole within this, or its connection is closed.
    pub read_timeout: Duration,
    /// Payload bytes of request frames one connection may have in memory at once (read, or being
    /// handled); at least `max_frame`.
    pub in_flight_bytes: usize,
    /// QUIC receive window of one stream and of a whole connection.
    pub stream_window: u32,
    pub connection_window: u32,
    /// Connections one peer (by the node id in its certificate) may hold at once.
    pub max_connections_per_peer: usize,
    /// Connections, all peers together (handshakes in progress have their own table of 32, with
    /// a 10 s deadline).
    pub max_connections: usize,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            idle_timeout: Duration::from_secs(2),
            keep_alive: Duration::from_millis(400),
            max_frame: frame::DEFAULT_MAX_FRAME,
            max_streams: 256,
            read_timeout: Duration::from_secs(60),
            in_flight_bytes: 32 << 20,
            stream_window: 16 << 20,
            connection_window: 32 << 20,
            max_connections_per_peer: 4,
            max_connections: 64,
        }
    }
}

impl TransportOptions {
    fn transport(&self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(self.idle_timeout.try_into().ok());
        t.keep_alive_interval(Some(self.keep_alive));
        t.initial_rtt(INITIAL_RTT);
        t.max_concurrent_bidi_streams(self.max_streams.into());
        t.max_concurrent_uni_streams(0u32.into());
        t.stream_receive_window(self.stream_window.into());
        t.receive_window(self.connection_window.max(self.stream_window).into());
        Arc::new(t)
    }

    fn budget(&self) -> usize {
        self.in_flight_bytes.max(self.max_frame).max(1)
    }
}

/// What peers did that cost them their stream or connection, counted for
/// `caravel_raft_peer_violations_total{kind}`.
#[derive(Debug, Default)]
pub struct PeerStats {
    oversized_frame: AtomicU64,
    bad_frame: AtomicU64,
    read_timeout: AtomicU64,
    too_many_connections: AtomicU64,
    connections: AtomicU64,
    handshakes: AtomicU64,
}

/// Kinds of [`PeerStats`] violations.
pub const VIOLATION_KINDS: &[&str] = &[
    "oversized_frame",
    "bad_frame",
    "read_timeout",
    "too_many_connections",
];

impl PeerStats {
    /// `(kind, count)` for each of [`VIOLATION_KINDS`].
    pub fn violations(&self) -> Vec<(&'static str, u64)> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("oversized_frame", l(&self.oversized_frame)),
            ("bad_frame", l(&self.bad_frame)),
            ("read_timeout", l(&self.read_timeout)),
            ("too_many_connections", l(&self.too_many_connections)),
        ]
    }

    /// Peer connections open now.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    fn bump(a: &AtomicU64) {
        a.fetch_add(1, Ordering::Relaxed);
    }
}

/// One open connection of a peer; gives its place back when dropped.
struct ConnSlot {
    stats: Arc<PeerStats>,
    per_peer: Arc<Mutex<HashMap<String, usize>>>,
    peer: Option<String>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.stats.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(p) = &self.peer {
            let mut m = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = m.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    m.remove(p);
                }
            }
        }
    }
}

/// Request kinds from this value up are streams: one request frame, then any number of answer
/// frames until the server finishes the stream (logs and result downloads relayed between members).
pub const FIRST_STREAM_KIND: u8 = 128;

/// The answers of a streamed request, produced by the handler; closing it ends the stream.
pub type AnswerStream = tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>;

/// Handles one request: `(peer node id, kind, body)` → answer body or an error message.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        peer: String,
        kind: u8,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>>;

    /// Handles a streamed request (`kind >= FIRST_STREAM_KIND`); the default refuses it.
    fn stream(
        &self,
        _peer: String,
        kind: u8,
        _body: Bytes,
    ) -> BoxFuture<'static, Result<AnswerStream, String>> {
        Box::pin(async move { Err(format!("request kind {kind} is not a stream here")) })
    }
}

/// A QUIC endpoint that both answers peers and calls them from the same UDP socket, so every
/// datagram a member sends or receives uses its one advertised Raft port (firewalls, NAT and the
/// chaos proxy see one address per member).
#[derive(Debug, Clone)]
pub struct Server {
    endpoint: quinn::Endpoint,
    identity_client: quinn::ClientConfig,
    opts: TransportOptions,
    stats: Arc<PeerStats>,
}

impl Server {
    /// Binds `bind` (UDP); peers need a certificate from the cluster CA. Nothing is answered until
    /// [`Server::serve`].
    pub fn bind(
        bind: SocketAddr,
        identity: &Identity,
        alpn: &[u8],
        opts: TransportOptions,
    ) -> Result<Server, Error> {
        // Only orchestrators speak this protocol, on both ends: a compute node's certificate of the
        // same CA is refused in the handshake.
        let mut cfg = identity.server_config(alpn, &PeerPolicy::role(Role::Orchestrator))?;
        cfg.transport_config(opts.transport());
        let mut client = identity.client_config(alpn, Role::Orchestrator, NameCheck::Dialled)?;
        client.transport_config(opts.transport());
        let endpoint = quinn::Endpoint::server(cfg, bind).map_err(|e| Error::Bind {
            addr: bind.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Server {
            endpoint,
            identity_client: client,
            opts,
            stats: Arc::default(),
        })
    }

    /// Binds and serves at once.
    pub fn start(
        bind: SocketAddr,
        identity: &Identity,
        alpn: &[u8],
        opts: TransportOptions,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<Server, Error> {
        let s = Server::bind(bind, identity, alpn, opts)?;
        s.serve(handler, shutdown);
        Ok(s)
    }

    /// A client that calls peers from this endpoint's socket.
    pub fn client(&self) -> Client {
        let mut endpoint = self.endpoint.clone();
        endpoint.set_default_client_config(self.identity_client.clone());
        Client {
            endpoint,
            conns: Default::default(),
            opts: self.opts,
        }
    }

    /// What peers did wrong, and how many are connected.
    pub fn stats(&self) -> Arc<PeerStats> {
        self.stats.clone()
    }

    /// Answers requests with `handler` until `shutdown`.
    pub fn serve(&self, handler: Arc<dyn Handler>, shutdown: CancellationToken) {
        let ep = self.endpoint.clone();
        let opts = self.opts;
        let stats = self.stats.clone();
        let per_peer: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        tokio::spawn(async move {
            loop {
                let incoming = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    i = ep.accept() => match i { Some(i) => i, None => break },
                };
                // Handshakes in progress have their own small table, with a short deadline, so
                // dials without a certificate (or from spoofed addresses) cannot hold the places of
                // members; once it is half full, an address must prove itself (a QUIC retry) first.
                let handshakes = stats.handshakes.load(Ordering::Relaxed) as usize;
                if handshakes >= MAX_HANDSHAKES
                    || stats.connections() as usize >= opts.max_connections
                {
                    PeerStats::bump(&stats.too_many_connections);
                    tracing::warn!(remote = %incoming.remote_address(), "refusing a raft peer: too many connections or handshakes");
                    incoming.refuse();
                    continue;
                }
                if handshakes >= MAX_HANDSHAKES / 2 && !incoming.remote_address_validated() {
                    let _ = incoming.retry();
                    continue;
                }
                stats.handshakes.fetch_add(1, Ordering::Relaxed);
                let handshake = HandshakeSlot(stats.clone());
                let handler = handler.clone();
                let shutdown = shutdown.clone();
                let stats = stats.clone();
                let per_peer = per_peer.clone();
                tokio::spawn(async move {
                    let connected = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await;
                    drop(handshake);
                    let conn = match connected {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "raft peer handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("raft peer handshake timed out");
                            return;
                        }
                    };
                    let peer = match crate::tls::peer_node_id(&conn) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(remote = %conn.remote_address(), error = %e, "refusing peer");
                            conn.close(1u32.into(), b"no node id in certificate");
                            return;
                        }
                    };
                    // Only connections that completed the handshake take a place in the table.
                    if stats.connections.fetch_add(1, Ordering::Relaxed) as usize
                        >= opts.max_connections
                    {
                        stats.connections.fetch_sub(1, Ordering::Relaxed);
                        PeerStats::bump(&stats.too_many_connections);
                        tracing::warn!(%peer, "refusing a raft connection: too many connections");
                        conn.close(CLOSE_LIMIT.into(), b"too many connections");
                        return;
                    }
                    let mut slot = ConnSlot {
                        stats: stats.clone(),
                        per_peer: per_peer.clone(),
                        peer: None,
                    };
                    {
                        let mut m = slot.per_peer.lock().unwrap_or_else(|e| e.into_inner());
                        let n = m.entry(peer.clone()).or_default();
                        if *n >= opts.max_connections_per_peer {
                            drop(m);
                            PeerStats::bump(&stats.too_many_connections);
                            tracing::warn!(%peer, remote = %conn.remote_address(), "refusing a raft connection: the peer holds too many");
                            conn.close(CLOSE_LIMIT.into(), b"too many connections from this peer");
                            return;
                        }
                        *n += 1;
                    }
                    slot.peer = Some(peer.clone());
                    serve_connection(conn, peer, handler, opts, stats, shutdown).await;
                    drop(slot);
                });
            }
            ep.close(0u32.into(), b"shutting down");
        });
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

/// Close code of a connection that broke a limit.
const CLOSE_LIMIT: u32 = 2;

/// Handshakes in progress at once, all dialers together.
const MAX_HANDSHAKES: usize = 32;

/// A handshake must complete within this (a member's takes milliseconds, a distant one a few RTTs).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One handshake in progress; gives its place back when dropped.
struct HandshakeSlot(Arc<PeerStats>);

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(
    conn: quinn::Connection,
    peer: String,
    handler: Arc<dyn Handler>,
    opts: TransportOptions,
    stats: Arc<PeerStats>,
    shutdown: CancellationToken,
) {
    let budget = Arc::new(tokio::sync::Semaphore::new(opts.budget()));
    loop {
        let (mut send, mut recv) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => { conn.close(0u32.into(), b"shutting down"); return; }
            s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => return },
        };
        let handler = handler.clone();
        let peer = peer.clone();
        let (conn, stats, budget) = (conn.clone(), stats.clone(), budget.clone());
        tokio::spawn(async move {
            let read = tokio::time::timeout(
                opts.read_timeout,
                frame::read_budgeted(&mut recv, opts.max_frame, &budget),
            )
            .await;
            let request = match read {
                Err(_) => {
                    PeerStats::bump(&stats.read_timeout);
                    tracing::warn!(%peer, timeout = ?opts.read_timeout, "a raft peer's request did not arrive in time; closing its connection");
                    conn.close(CLOSE_LIMIT.into(), b"request frame read timed out");
                    return;
                }
                Ok(Err(e @ frame::Error::TooLarge { .. })) => {
                    PeerStats::bump(&stats.oversized_frame);
                    tracing::warn!(%peer, error = %e, "a raft peer announced an oversized frame; closing its connection");
                    conn.close(CLOSE_LIMIT.into(), b"frame larger than the limit");
                    return;
                }
                Ok(Ok(Some((f, permit)))) if f.kind >= FIRST_STREAM_KIND => {
                    drop(permit);
                    serve_stream(&handler, peer, f, send).await;
                    return;
                }
                Ok(other) => other,
            };
            let answer = match request {
                Ok(Some((f, permit))) => {
                    let a = handler.handle(peer.clone(), f.kind, f.payload).await;
                    drop(permit);
                    a
                }
                Ok(None) => Err("empty request".to_string()),
                Err(e) => {
                    if !matches!(e, frame::Error::Io(_)) {
                        PeerStats::bump(&stats.bad_frame);
                    }
                    tracing::warn!(%peer, error = %e, "bad request frame");
                    Err(format!("bad request frame: {e}"))
                }
            };
            let (kind, body) = match &answer {
                Ok(b) => (OK, b.as_slice()),
                Err(m) => (ERR, m.as_bytes()),
            };
            if frame::write(&mut send, kind, body).await.is_ok() {
                let _ = send.finish();
                // Wait until the peer has read the answer (or gone) before dropping the stream.
                let _ = tokio::time::timeout(Duration::from_secs(30), send.stopped()).await;
            }
        });
    }
}

/// Writes a streamed request's answers, one frame each; a reader that goes away ends it.
async fn serve_stream(
    handler: &Arc<dyn Handler>,
    peer: String,
    f: frame::Frame,
    mut send: quinn::SendStream,
) {
    match handler.stream(peer.clone(), f.kind, f.payload).await {
        Err(m) => {
            let _ = frame::write(&mut send, ERR, m.as_bytes()).await;
        }
        Ok(mut answers) => {
            while let Some(a) = answers.recv().await {
                let (kind, body) = match &a {
                    Ok(b) => (OK, b.as_slice()),
                    Err(m) => (ERR, m.as_bytes()),
                };
                if frame::write(&mut send, kind, body).await.is_err() {
                    tracing::debug!(%peer, "the caller of a streamed request went away");
                    return;
                }
            }
        }
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(30), send.stopped()).await;
}

/// The answers of a streamed call ([`Client::call_stream`]). Dropping it stops the stream.
#[derive(Debug)]
pub struct CallStream {
    recv: quinn::RecvStream,
    addr: String,
    max_frame: usize,
    done: bool,
}

impl CallStream {
    /// The next answer; `None` once the peer finished the stream.
    pub async fn next(&mut self) -> Option<Result<Bytes, Error>> {
        if self.done {
            return None;
        }
        let transport = |e: String| Error::Transport {
            addr: self.addr.clone(),
            reason: e,
        };
        let r = match frame::read(&mut self.recv, self.max_frame).await {
            Ok(Some(f)) if f.kind == OK => Some(Ok(f.payload)),
            Ok(Some(f)) => Some(Err(Error::Remote {
                addr: self.addr.clone(),
                message: String::from_utf8_lossy(&f.payload).into_owned(),
            })),
            Ok(None) => None,
            Err(frame::Error::Io(e)) => Some(Err(transport(e.to_string()))),
            Err(e) => Some(Err(Error::Frame {
                addr: self.addr.clone(),
                source: e,
            })),
        };
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }
}

impl Drop for CallStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.recv.stop(0u32.into());
        }
    }
}

/// The calling side: one lazily dialled, cached connection per peer.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: quinn::Endpoint,
    conns: Arc<Mutex<HashMap<(String, String), Slot>>>,
    opts: TransportOptions,
}

/// A peer's connection, or the handshake that will give it.
#[derive(Debug)]
enum Slot {
    Ready(quinn::Connection),
    /// A handshake in its own task: calls wait on it for as long as their own deadline allows,
    /// and it goes on past them (up to [`DIAL_TIMEOUT`]). Were each call to start a handshake and
    /// drop it at its deadline, a peer whose handshake takes longer than the shortest RPC
    /// deadline (250 ms heartbeats on a loaded machine) could never be reached again.
    Dialling {
        since: std::time::Instant,
        id: u64,
        rx: tokio::sync::watch::Receiver<Option<Result<quinn::Connection, String>>>,
    },
}

/// A handshake unanswered for this long is joined by a fresh one (the first's Initial packets may
/// have gone to a peer that was not yet listening, and QUIC resends them ever more slowly: after
/// 0.3, 0.9, 2.1 s… from [`INITIAL_RTT`]), so a restarted peer is reached within about this long
/// of listening again, and at most four handshakes a second are started towards a silent peer
/// (each a 1,200-byte datagram and its resends, for at most [`DIAL_TIMEOUT`]). With 1 s, a
/// restarted member waited up to a second for its leader's next dial before catching up.
const REDIAL_AFTER: Duration = Duration::from_millis(250);

/// The RTT a new connection assumes before it has measured one (RFC 9002's default is 333 ms, so
/// an unanswered Initial is resent only after about a second). Orchestrators are usually close;
/// a farther peer only costs a few early resends.
const INITIAL_RTT: Duration = Duration::from_millis(100);

static DIAL_IDS: AtomicU64 = AtomicU64::new(0);

/// How long a handshake may take, whatever the calls waiting on it allow.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    pub fn new(identity: &Identity, alpn: &[u8], opts: TransportOptions) -> Result<Client, Error> {
        let mut cfg = identity.client_config(alpn, Role::Orchestrator, NameCheck::Dialled)?;
        cfg.transport_config(opts.transport());
        let bind = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| Error::Bind {
            addr: bind.to_string(),
            reason: e.to_string(),
        })?;
        endpoint.set_default_client_config(cfg);
        Ok(Client {
            endpoint,
            conns: Default::default(),
            opts,
        })
    }

    async fn connection(
        &self,
        addr: &str,
        server_id: &str,
        deadline: Duration,
    ) -> Result<quinn::Connection, Error> {
        let key = (addr.to_string(), server_id.to_string());
        let connect_err = |reason: String| Error::Connect {
            addr: addr.to_string(),
            reason,
        };
        let mut rx = {
            let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            match conns.get(&key) {
                Some(Slot::Ready(c)) if c.close_reason().is_none() => return Ok(c.clone()),
                Some(Slot::Dialling { since, rx, .. }) if since.elapsed() < REDIAL_AFTER => {
                    rx.clone()
                }
                _ => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    let id = DIAL_IDS.fetch_add(1, Ordering::Relaxed);
                    conns.insert(
                        key.clone(),
                        Slot::Dialling {
                            since: std::time::Instant::now(),
                            id,
                            rx: rx.clone(),
                        },
                    );
                    let (endpoint, conns) = (self.endpoint.clone(), self.conns.clone());
                    let (addr, server_id) = (addr.to_string(), server_id.to_string());
                    tokio::spawn(async move {
                        let r = dial(&endpoint, &addr, &server_id).await;
                        {
                            let mut map = conns.lock().unwrap_or_else(|e| e.into_inner());
                            let ours = matches!(map.get(&key), Some(Slot::Dialling { id: d, .. }) if *d == id);
                            match &r {
                                // A connection is worth keeping even if a newer dial is under way.
                                Ok(c) => {
                                    if ours
                                        || !matches!(map.get(&key), Some(Slot::Ready(r)) if r.close_reason().is_none())
                                    {
                                        map.insert(key, Slot::Ready(c.clone()));
                                    }
                                }
                                Err(_) if ours => {
                                    map.remove(&key);
                                }
                                Err(_) => {}
                            }
                        }
                        let _ = tx.send(Some(r));
                    });
                    rx
                }
            }
        };
        match tokio::time::timeout(deadline, rx.wait_for(Option::is_some)).await {
            Err(_) => Err(connect_err(format!(
                "handshake took longer than {deadline:?} (it goes on for the next call)"
            ))),
            Ok(Err(_)) => Err(connect_err("the handshake ended without an answer".into())),
            Ok(Ok(v)) => match v.as_ref() {
                Some(Ok(c)) => Ok(c.clone()),
                Some(Err(reason)) => Err(connect_err(reason.clone())),
                None => Err(connect_err("the handshake ended without an answer".into())),
            },
        }
    }

    /// Forgets the cached connection to a peer (the next call dials again); a handshake under way
    /// is left to finish.
    fn drop_connection(&self, addr: &str, server_id: &str) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let key = (addr.to_string(), server_id.to_string());
        if matches!(conns.get(&key), Some(Slot::Ready(_))) {
            conns.remove(&key);
        }
    }

    /// Calls `kind` on the peer `server_id` at `addr` and waits at most `timeout` for its answer.
    pub async fn call(
        &self,
        addr: &str,
        server_id: &str,
        kind: u8,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Bytes, Error> {
        let attempt = async {
            let conn = self.connection(addr, server_id, timeout).await?;
            let transport = |e: String| Error::Transport {
                addr: addr.to_string(),
                reason: e,
            };
            let (mut send, mut recv) =
                conn.open_bi().await.map_err(|e| transport(e.to_string()))?;
            frame::write(&mut send, kind, body)
                .await
                .map_err(|e| transport(e.to_string()))?;
            let _ = send.finish();
            match frame::read(&mut recv, self.opts.max_frame).await {
                Ok(Some(f)) if f.kind == OK => Ok(f.payload),
                Ok(Some(f)) => Err(Error::Remote {
                    addr: addr.to_string(),
                    message: String::from_utf8_lossy(&f.payload).into_owned(),
                }),
                Ok(None) => Err(transport(
                    "the peer closed the stream without answering".into(),
                )),
                Err(frame::Error::Io(e)) => Err(transport(e.to_string())),
                Err(e) => Err(Error::Frame {
                    addr: addr.to_string(),
                    source: e,
                }),
            }
        };
        let res = match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                addr: addr.to_string(),
                timeout,
            }),
        };
        if let Err(e) = &res
            && (e.is_unreachable() || matches!(e, Error::Frame { .. }))
        {
            self.drop_connection(addr, server_id);
        }
        res
    }

    /// Opens a streamed request (`kind >= FIRST_STREAM_KIND`) to the peer `server_id` at `addr`;
    /// connecting and sending the request may take at most `timeout`, the answers come as they do.
    pub async fn call_stream(
        &self,
        addr: &str,
        server_id: &str,
        kind: u8,
        body: &[u8],
        timeout: Duration,
    ) -> Result<CallStream, Error> {
        debug_assert!(kind >= FIRST_STREAM_KIND);
        let attempt = async {
            let conn = self.connection(addr, server_id, timeout).await?;
            let transport = |e: String| Error::Transport {
                addr: addr.to_string(),
                reason: e,
            };
            let (mut send, recv) = conn.open_bi().await.map_err(|e| transport(e.to_string()))?;
            frame::write(&mut send, kind, body)
                .await
                .map_err(|e| transport(e.to_string()))?;
            let _ = send.finish();
            Ok(CallStream {
                recv,
                addr: addr.to_string(),
                max_frame: self.opts.max_frame,
                done: false,
            })
        };
        let res = match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                addr: addr.to_string(),
                timeout,
            }),
        };
        if let Err(e) = &res
            && e.is_unreachable()
        {
            self.drop_connection(addr, server_id);
        }
        res
    }

    /// Closes every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"closing");
    }
}

/// Resolves `addr` and completes a handshake with `server_id` there, within [`DIAL_TIMEOUT`].
async fn dial(
    endpoint: &quinn::Endpoint,
    addr: &str,
    server_id: &str,
) -> Result<quinn::Connection, String> {
    let sock = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| e.to_string())?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| "the name resolves to no IPv4 address".to_string())?;
    let connecting = endpoint
        .connect(sock, server_id)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(DIAL_TIMEOUT, connecting).await {
        Err(_) => Err(format!("handshake took longer than {DIAL_TIMEOUT:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(c)) => Ok(c),
    }
}
