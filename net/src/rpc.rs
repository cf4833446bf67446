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

/// QUIC transport settings for orchestrator links: a dead peer is noticed within `idle_timeout`;
/// keep-alives keep a quiet link (and NAT bindings) open.
#[derive(Debug, Clone, Copy)]
pub struct TransportOptions {
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
    pub max_frame: usize,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            idle_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_millis(1000),
            max_frame: frame::DEFAULT_MAX_FRAME,
        }
    }
}

impl TransportOptions {
    fn transport(&self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(self.idle_timeout.try_into().ok());
        t.keep_alive_interval(Some(self.keep_alive));
        t.max_concurrent_bidi_streams(1024u32.into());
        Arc::new(t)
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

    /// Answers requests with `handler` until `shutdown`.
    pub fn serve(&self, handler: Arc<dyn Handler>, shutdown: CancellationToken) {
        let ep = self.endpoint.clone();
        let opts = self.opts;
        tokio::spawn(async move {
            loop {
                let incoming = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    i = ep.accept() => match i { Some(i) => i, None => break },
                };
                let handler = handler.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let conn = match incoming.await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!(error = %e, "raft peer handshake failed");
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
                    serve_connection(conn, peer, handler, opts.max_frame, shutdown).await;
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

async fn serve_connection(
    conn: quinn::Connection,
    peer: String,
    handler: Arc<dyn Handler>,
    max_frame: usize,
    shutdown: CancellationToken,
) {
    loop {
        let (mut send, mut recv) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => { conn.close(0u32.into(), b"shutting down"); return; }
            s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => return },
        };
        let handler = handler.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            let request = match frame::read(&mut recv, max_frame).await {
                Ok(Some(f)) if f.kind >= FIRST_STREAM_KIND => {
                    serve_stream(&handler, peer, f, send).await;
                    return;
                }
                other => other,
            };
            let answer = match request {
                Ok(Some(f)) => handler.handle(peer.clone(), f.kind, f.payload).await,
                Ok(None) => Err("empty request".to_string()),
                Err(e) => {
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
    conns: Arc<Mutex<HashMap<(String, String), quinn::Connection>>>,
    opts: TransportOptions,
}

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
        if let Some(c) = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let connect_err = |reason: String| Error::Connect {
            addr: addr.to_string(),
            reason,
        };
        let sock = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| connect_err(e.to_string()))?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| connect_err("the name resolves to no IPv4 address".into()))?;
        let connecting = self
            .endpoint
            .connect(sock, server_id)
            .map_err(|e| connect_err(e.to_string()))?;
        let conn = match tokio::time::timeout(deadline, connecting).await {
            Err(_) => {
                return Err(connect_err(format!(
                    "handshake took longer than {deadline:?}"
                )));
            }
            Ok(Err(e)) => return Err(connect_err(e.to_string())),
            Ok(Ok(c)) => c,
        };
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, conn.clone());
        Ok(conn)
    }

    /// Forgets the cached connection to a peer (the next call dials again).
    fn drop_connection(&self, addr: &str, server_id: &str) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(addr.to_string(), server_id.to_string()));
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
