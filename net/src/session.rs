//! Compute sessions over mutual-TLS QUIC: one connection per compute node, dialled by the node, carrying
//! the same two ends as [`crate::inproc`] ([`OrchestratorEnd`] on the orchestrator, [`ComputeEnd`] on
//! the node), so neither side knows which transport it runs on.
//!
//! Owns: the session ALPN, the mapping of [`ToCompute`]/[`ToOrchestrator`] variants to QUIC streams,
//! identity checks (the node id is bound to the client certificate), the node's reconnect loop with
//! jittered backoff, transport settings for lossy links and the session counters. Must not depend on
//! the orchestrator's or the compute node's logic: it moves messages and judges only their framing,
//! their channel and the claimed identity.
//!
//! # Channels
//!
//! ```text
//!  compute node (client, dials out)                           orchestrator (SessionServer)
//!
//!  ComputeEnd.outbox ─▶ dispatcher ─┬─ control  bi-stream, opened first ──▶ Hello, Heartbeat ─┐
//!                                   ├─ reports  1 uni stream ─────────────▶ Report ───────────┤
//!                                   ├─ logs     1 uni stream per request ─▶ LogLine…LogEnd ───┼─▶ OrchestratorEnd.rx
//!                                   └─ results  1 uni stream per request ─▶ ResultChunk…End ──┘
//!
//!  ComputeEnd.inbox ◀─┬─ control  (other half of the bi-stream) ◀─ Ack ───────────┬─ router ◀─ OrchestratorEnd.tx
//!                     └─ commands 1 uni stream, opened by the orchestrator ◀──────┘
//!                                 Run, Cancel, Logs, FetchResult, CancelRequest
//! ```
//!
//! | message | channel | stream |
//! | --- | --- | --- |
//! | `ToOrchestrator::Hello`, `Heartbeat` | control | the bi-stream the node opens first (node → orchestrator half) |
//! | `ToCompute::Ack` | control | the same bi-stream (orchestrator → node half) |
//! | `ToCompute::Run`, `Cancel`, `Logs`, `FetchResult`, `CancelRequest` | commands | one uni stream, orchestrator → node |
//! | `ToOrchestrator::Report` | reports | one uni stream, node → orchestrator |
//! | `ToOrchestrator::LogLine`…`LogEnd` | logs | one uni stream per `request_id`, finished after `LogEnd` |
//! | `ToOrchestrator::ResultChunk`…`ResultEnd` | results | one uni stream per `request_id`, finished after `ResultEnd` |
//!
//! `Ack` travels on control, not commands: it answers `Hello` and acknowledges reports, so it must
//! never wait behind a large `Run` or a stalled commands stream (the compute node already handles
//! commands that arrive before the `Ack`). Order is kept within a channel (and within one request's
//! bulk stream), never across channels. Stream priorities: control 3, commands and reports 2, logs 1,
//! results 0, so a report queued behind megabytes of result data is sent first.
//!
//! Every frame is a [`crate::frame`] frame whose `kind` byte is the channel ([`Channel::kind`]) and
//! whose payload is the message in [`caravel_model::codec`]. A receiver checks both: a frame that does
//! not decode, a frame of another protocol version (the close reason names both versions) and a message
//! on the wrong channel close *that* connection with the reason, never the process. The orchestrator
//! hands out nothing until the first control message is a `Hello` whose `info.node_id` is the id in
//! the client certificate ("certificate is for X, Hello claims Y" otherwise); every later `Hello` and
//! `Heartbeat` is checked the same way.
//!
//! Bulk and reports share the node's one outbox (the seam has one queue), so the node's dispatcher
//! never waits for a bulk stream: it parks up to [`SessionOptions::bulk_buffer`] bytes of log and
//! result frames per connection and only then stops reading the outbox (backpressure on the producer).
//! Within that budget a report sent after a big result still overtakes it.
//!
//! # Trust
//!
//! The orchestrator requires a client certificate of the cluster CA with the role `compute`, not on
//! the deny list ([`SessionSecurity::deny`]: rejected and deleted nodes), checked in the handshake.
//! Compute nodes dial `HOST:PORT` and do not know the orchestrator's node id, so a node verifies the
//! server's chain against the cluster CA for the name the certificate itself carries, and requires
//! the role `orchestrator` ([`tls::RoleServerVerifier`] with [`tls::NameCheck::Any`]): a compute
//! node's certificate cannot pose as an orchestrator. The orchestrator's id is reported in
//! [`Connected::server_id`].
//!
//! Joining by token: when the orchestrator has a join handler ([`SessionSecurity::join`]), it also
//! offers ALPN `caravel-join/1` and lets clients without a certificate finish the handshake; such a
//! connection gets one bounded request/answer ([`join`]) and nothing else, and a session ALPN
//! connection without a certificate is refused as before. The joining node trusts the orchestrator
//! only if its chain ends in the CA pinned by the token ([`tls::PinnedCaVerifier`]).
//!
//! # Transport settings for lossy, high-latency links ([`SessionOptions::default`])
//!
//! - keep-alive 2 s, sent by the node only: its PINGs refresh the orchestrator's idle timer and the
//!   NAT binding of a node behind NAT, and an orchestrator with 10,000 sessions sends none of its own.
//! - idle timeout 10 s (QUIC uses the smaller of both peers'): the only "link down" signal QUIC has; a
//!   link dead for 10 s ends the session, the node reconnects (to the next orchestrator) and resyncs.
//!   Five keep-alives (plus their retransmissions) fit in it, so even 20 % loss does not end a live
//!   session; "node lost" decisions belong to the orchestrator's heartbeat deadline, not to this.
//! - initial RTT 100 ms instead of RFC 9002's 333 ms: the first loss timer fires sooner, so a lost
//!   handshake packet on a lossy link costs ~0.3 s instead of ~1 s.
//! - stream window 4 MiB (a 100 Mbit/s × 300 ms path), connection window 16 MiB and send window 16 MiB:
//!   windows are credit, not allocations, and the connection window stays larger than a stream's so
//!   one stalled bulk stream never blocks reports. Datagrams are disabled (unused).
//! - handshake timeout 10 s (QUIC handshake, then again for the `Hello`).
//! - frames up to 4 MiB (a 256 KiB result chunk fits with room to spare).
//! - GSO stays on ([`SessionOptions::segmentation_offload`]): some NICs, virtio drivers and Android
//!   kernels fail GSO `sendmsg` with EIO/EINVAL (quinn#1128, #2202, #2399); quinn-udp then disables
//!   it by itself, at the cost of a burst of spurious losses at startup — set it to `false` on such
//!   hosts. A blocked tokio worker thread looks exactly like a dead link (quinn#1509): nothing here
//!   blocks, and callers must not block the runtime either.
//! - MTU discovery as in quinn (black-hole detection falls back to 1200-byte packets); BBR unless
//!   [`SessionOptions::congestion`] says otherwise (`Compute.CongestionControl` on a node): edge
//!   links lose packets for reasons other than congestion, and CUBIC reads each loss as congestion
//!   (at 5 % loss it kept ≈ 12 % of its lossless log goodput, BBR ≈ 75 %; docs/benchmarks.md).
//! - connection rounds: a round dials the orchestrators in turn, a fresh dial every 2 s (±25 %
//!   jitter, [`SessionOptions::probe_interval`]) for as long as none has been answered, each dial
//!   open until its own 10 s handshake timeout. QUIC retransmits an unanswered Initial after 0.3 s,
//!   0.9 s, 2.1 s, 4.5 s, 9.3 s (PTO doubling from the 100 ms initial RTT), so one dial into a dead
//!   link probes it ever more rarely: the old single-dial scheme healed 1.3–3.9 s after a 60 s cut.
//!   Overlapping dials probe a silent link several times a second (measured: ≈ 5 datagrams/s,
//!   ≈ 6 KB/s per node without a session) whatever the length of the cut, and healed 0.1–0.3 s after
//!   it (docs/benchmarks.md); they give a slow path (RTT up to the handshake timeout) its full time,
//!   and skip a dead orchestrator within 2 s instead of 10 s. The first dial answered is finished;
//!   the others are dropped.
//! - at most 256 handshakes in progress per orchestrator ([`SessionOptions::max_pending_handshakes`]):
//!   a dial beyond that is refused at once (CONNECTION_REFUSED, before any cryptography), which ends
//!   that node's round and sends it into its exponential backoff — a fleet that reconnects together
//!   after an orchestrator outage spreads itself out instead of multiplying its dials.
//! - reconnect backoff between rounds: full jitter over `min(30 s, 250 ms × 2^round)`, reset after a
//!   session that lived longer than 30 s. A round ends only by a session or a refusal (TLS alert,
//!   close, an answered handshake that did not finish), never by silence, so a flapping link or a
//!   refused certificate never storms the orchestrators, and a silent one costs them nothing.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use caravel_model::codec;
use caravel_model::wire::{ToCompute, ToOrchestrator};
use futures::future::BoxFuture;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::frame::{self, Frame};
use crate::tls::{self, Identity};
use crate::{ComputeEnd, OrchestratorEnd};

/// ALPN of the compute session protocol; the major version is part of it.
pub const SESSION_ALPN: &[u8] = b"caravel-session/1";
/// Default cap of one frame's payload.
pub const DEFAULT_MAX_FRAME: usize = caravel_model::validate::MAX_JOB_BYTES + (1 << 20);
/// Close code: the session ended normally (shutdown, one side let go).
pub const CLOSE_NORMAL: u32 = 0;
/// Close code: a frame did not decode, had another version, or came on the wrong channel.
pub const CLOSE_PROTOCOL: u32 = 1;
/// Close code: the peer was refused (identity mismatch, no `Hello`).
pub const CLOSE_REFUSED: u32 = 2;
/// Close code: an operator rejected or deleted the node; its certificate is revoked.
pub const CLOSE_REVOKED: u32 = 3;
/// ALPN of the join protocol (a node without a certificate presents a one-time token).
pub const JOIN_ALPN: &[u8] = b"caravel-join/1";
/// The name the node sends as SNI; the server's certificate is checked against its own SAN instead.
const SERVER_NAME: &str = "caravel-orchestrator";
/// Longest close reason sent (QUIC carries it in one packet).
const MAX_REASON: usize = 512;

// ---------------------------------------------------------------------------------------------
// Channels: the pure message ↔ stream mapping
// ---------------------------------------------------------------------------------------------

/// A logical channel of a session; the `kind` byte of every frame names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Control,
    Commands,
    Reports,
    Logs,
    Results,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Control,
        Channel::Commands,
        Channel::Reports,
        Channel::Logs,
        Channel::Results,
    ];

    /// The frame kind byte of this channel.
    pub const fn kind(self) -> u8 {
        match self {
            Channel::Control => 1,
            Channel::Commands => 2,
            Channel::Reports => 3,
            Channel::Logs => 4,
            Channel::Results => 5,
        }
    }

    pub fn from_kind(kind: u8) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.kind() == kind)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Channel::Control => "control",
            Channel::Commands => "commands",
            Channel::Reports => "reports",
            Channel::Logs => "logs",
            Channel::Results => "results",
        }
    }

    /// Whether each request gets its own stream.
    pub const fn is_bulk(self) -> bool {
        matches!(self, Channel::Logs | Channel::Results)
    }

    const fn index(self) -> usize {
        self.kind() as usize - 1
    }

    /// QUIC send priority (higher is sent first).
    const fn priority(self) -> i32 {
        match self {
            Channel::Control => 3,
            Channel::Commands | Channel::Reports => 2,
            Channel::Logs => 1,
            Channel::Results => 0,
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The channel that carries an orchestrator → node message.
pub fn compute_channel(m: &ToCompute) -> Channel {
    match m {
        ToCompute::Ack { .. } => Channel::Control,
        ToCompute::Run { .. }
        | ToCompute::Cancel { .. }
        | ToCompute::Logs { .. }
        | ToCompute::FetchResult { .. }
        | ToCompute::CancelRequest { .. }
        | ToCompute::LogsFrom { .. } => Channel::Commands,
    }
}

/// The channel that carries a node → orchestrator message.
pub fn orchestrator_channel(m: &ToOrchestrator) -> Channel {
    match m {
        ToOrchestrator::Hello { .. }
        | ToOrchestrator::Heartbeat { .. }
        | ToOrchestrator::Inventory { .. } => Channel::Control,
        ToOrchestrator::Report { .. } => Channel::Reports,
        ToOrchestrator::LogLine { .. }
        | ToOrchestrator::LogLineAt { .. }
        | ToOrchestrator::LogEnd { .. } => Channel::Logs,
        ToOrchestrator::ResultChunk { .. } | ToOrchestrator::ResultEnd { .. } => Channel::Results,
    }
}

/// For a bulk message: its request id and whether it ends the request's stream.
pub fn bulk_request(m: &ToOrchestrator) -> Option<(u64, bool)> {
    match m {
        ToOrchestrator::LogLine { request_id, .. }
        | ToOrchestrator::LogLineAt { request_id, .. }
        | ToOrchestrator::ResultChunk { request_id, .. } => Some((*request_id, false)),
        ToOrchestrator::LogEnd { request_id, .. }
        | ToOrchestrator::ResultEnd { request_id, .. } => Some((*request_id, true)),
        _ => None,
    }
}

fn compute_name(m: &ToCompute) -> &'static str {
    match m {
        ToCompute::Run { .. } => "Run",
        ToCompute::Cancel { .. } => "Cancel",
        ToCompute::Ack { .. } => "Ack",
        ToCompute::Logs { .. } => "Logs",
        ToCompute::FetchResult { .. } => "FetchResult",
        ToCompute::CancelRequest { .. } => "CancelRequest",
        ToCompute::LogsFrom { .. } => "LogsFrom",
    }
}

fn orchestrator_name(m: &ToOrchestrator) -> &'static str {
    match m {
        ToOrchestrator::Hello { .. } => "Hello",
        ToOrchestrator::Report { .. } => "Report",
        ToOrchestrator::Heartbeat { .. } => "Heartbeat",
        ToOrchestrator::LogLine { .. } => "LogLine",
        ToOrchestrator::LogEnd { .. } => "LogEnd",
        ToOrchestrator::ResultChunk { .. } => "ResultChunk",
        ToOrchestrator::ResultEnd { .. } => "ResultEnd",
        ToOrchestrator::Inventory { .. } => "Inventory",
        ToOrchestrator::LogLineAt { .. } => "LogLineAt",
    }
}

/// Encodes an orchestrator → node message as one frame of its channel.
pub fn encode_to_compute(m: &ToCompute) -> Result<(Channel, Bytes), Error> {
    let channel = compute_channel(m);
    let payload = codec::encode(m).map_err(|source| Error::Encode {
        message: compute_name(m),
        source,
    })?;
    Ok((channel, frame::encode(channel.kind(), &payload)))
}

/// Encodes a node → orchestrator message as one frame of its channel.
pub fn encode_to_orchestrator(m: &ToOrchestrator) -> Result<(Channel, Bytes), Error> {
    let channel = orchestrator_channel(m);
    let payload = codec::encode(m).map_err(|source| Error::Encode {
        message: orchestrator_name(m),
        source,
    })?;
    Ok((channel, frame::encode(channel.kind(), &payload)))
}

/// Decodes a frame read on a stream of channel `on` (orchestrator → node direction).
pub fn decode_to_compute(on: Channel, f: &Frame) -> Result<ToCompute, Error> {
    let tagged = Channel::from_kind(f.kind).ok_or(Error::UnknownChannel(f.kind))?;
    let m: ToCompute = codec::decode(&f.payload).map_err(|source| Error::Decode {
        channel: on,
        source,
    })?;
    check_channel(compute_name(&m), compute_channel(&m), tagged, on)?;
    Ok(m)
}

/// Decodes a frame read on a stream of channel `on` (node → orchestrator direction).
pub fn decode_to_orchestrator(on: Channel, f: &Frame) -> Result<ToOrchestrator, Error> {
    let tagged = Channel::from_kind(f.kind).ok_or(Error::UnknownChannel(f.kind))?;
    let m: ToOrchestrator = codec::decode(&f.payload).map_err(|source| Error::Decode {
        channel: on,
        source,
    })?;
    check_channel(orchestrator_name(&m), orchestrator_channel(&m), tagged, on)?;
    Ok(m)
}

fn check_channel(
    message: &'static str,
    belongs: Channel,
    tagged: Channel,
    on: Channel,
) -> Result<(), Error> {
    if belongs != on {
        return Err(Error::WrongChannel {
            message,
            belongs,
            on,
        });
    }
    if tagged != on {
        return Err(Error::KindMismatch { tagged, on });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error("TLS configuration: {0}")]
    TlsConfig(#[from] rustls::Error),
    #[error("TLS configuration: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    #[error("invalid session options: {0}")]
    Options(&'static str),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no orchestrator addresses to connect to: give at least one HOST:PORT")]
    NoOrchestrators,
    #[error("cannot resolve orchestrator address {addr}: {source}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("orchestrator address {addr} resolves to no address")]
    NoAddress { addr: String },
    #[error("cannot dial orchestrator {addr}: {source}")]
    Dial {
        addr: String,
        source: quinn::ConnectError,
    },
    #[error("handshake with orchestrator {addr} failed: {source}{}", refusal_hint(&.source.to_string()))]
    Handshake {
        addr: String,
        source: quinn::ConnectionError,
    },
    #[error("no handshake with orchestrator {addr} within {timeout:?}")]
    HandshakeTimeout { addr: String, timeout: Duration },
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("bad frame on {}: {source}", describe(.channel))]
    Frame {
        channel: Option<Channel>,
        #[source]
        source: frame::Error,
    },
    #[error("frame kind {0} names no session channel")]
    UnknownChannel(u8),
    #[error("a frame tagged for the {tagged} channel arrived on the {on} channel")]
    KindMismatch { tagged: Channel, on: Channel },
    #[error("{message} belongs on the {belongs} channel, not the {on} channel")]
    WrongChannel {
        message: &'static str,
        belongs: Channel,
        on: Channel,
    },
    #[error("cannot decode a message on the {channel} channel: {source}")]
    Decode {
        channel: Channel,
        source: codec::Error,
    },
    #[error("cannot encode {message}: {source}")]
    Encode {
        message: &'static str,
        source: codec::Error,
    },
    #[error("certificate is for {cert}, {message} claims {claimed}")]
    IdentityMismatch {
        cert: String,
        message: &'static str,
        claimed: String,
    },
    #[error("the first message of a session must be Hello, got {0}")]
    NotHello(&'static str),
    #[error("no Hello within {0:?}")]
    NoHello(Duration),
    #[error("join: {0}")]
    Join(String),
    #[error("the {channel} stream of request {expected} carried a message of request {got}")]
    MixedRequests {
        channel: Channel,
        expected: u64,
        got: u64,
    },
    #[error("data after the end of request {request_id} on its {channel} stream")]
    AfterEnd { channel: Channel, request_id: u64 },
    #[error("the {channel} stream of request {request_id} ended before its end message")]
    Unfinished { channel: Channel, request_id: u64 },
    #[error("the peer opened a second {0} stream")]
    SecondStream(Channel),
    #[error("the peer may not open a {0} stream")]
    ForbiddenStream(Channel),
    #[error("the peer stopped the {0} stream")]
    StreamStopped(Channel),
}

fn describe(channel: &Option<Channel>) -> String {
    match channel {
        Some(c) => format!("the {c} channel"),
        None => "a new stream".to_string(),
    }
}

impl Error {
    /// The QUIC application close code this error closes a connection with.
    pub fn close_code(&self) -> u32 {
        match self {
            Error::IdentityMismatch { .. }
            | Error::NotHello(_)
            | Error::NoHello(_)
            | Error::Tls(_) => CLOSE_REFUSED,
            _ => CLOSE_PROTOCOL,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/// Session transport settings; see the module docs for why each default was chosen.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// PING interval, sent by the node only. Default 2 s.
    pub keep_alive: Duration,
    /// A link silent this long ends the session. Default 10 s.
    pub idle_timeout: Duration,
    /// RTT assumed before the first sample. Default 100 ms.
    pub initial_rtt: Duration,
    /// Bound on the QUIC handshake and, separately, on waiting for `Hello`. Default 10 s.
    pub handshake_timeout: Duration,
    /// While no dial of a connection round has been answered, another dial starts this often
    /// (±25 % jitter), to the next orchestrator in turn; earlier dials stay open until their
    /// handshake timeout. Default 2 s.
    pub probe_interval: Duration,
    /// Orchestrator: handshakes (QUIC, then `Hello`) in progress at once; a dial beyond this is
    /// refused at once (CONNECTION_REFUSED, no cryptography), which ends the node's round and sends
    /// it into its exponential backoff, so a fleet reconnecting together spreads itself out.
    /// Default 256.
    pub max_pending_handshakes: usize,
    /// Receive window of one stream. Default 4 MiB.
    pub stream_window: u32,
    /// Receive window of a whole connection. Default 16 MiB.
    pub connection_window: u32,
    /// Unacknowledged bytes one connection may have in flight. Default 16 MiB.
    pub send_window: u64,
    /// Largest frame payload accepted. Default 4 MiB.
    pub max_frame: usize,
    /// Capacity (messages) of the channels of each end. Default 32.
    pub channel_capacity: usize,
    /// Bytes of log and result frames the node parks before it stops reading its outbox. Default 32 MiB.
    pub bulk_buffer: usize,
    /// First reconnect backoff ceiling. Default 250 ms.
    pub backoff_base: Duration,
    /// Largest reconnect backoff. Default 30 s.
    pub backoff_cap: Duration,
    /// A session that lived longer than this resets the backoff. Default 30 s.
    pub backoff_reset_after: Duration,
    /// UDP generic segmentation offload; turn off on hosts whose NIC fails it. Default true.
    pub segmentation_offload: bool,
    /// The congestion controller of this side's sending. Default BBR (docs/benchmarks.md: on a
    /// lossy link CUBIC keeps 1–15 % of its lossless goodput, BBR 25–95 %).
    pub congestion: Congestion,
}

/// A QUIC congestion controller (quinn's three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// RFC 8312, as TCP on Linux: reads every loss as congestion.
    Cubic,
    /// RFC 9002's NewReno.
    NewReno,
    /// BBR (quinn marks it experimental): paces by measured bandwidth and RTT, so random loss on a
    /// lossy link does not shrink the window as it does CUBIC's.
    #[default]
    Bbr,
}

impl Congestion {
    pub const NAMES: &'static str = "cubic, newreno or bbr";

    pub fn as_str(self) -> &'static str {
        match self {
            Congestion::Cubic => "cubic",
            Congestion::NewReno => "newreno",
            Congestion::Bbr => "bbr",
        }
    }
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cubic" => Ok(Congestion::Cubic),
            "newreno" => Ok(Congestion::NewReno),
            "" | "bbr" => Ok(Congestion::Bbr),
            other => Err(format!(
                "unknown congestion controller {other:?}: use {}",
                Congestion::NAMES
            )),
        }
    }
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            initial_rtt: Duration::from_millis(100),
            handshake_timeout: Duration::from_secs(10),
            probe_interval: Duration::from_secs(2),
            max_pending_handshakes: 256,
            stream_window: 4 << 20,
            connection_window: 16 << 20,
            send_window: 16 << 20,
            max_frame: DEFAULT_MAX_FRAME,
            channel_capacity: 32,
            bulk_buffer: 32 << 20,
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(30),
            backoff_reset_after: Duration::from_secs(30),
            segmentation_offload: true,
            congestion: Congestion::Bbr,
        }
    }
}

/// Which side a transport config is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Orchestrator,
    Node,
}

impl SessionOptions {
    pub fn validate(&self) -> Result<(), Error> {
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return Err(Error::Options(
                "keep_alive must be positive and shorter than idle_timeout",
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(Error::Options("handshake_timeout must be positive"));
        }
        if self.probe_interval < Duration::from_millis(10) {
            return Err(Error::Options(
                "probe_interval must be at least 10 ms (each dial costs the orchestrator a handshake)",
            ));
        }
        if self.max_pending_handshakes == 0 {
            return Err(Error::Options("max_pending_handshakes must be at least 1"));
        }
        if self.max_frame < 64 * 1024 {
            return Err(Error::Options("max_frame must be at least 64 KiB"));
        }
        if self.channel_capacity == 0 {
            return Err(Error::Options("channel_capacity must be at least 1"));
        }
        if self.connection_window <= self.stream_window {
            return Err(Error::Options(
                "connection_window must be larger than stream_window (a stalled stream must not block the others)",
            ));
        }
        if self.backoff_base.is_zero() || self.backoff_cap < self.backoff_base {
            return Err(Error::Options(
                "backoff_base must be positive and at most backoff_cap",
            ));
        }
        Ok(())
    }

    fn transport(&self, side: Side) -> Result<Arc<quinn::TransportConfig>, Error> {
        let mut t = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| Error::Options("idle_timeout is too large"))?;
        t.max_idle_timeout(Some(idle));
        t.keep_alive_interval((side == Side::Node).then_some(self.keep_alive));
        t.initial_rtt(self.initial_rtt);
        t.stream_receive_window(quinn::VarInt::from_u32(self.stream_window));
        t.receive_window(quinn::VarInt::from_u32(self.connection_window));
        t.send_window(self.send_window);
        t.datagram_receive_buffer_size(None);
        t.enable_segmentation_offload(self.segmentation_offload);
        match self.congestion {
            Congestion::Cubic => {}
            Congestion::NewReno => {
                t.congestion_controller_factory(Arc::new(
                    quinn::congestion::NewRenoConfig::default(),
                ));
            }
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
            }
        }
        match side {
            // The node opens the control bi-stream, the reports stream and one stream per bulk request.
            Side::Orchestrator => {
                t.max_concurrent_bidi_streams(1u32.into());
                t.max_concurrent_uni_streams(64u32.into());
            }
            // The orchestrator opens only the commands stream.
            Side::Node => {
                t.max_concurrent_bidi_streams(0u32.into());
                t.max_concurrent_uni_streams(2u32.into());
            }
        }
        Ok(Arc::new(t))
    }
}

// ---------------------------------------------------------------------------------------------
// Backoff (pure)
// ---------------------------------------------------------------------------------------------

/// `min(cap, base × 2^attempt)`.
pub fn backoff_ceiling(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).map_or(cap, |d| d.min(cap))
}

/// Full jitter: `unit` (in `[0, 1]`) of `ceiling`.
pub fn full_jitter(ceiling: Duration, unit: f64) -> Duration {
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// `interval` scaled by `unit` (in `[0, 1]`) into `[0.75, 1.25] × interval`.
pub fn probe_jitter(interval: Duration, unit: f64) -> Duration {
    interval.mul_f64(0.75 + 0.5 * unit.clamp(0.0, 1.0))
}

/// Exponential backoff with full jitter (AWS "Exponential Backoff And Jitter") between connection
/// rounds, and the jittered pace of dials within a round, each from its own seeded generator so
/// tests are deterministic (and can replay either without knowing how the two interleave).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    state: u64,
    probe_state: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
            state: seed,
            probe_state: seed ^ 0xD1B5_4A32_D192_ED03,
        }
    }

    /// The wait before the next dial of a round whose dials are all unanswered so far: uniform in
    /// `[0.75, 1.25] × interval`. Does not advance the exponential backoff.
    pub fn next_probe(&mut self, interval: Duration) -> Duration {
        let unit = splitmix_unit(&mut self.probe_state);
        probe_jitter(interval, unit)
    }

    /// The delay before the next attempt: uniform in `[0, backoff_ceiling(attempt)]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = backoff_ceiling(self.base, self.cap, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let unit = self.next_unit();
        full_jitter(ceiling, unit)
    }

    /// Back to the first ceiling (after a session that lived long enough).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Delays handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    fn next_unit(&mut self) -> f64 {
        splitmix_unit(&mut self.state)
    }
}

/// splitmix64 → a float in `[0, 1)`.
fn splitmix_unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn random_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

// ---------------------------------------------------------------------------------------------
// Stats
// ---------------------------------------------------------------------------------------------

/// Frames and bytes of one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCounts {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Sessions established (server: after a valid `Hello`; node: after the QUIC handshake).
    pub handshakes: u64,
    /// Handshakes that failed (TLS refused, timed out, unreachable orchestrator).
    pub handshake_failures: u64,
    /// Connections refused after the handshake (identity mismatch, no `Hello`).
    pub refused: u64,
    /// Dials refused before any handshake work because too many were in progress (orchestrator).
    pub shed: u64,
    /// Connections closed for a bad frame or a message on the wrong channel.
    pub protocol_errors: u64,
    /// Connection rounds after the first (node); each waits its backoff delay first.
    pub reconnect_attempts: u64,
    /// Dials started within a round because the earlier ones were still unanswered (node).
    pub redials: u64,
    /// Dials that got no answer at all within the handshake timeout (node): a silent path.
    pub unanswered_dials: u64,
    /// Sessions up now (node: 0 or 1).
    pub connected: u64,
    /// Per channel, in [`Channel::ALL`] order.
    pub channels: [ChannelCounts; 5],
}

impl StatsSnapshot {
    pub fn channel(&self, c: Channel) -> ChannelCounts {
        self.channels[c.index()]
    }
}

#[derive(Default)]
struct ChannelCounters {
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

#[derive(Default)]
struct StatsInner {
    handshakes: AtomicU64,
    handshake_failures: AtomicU64,
    refused: AtomicU64,
    shed: AtomicU64,
    protocol_errors: AtomicU64,
    reconnect_attempts: AtomicU64,
    redials: AtomicU64,
    unanswered_dials: AtomicU64,
    connected: AtomicU64,
    channels: [ChannelCounters; 5],
    current: Mutex<Option<quinn::Connection>>,
    last_error: Mutex<Option<String>>,
}

/// Session counters, cheap to clone and to bump (atomics): one per [`SessionServer`] (aggregate of
/// its sessions) and one per [`SessionClient`].
#[derive(Clone, Default)]
pub struct SessionStats(Arc<StatsInner>);

impl std::fmt::Debug for SessionStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SessionStats")
            .field(&self.snapshot())
            .finish()
    }
}

impl SessionStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let s = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut channels = [ChannelCounts::default(); 5];
        for (out, c) in channels.iter_mut().zip(&s.channels) {
            *out = ChannelCounts {
                frames_in: load(&c.frames_in),
                frames_out: load(&c.frames_out),
                bytes_in: load(&c.bytes_in),
                bytes_out: load(&c.bytes_out),
            };
        }
        StatsSnapshot {
            handshakes: load(&s.handshakes),
            handshake_failures: load(&s.handshake_failures),
            refused: load(&s.refused),
            shed: load(&s.shed),
            protocol_errors: load(&s.protocol_errors),
            reconnect_attempts: load(&s.reconnect_attempts),
            redials: load(&s.redials),
            unanswered_dials: load(&s.unanswered_dials),
            connected: load(&s.connected),
            channels,
        }
    }

    pub fn channel(&self, c: Channel) -> ChannelCounts {
        self.snapshot().channel(c)
    }

    /// Node side: whether a session is up.
    pub fn is_connected(&self) -> bool {
        self.0.connected.load(Ordering::Relaxed) > 0
    }

    /// Node side: RTT, losses and congestion window of the current connection, if any.
    pub fn link(&self) -> Option<LinkStats> {
        lock(&self.0.current).clone().map(|conn| LinkStats { conn })
    }

    /// Why the last connection failed or ended (the peer's close reason, a TLS error, …).
    pub fn last_error(&self) -> Option<String> {
        lock(&self.0.last_error).clone()
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn count_in(&self, c: Channel, bytes: usize) {
        let c = &self.0.channels[c.index()];
        c.frames_in.fetch_add(1, Ordering::Relaxed);
        c.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn count_out(&self, c: Channel, bytes: usize) {
        let c = &self.0.channels[c.index()];
        c.frames_out.fetch_add(1, Ordering::Relaxed);
        c.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn set_last_error(&self, e: String) {
        *lock(&self.0.last_error) = Some(e);
    }

    fn set_current(&self, conn: Option<quinn::Connection>) {
        *lock(&self.0.current) = conn;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decrements the connected gauge when a session ends, however it ends.
struct ConnectedGuard(SessionStats);

impl ConnectedGuard {
    fn new(stats: &SessionStats) -> Self {
        stats.0.connected.fetch_add(1, Ordering::Relaxed);
        ConnectedGuard(stats.clone())
    }
}

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Path statistics of one session's QUIC connection, for metrics.
#[derive(Clone)]
pub struct LinkStats {
    conn: quinn::Connection,
}

impl std::fmt::Debug for LinkStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkStats")
            .field("remote", &self.conn.remote_address())
            .field("rtt", &self.conn.rtt())
            .finish()
    }
}

impl LinkStats {
    /// Smoothed round-trip time.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }
    /// Everything quinn counts: `path.rtt`, `path.cwnd`, `path.lost_packets`, `path.congestion_events`,
    /// `path.current_mtu`, UDP and frame counts.
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }
    pub fn remote(&self) -> SocketAddr {
        self.conn.remote_address()
    }
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }
    /// Ends the session at once with a reason the node logs (an operator rejected or deleted it).
    pub fn close_revoked(&self, reason: &str) {
        let r = &reason.as_bytes()[..reason.len().min(MAX_REASON)];
        self.conn.close(CLOSE_REVOKED.into(), r);
    }
}

// ---------------------------------------------------------------------------------------------
// Node identity and server verification
// ---------------------------------------------------------------------------------------------

/// " (why)" for a TLS refusal Caravel itself sends (revoked, wrong role, expired), else "".
fn refusal_hint(error: &str) -> String {
    tls::explain_refusal(error).map_or(String::new(), |h| format!(" ({h})"))
}

/// A compute node's TLS material: the cluster CA, its certificate chain and key (re-read when
/// renewed, see [`Identity::watch`]).
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    identity: Identity,
}

impl ClientIdentity {
    pub fn from_pem(ca_cert: &str, cert: &str, key: &str) -> Result<Self, Error> {
        Ok(ClientIdentity {
            identity: Identity::from_pem(ca_cert, cert, key)?,
        })
    }

    /// Loads `--tls-ca`, `--tls-cert`, `--tls-key`; errors name the offending file.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, Error> {
        Ok(ClientIdentity {
            identity: Identity::load(ca, cert, key)?,
        })
    }

    /// The node id bound into this certificate.
    pub fn node_id(&self) -> Option<String> {
        self.identity.node_id()
    }

    /// The identity underneath (role checks, renewal, the expiry metric).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The node's QUIC client config: presents its certificate, trusts only orchestrator
    /// certificates of the cluster CA, whatever their id (a node dials addresses, not ids).
    pub fn client_config(&self, opts: &SessionOptions) -> Result<quinn::ClientConfig, Error> {
        let tls = self.identity.rustls_client_config(
            SESSION_ALPN,
            tls::Role::Orchestrator,
            tls::NameCheck::Any,
        )?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| Error::Tls(tls::Error::Tls(e.to_string())))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        cfg.transport_config(opts.transport(Side::Node)?);
        Ok(cfg)
    }
}

// ---------------------------------------------------------------------------------------------
// One connection's plumbing, shared by both sides
// ---------------------------------------------------------------------------------------------

/// A connection with its session's cancellation and counters.
#[derive(Clone)]
struct Link {
    conn: quinn::Connection,
    stats: SessionStats,
    /// Cancelled when the session ends, for whatever reason; every task of the session watches it.
    token: CancellationToken,
    /// `node@addr` or `orchestrator@addr`, for logs.
    peer: Arc<str>,
    max_frame: usize,
}

/// What reading one frame gave.
enum Read {
    Frame(Frame),
    /// The peer finished the stream cleanly.
    Finished,
    /// The peer reset the stream.
    Reset,
    /// The connection or the session is over.
    Gone,
    Bad(Error),
}

impl Link {
    async fn read(&self, recv: &mut quinn::RecvStream, channel: Option<Channel>) -> Read {
        let r = tokio::select! {
            biased;
            _ = self.token.cancelled() => return Read::Gone,
            r = frame::read(recv, self.max_frame) => r,
        };
        match r {
            Ok(Some(f)) => Read::Frame(f),
            Ok(None) => Read::Finished,
            Err(frame::Error::Io(e)) => {
                if self.conn.close_reason().is_none()
                    && e.kind() == std::io::ErrorKind::ConnectionReset
                {
                    Read::Reset
                } else {
                    Read::Gone
                }
            }
            Err(source) => Read::Bad(Error::Frame { channel, source }),
        }
    }

    /// Sends `m` into one of the session's queues; false if the session is over or nobody listens.
    async fn forward<T>(&self, tx: &mpsc::Sender<T>, m: T) -> bool {
        tokio::select! {
            biased;
            _ = self.token.cancelled() => false,
            r = tx.send(m) => r.is_ok(),
        }
    }

    fn close(&self, code: u32, reason: &str) {
        let reason = truncate(reason, MAX_REASON);
        self.conn.close(code.into(), reason.as_bytes());
        self.token.cancel();
    }

    /// Closes the connection for a protocol violation.
    fn fail(&self, e: &Error) {
        if self.token.is_cancelled() {
            return;
        }
        SessionStats::bump(&self.stats.0.protocol_errors);
        self.stats.set_last_error(e.to_string());
        tracing::warn!(peer = %self.peer, error = %e, "closing the compute session");
        self.close(e.close_code(), &e.to_string());
    }

    /// Closes the connection because the peer is not who it must be.
    fn refuse(&self, e: &Error) {
        if self.token.is_cancelled() {
            return;
        }
        SessionStats::bump(&self.stats.0.refused);
        self.stats.set_last_error(e.to_string());
        tracing::warn!(peer = %self.peer, error = %e, "refusing the compute session");
        self.close(e.close_code(), &e.to_string());
    }

    /// Ends the session normally.
    fn end(&self, reason: &str) {
        if self.token.is_cancelled() {
            return;
        }
        tracing::info!(peer = %self.peer, reason, "compute session ended");
        self.close(CLOSE_NORMAL, reason);
    }

    fn write_failed(&self, channel: Channel, e: quinn::WriteError) {
        match e {
            quinn::WriteError::Stopped(_) => self.fail(&Error::StreamStopped(channel)),
            // The connection is going down; whoever closed it has said why.
            _ => self.token.cancel(),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Writes the frames queued for one stream; opens the stream on the first frame if `send` is `None`.
/// When the queue closes, finishes the stream and waits until the peer has it all.
async fn write_stream(
    link: Link,
    channel: Channel,
    mut send: Option<quinn::SendStream>,
    mut rx: mpsc::Receiver<Bytes>,
) {
    if let Some(s) = &send {
        let _ = s.set_priority(channel.priority());
    }
    loop {
        let b = tokio::select! {
            biased;
            _ = link.token.cancelled() => return,
            b = rx.recv() => b,
        };
        let Some(b) = b else { break };
        if send.is_none() {
            let opened = tokio::select! {
                biased;
                _ = link.token.cancelled() => return,
                s = link.conn.open_uni() => s,
            };
            let Ok(s) = opened else {
                link.token.cancel();
                return;
            };
            let _ = s.set_priority(channel.priority());
            send = Some(s);
        }
        let Some(s) = send.as_mut() else { return };
        let n = b.len();
        if let Err(e) = s.write_chunk(b).await {
            link.write_failed(channel, e);
            return;
        }
        link.stats.count_out(channel, n);
    }
    if let Some(mut s) = send {
        let _ = s.finish();
        tokio::select! {
            biased;
            _ = link.token.cancelled() => {}
            _ = s.stopped() => {}
        }
    }
}

/// Bulk bytes the node has taken from its outbox but QUIC has not yet accepted.
#[derive(Default)]
struct BulkBudget {
    parked: AtomicUsize,
    freed: Notify,
}

impl BulkBudget {
    fn release(&self, n: usize) {
        self.parked.fetch_sub(n, Ordering::AcqRel);
        self.freed.notify_one();
    }
}

/// Writes one request's log or result stream; the stream is finished when the dispatcher drops the
/// sender after the end message.
async fn write_bulk(
    link: Link,
    channel: Channel,
    request_id: u64,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    budget: Arc<BulkBudget>,
) {
    let drain = |rx: &mut mpsc::UnboundedReceiver<Bytes>| {
        rx.close();
        while let Ok(b) = rx.try_recv() {
            budget.release(b.len());
        }
    };
    let opened = tokio::select! {
        biased;
        _ = link.token.cancelled() => return,
        s = link.conn.open_uni() => s,
    };
    let Ok(mut send) = opened else {
        drain(&mut rx);
        return;
    };
    let _ = send.set_priority(channel.priority());
    loop {
        let b = tokio::select! {
            biased;
            _ = link.token.cancelled() => return,
            b = rx.recv() => b,
        };
        let Some(b) = b else { break };
        let n = b.len();
        let written = send.write_chunk(b).await;
        budget.release(n);
        if let Err(e) = written {
            // The orchestrator stopped reading this request (or the connection is going down): drop
            // the rest of it, the other streams carry on.
            tracing::debug!(peer = %link.peer, %channel, request_id, error = %e, "bulk stream abandoned");
            drain(&mut rx);
            return;
        }
        link.stats.count_out(channel, n);
    }
    let _ = send.finish();
    tokio::select! {
        biased;
        _ = link.token.cancelled() => {}
        _ = send.stopped() => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Orchestrator side
// ---------------------------------------------------------------------------------------------

/// A compute node that connected and proved its identity.
#[derive(Debug)]
pub struct IncomingSession {
    /// From the client certificate (and equal to the `Hello`'s `info.node_id`).
    pub node_id: String,
    /// SHA-256 of the node's certificate (recorded, so deleting the node revokes it).
    pub fingerprint: String,
    pub remote: SocketAddr,
    /// Its first message is the node's `Hello`; `rx` closes when the connection dies. Dropping `tx`
    /// ends the session (after delivering what was sent on it).
    pub end: OrchestratorEnd,
    pub link: LinkStats,
}

/// What the compute port enforces beyond the cluster CA's chain and the compute role.
#[derive(Clone, Default)]
pub struct SessionSecurity {
    /// Revoked certificates and nodes, refused in the handshake.
    pub deny: tls::DenyList,
    /// Answers join requests (ALPN `caravel-join/1`) from nodes that have no certificate yet;
    /// `None`: no anonymous client gets past the handshake.
    pub join: Option<Arc<dyn JoinHandler>>,
}

impl std::fmt::Debug for SessionSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSecurity")
            .field("denied", &self.deny.len())
            .field("join", &self.join.is_some())
            .finish()
    }
}

/// Decides a node's request to join by token (the root crate: Raft consumes the token, the CA
/// signs the request).
pub trait JoinHandler: Send + Sync + 'static {
    fn join(
        &self,
        remote: SocketAddr,
        request: caravel_model::wire::JoinRequest,
    ) -> BoxFuture<'static, caravel_model::wire::JoinResponse>;
}

/// Largest join request accepted (a token, an id and a CSR of a few hundred bytes).
const MAX_JOIN_REQUEST: usize = 16 << 10;

/// Accepts compute sessions on one UDP port.
#[derive(Debug, Clone)]
pub struct SessionServer {
    endpoint: quinn::Endpoint,
    stats: SessionStats,
}

impl SessionServer {
    /// Binds `bind` and accepts sessions until `shutdown`; each established session arrives on the
    /// returned receiver. Nodes need a certificate from the cluster CA.
    pub fn start(
        bind: SocketAddr,
        identity: &Identity,
        opts: SessionOptions,
        security: SessionSecurity,
        shutdown: CancellationToken,
    ) -> Result<(SessionServer, mpsc::Receiver<IncomingSession>), Error> {
        opts.validate()?;
        let cfg = SessionServer::server_config(identity, &opts, &security)?;
        let socket =
            std::net::UdpSocket::bind(bind).map_err(|source| Error::Bind { addr: bind, source })?;
        let endpoint = quinn::Endpoint::new(
            SessionServer::endpoint_config(identity),
            Some(cfg),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| Error::Bind { addr: bind, source })?;
        SessionServer::start_on(endpoint, opts, security, shutdown)
    }

    /// Endpoint settings whose stateless-reset key and connection-id key are derived from the
    /// orchestrator's TLS key instead of drawn at random: after a crash and restart on the same
    /// address, the orchestrator recognises the connection ids it handed out before and answers
    /// a node's next packet with a stateless reset (RFC 9000 §10.3), so the node reconnects at once
    /// instead of waiting out its idle timeout.
    pub fn endpoint_config(identity: &Identity) -> quinn::EndpointConfig {
        let reset = identity.derived_secret("quic stateless reset");
        let mut cfg = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &reset,
        )));
        let cid = identity.derived_secret("quic connection ids");
        let cid_key = u64::from_le_bytes([
            cid[0], cid[1], cid[2], cid[3], cid[4], cid[5], cid[6], cid[7],
        ]);
        cfg.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        cfg
    }

    /// The QUIC server config [`SessionServer::start`] binds with: the session ALPN, client
    /// certificates required from the cluster CA, the orchestrator's transport settings. For an
    /// endpoint the caller makes itself (see [`SessionServer::start_on`]).
    pub fn server_config(
        identity: &Identity,
        opts: &SessionOptions,
        security: &SessionSecurity,
    ) -> Result<quinn::ServerConfig, Error> {
        let policy = tls::PeerPolicy {
            role: tls::Role::Compute,
            deny: security.deny.clone(),
            allow_anonymous: security.join.is_some(),
        };
        let alpns: &[&[u8]] = if security.join.is_some() {
            &[SESSION_ALPN, JOIN_ALPN]
        } else {
            &[SESSION_ALPN]
        };
        let tls = identity.rustls_server_config(alpns, &policy)?;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| Error::Tls(tls::Error::Tls(e.to_string())))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        cfg.transport_config(opts.transport(Side::Orchestrator)?);
        Ok(cfg)
    }

    /// Like [`SessionServer::start`], on an endpoint the caller made — over its own socket or
    /// runtime (`quinn::Endpoint::new_with_abstract_socket`), e.g. a simulated network in tests. The
    /// endpoint must serve [`SessionServer::server_config`].
    pub fn start_on(
        endpoint: quinn::Endpoint,
        opts: SessionOptions,
        security: SessionSecurity,
        shutdown: CancellationToken,
    ) -> Result<(SessionServer, mpsc::Receiver<IncomingSession>), Error> {
        opts.validate()?;
        let stats = SessionStats::default();
        let (tx, rx) = mpsc::channel(opts.channel_capacity);
        tokio::spawn(accept_loop(
            endpoint.clone(),
            opts,
            stats.clone(),
            tx,
            security.join,
            shutdown,
        ));
        Ok((SessionServer { endpoint, stats }, rx))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Counters over all of this server's sessions.
    pub fn stats(&self) -> SessionStats {
        self.stats.clone()
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    opts: SessionOptions,
    stats: SessionStats,
    sessions: mpsc::Sender<IncomingSession>,
    join: Option<Arc<dyn JoinHandler>>,
    shutdown: CancellationToken,
) {
    let pending = Arc::new(AtomicUsize::new(0));
    loop {
        let incoming = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        if pending.load(Ordering::Relaxed) >= opts.max_pending_handshakes {
            SessionStats::bump(&stats.0.shed);
            tracing::debug!(remote = %incoming.remote_address(), "too many handshakes in progress: dial refused");
            incoming.refuse();
            continue;
        }
        let slot = PendingSlot::take(&pending);
        tokio::spawn(serve_connection(
            incoming,
            opts,
            stats.clone(),
            sessions.clone(),
            join.clone(),
            shutdown.child_token(),
            slot,
        ));
    }
    endpoint.close(CLOSE_NORMAL.into(), b"orchestrator shutting down");
}

/// One join request on an anonymous connection: one frame in, one frame out, then close.
async fn serve_join(
    conn: quinn::Connection,
    remote: SocketAddr,
    handler: Arc<dyn JoinHandler>,
    timeout: Duration,
) {
    let answer = async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let f = frame::read(&mut recv, MAX_JOIN_REQUEST)
            .await
            .map_err(|e| format!("bad join request frame: {e}"))?
            .ok_or("empty join request")?;
        let request: caravel_model::wire::JoinRequest =
            codec::decode(&f.payload).map_err(|e| format!("bad join request: {e}"))?;
        let response = handler.join(remote, request).await;
        let body = codec::encode(&response).map_err(|e| e.to_string())?;
        frame::write(&mut send, 0, &body)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        let _ = tokio::time::timeout(timeout, send.stopped()).await;
        Ok::<_, String>(())
    };
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(())) => conn.close(CLOSE_NORMAL.into(), b"joined"),
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "join request failed");
            conn.close(CLOSE_PROTOCOL.into(), e.as_bytes());
        }
        Err(_) => conn.close(CLOSE_REFUSED.into(), b"no join request in time"),
    }
}

/// Asks the orchestrators (in turn, until one answers) for a certificate with a join token. The
/// orchestrator must present a chain that ends in the CA whose SHA-256 is `ca_sha256`.
pub async fn join(
    orchestrators: &[String],
    ca_sha256: &str,
    request: &caravel_model::wire::JoinRequest,
    timeout: Duration,
) -> Result<caravel_model::wire::JoinResponse, Error> {
    let tls = tls::pinned_client_config(ca_sha256, JOIN_ALPN)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Tls(tls::Error::Tls(e.to_string())))?;
    let cfg = quinn::ClientConfig::new(Arc::new(quic));
    let body = codec::encode(request).map_err(|e| Error::Tls(tls::Error::Tls(e.to_string())))?;
    let mut last = Error::NoOrchestrators;
    for target in orchestrators {
        let attempt = async {
            let addr = tokio::net::lookup_host(target.as_str())
                .await
                .map_err(|source| Error::Resolve {
                    addr: target.clone(),
                    source,
                })?
                .next()
                .ok_or_else(|| Error::NoAddress {
                    addr: target.clone(),
                })?;
            let bind: SocketAddr = if addr.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                SocketAddr::from(([0u16; 8], 0))
            };
            let endpoint = quinn::Endpoint::client(bind)
                .map_err(|source| Error::Bind { addr: bind, source })?;
            let conn = endpoint
                .connect_with(cfg.clone(), addr, SERVER_NAME)
                .map_err(|source| Error::Dial {
                    addr: target.clone(),
                    source,
                })?
                .await
                .map_err(|source| Error::Handshake {
                    addr: target.clone(),
                    source,
                })?;
            let lost = Error::Join;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
            frame::write(&mut send, 0, &body)
                .await
                .map_err(|e| lost(e.to_string()))?;
            let _ = send.finish();
            let answer = frame::read(&mut recv, MAX_JOIN_REQUEST)
                .await
                .map_err(|e| lost(e.to_string()))?
                .ok_or_else(|| lost(format!("{target} closed without answering")))?;
            let response = codec::decode(&answer.payload).map_err(|e| lost(e.to_string()))?;
            conn.close(CLOSE_NORMAL.into(), b"done");
            endpoint.wait_idle().await;
            Ok::<_, Error>(response)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = Error::HandshakeTimeout {
                    addr: target.clone(),
                    timeout,
                }
            }
        }
        tracing::warn!(orchestrator = %target, error = %last, "join attempt failed");
    }
    Err(last)
}

/// One handshake in progress on an orchestrator; gives its place back when dropped.
struct PendingSlot(Arc<AtomicUsize>);

impl PendingSlot {
    fn take(pending: &Arc<AtomicUsize>) -> Self {
        pending.fetch_add(1, Ordering::Relaxed);
        PendingSlot(pending.clone())
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    opts: SessionOptions,
    stats: SessionStats,
    sessions: mpsc::Sender<IncomingSession>,
    join: Option<Arc<dyn JoinHandler>>,
    token: CancellationToken,
    slot: PendingSlot,
) {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(opts.handshake_timeout, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            SessionStats::bump(&stats.0.handshake_failures);
            stats.set_last_error(format!("handshake with {remote} failed: {e}"));
            tracing::info!(%remote, error = %e, "compute session handshake failed");
            return;
        }
        Err(_) => {
            SessionStats::bump(&stats.0.handshake_failures);
            tracing::info!(%remote, "compute session handshake timed out");
            return;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    if alpn.as_deref() == Some(JOIN_ALPN) {
        drop(slot);
        match join {
            Some(handler) => serve_join(conn, remote, handler, opts.handshake_timeout).await,
            None => conn.close(CLOSE_REFUSED.into(), b"joining by token is off here"),
        }
        return;
    }
    let fingerprint = tls::peer_leaf(&conn)
        .map(|d| tls::fingerprint(&d))
        .unwrap_or_default();
    let node_id = tls::peer_node_id(&conn);
    let link = Link {
        conn: conn.clone(),
        stats: stats.clone(),
        token,
        peer: format!("{}@{remote}", node_id.as_deref().unwrap_or("<no node id>")).into(),
        max_frame: opts.max_frame,
    };
    let node_id = match node_id {
        Ok(id) => id,
        Err(e) => {
            link.refuse(&Error::Tls(e));
            return;
        }
    };
    let hello = tokio::select! {
        biased;
        _ = link.token.cancelled() => {
            link.close(CLOSE_NORMAL, "orchestrator shutting down");
            return;
        }
        h = tokio::time::timeout(opts.handshake_timeout, await_hello(&link, &node_id)) => h,
    };
    let (ctl_send, ctl_recv, hello) = match hello {
        Err(_) => {
            link.refuse(&Error::NoHello(opts.handshake_timeout));
            return;
        }
        Ok(Err(HelloFailure::Gone)) => {
            SessionStats::bump(&stats.0.handshake_failures);
            link.token.cancel();
            return;
        }
        Ok(Err(HelloFailure::Refused(e))) => {
            link.refuse(&e);
            return;
        }
        Ok(Err(HelloFailure::Bad(e))) => {
            link.fail(&e);
            return;
        }
        Ok(Ok(h)) => h,
    };
    drop(slot);

    SessionStats::bump(&stats.0.handshakes);
    let _connected = ConnectedGuard::new(&stats);
    let (to_compute_tx, to_compute_rx) = mpsc::channel(opts.channel_capacity);
    let (to_orch_tx, to_orch_rx) = mpsc::channel(opts.channel_capacity);
    // A fresh channel with capacity ≥ 1: the Hello is always its first message.
    let _ = to_orch_tx.try_send(hello);
    let session = IncomingSession {
        node_id: node_id.clone(),
        fingerprint,
        remote,
        end: OrchestratorEnd {
            tx: to_compute_tx,
            rx: to_orch_rx,
        },
        link: LinkStats { conn: conn.clone() },
    };
    if !link.forward(&sessions, session).await {
        link.end("the orchestrator is not accepting sessions");
        return;
    }
    tracing::info!(node = %node_id, %remote, "compute session established");

    let node_id: Arc<str> = node_id.into();
    tokio::spawn(read_node_control(
        link.clone(),
        ctl_recv,
        to_orch_tx.clone(),
        node_id.clone(),
    ));
    tokio::spawn(accept_node_streams(link.clone(), to_orch_tx));
    tokio::spawn(route_commands(link.clone(), to_compute_rx, ctl_send, opts));

    tokio::select! {
        biased;
        _ = link.token.cancelled() => {
            if link.conn.close_reason().is_none() {
                link.close(CLOSE_NORMAL, "orchestrator shutting down");
            }
        }
        e = conn.closed() => {
            tracing::info!(node = %node_id, %remote, reason = %e, "compute session closed");
            link.token.cancel();
        }
    }
}

enum HelloFailure {
    Gone,
    Refused(Error),
    Bad(Error),
}

/// Accepts the control stream and reads the `Hello`, checking it against the certificate.
async fn await_hello(
    link: &Link,
    node_id: &str,
) -> Result<(quinn::SendStream, quinn::RecvStream, ToOrchestrator), HelloFailure> {
    let (send, mut recv) = link
        .conn
        .accept_bi()
        .await
        .map_err(|_| HelloFailure::Gone)?;
    let f = match link.read(&mut recv, Some(Channel::Control)).await {
        Read::Frame(f) => f,
        Read::Bad(e) => return Err(HelloFailure::Bad(e)),
        Read::Finished | Read::Reset => {
            return Err(HelloFailure::Refused(Error::NotHello("an empty stream")));
        }
        Read::Gone => return Err(HelloFailure::Gone),
    };
    let m = check_hello(node_id, &f).map_err(|e| match e {
        Error::NotHello(_) | Error::IdentityMismatch { .. } => HelloFailure::Refused(e),
        e => HelloFailure::Bad(e),
    })?;
    link.stats
        .count_in(Channel::Control, frame::HEADER_LEN + f.payload.len());
    Ok((send, recv, m))
}

/// The orchestrator's check of a session's first control frame, given the node id bound into the
/// client certificate: it must decode as a `Hello` ([`Error::NotHello`] otherwise, which refuses
/// the peer) naming that very node ([`Error::IdentityMismatch`], also a refusal); any other error
/// is a protocol violation. Pure, so the fuzz targets and property tests reach it.
pub fn check_hello(cert_node_id: &str, f: &Frame) -> Result<ToOrchestrator, Error> {
    let m = decode_to_orchestrator(Channel::Control, f)?;
    if !matches!(m, ToOrchestrator::Hello { .. }) {
        return Err(Error::NotHello(orchestrator_name(&m)));
    }
    check_claim(cert_node_id, &m)?;
    Ok(m)
}

/// A `Hello` or `Heartbeat` must name the node of the certificate (`cert`); other messages claim
/// nothing.
pub fn check_claim(cert: &str, m: &ToOrchestrator) -> Result<(), Error> {
    let claimed = match m {
        ToOrchestrator::Hello { info, .. } | ToOrchestrator::Heartbeat { info } => &info.node_id,
        _ => return Ok(()),
    };
    if claimed == cert {
        Ok(())
    } else {
        Err(Error::IdentityMismatch {
            cert: cert.to_string(),
            message: orchestrator_name(m),
            claimed: claimed.clone(),
        })
    }
}

async fn read_node_control(
    link: Link,
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<ToOrchestrator>,
    node_id: Arc<str>,
) {
    loop {
        let f = match link.read(&mut recv, Some(Channel::Control)).await {
            Read::Frame(f) => f,
            Read::Finished | Read::Reset => {
                link.end("the node ended the session");
                return;
            }
            Read::Gone => return,
            Read::Bad(e) => {
                link.fail(&e);
                return;
            }
        };
        let m = match decode_to_orchestrator(Channel::Control, &f) {
            Ok(m) => m,
            Err(e) => {
                link.fail(&e);
                return;
            }
        };
        if let Err(e) = check_claim(&node_id, &m) {
            link.refuse(&e);
            return;
        }
        link.stats
            .count_in(Channel::Control, frame::HEADER_LEN + f.payload.len());
        if !link.forward(&tx, m).await {
            link.end("the orchestrator let go of the session");
            return;
        }
    }
}

async fn accept_node_streams(link: Link, tx: mpsc::Sender<ToOrchestrator>) {
    let reports_open = Arc::new(AtomicBool::new(false));
    loop {
        let recv = tokio::select! {
            biased;
            _ = link.token.cancelled() => return,
            s = link.conn.accept_uni() => match s { Ok(s) => s, Err(_) => return },
        };
        tokio::spawn(read_node_stream(
            link.clone(),
            recv,
            tx.clone(),
            reports_open.clone(),
        ));
    }
}

/// One uni stream from the node: its first frame says which channel it is.
async fn read_node_stream(
    link: Link,
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<ToOrchestrator>,
    reports_open: Arc<AtomicBool>,
) {
    let first = match link.read(&mut recv, None).await {
        Read::Frame(f) => f,
        Read::Bad(e) => return link.fail(&e),
        Read::Finished | Read::Reset | Read::Gone => return,
    };
    let Some(channel) = Channel::from_kind(first.kind) else {
        return link.fail(&Error::UnknownChannel(first.kind));
    };
    match channel {
        Channel::Reports => {
            if reports_open.swap(true, Ordering::AcqRel) {
                return link.fail(&Error::SecondStream(Channel::Reports));
            }
            read_reports(link, recv, tx, first).await
        }
        Channel::Logs | Channel::Results => read_bulk(link, recv, tx, channel, first).await,
        Channel::Control | Channel::Commands => link.fail(&Error::ForbiddenStream(channel)),
    }
}

async fn read_reports(
    link: Link,
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<ToOrchestrator>,
    first: Frame,
) {
    let mut next = Some(first);
    loop {
        let f = match next.take() {
            Some(f) => f,
            None => match link.read(&mut recv, Some(Channel::Reports)).await {
                Read::Frame(f) => f,
                Read::Bad(e) => return link.fail(&e),
                Read::Finished | Read::Reset | Read::Gone => return,
            },
        };
        let m = match decode_to_orchestrator(Channel::Reports, &f) {
            Ok(m) => m,
            Err(e) => return link.fail(&e),
        };
        link.stats
            .count_in(Channel::Reports, frame::HEADER_LEN + f.payload.len());
        if !link.forward(&tx, m).await {
            return link.end("the orchestrator let go of the session");
        }
    }
}

/// One request's `LogLine…LogEnd` or `ResultChunk…ResultEnd` stream.
async fn read_bulk(
    link: Link,
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<ToOrchestrator>,
    channel: Channel,
    first: Frame,
) {
    let mut request: Option<u64> = None;
    let mut next = Some(first);
    loop {
        let f = match next.take() {
            Some(f) => f,
            None => match link.read(&mut recv, Some(channel)).await {
                Read::Frame(f) => f,
                Read::Bad(e) => return link.fail(&e),
                Read::Gone => return,
                Read::Finished => {
                    return link.fail(&Error::Unfinished {
                        channel,
                        request_id: request.unwrap_or_default(),
                    });
                }
                Read::Reset => {
                    // The node gave up on this request; tell whoever waits for its end.
                    let request_id = request.unwrap_or_default();
                    let error = format!("the node abandoned request {request_id}");
                    let end = match channel {
                        Channel::Logs => ToOrchestrator::LogEnd { request_id, error },
                        _ => ToOrchestrator::ResultEnd { request_id, error },
                    };
                    link.forward(&tx, end).await;
                    return;
                }
            },
        };
        let m = match decode_to_orchestrator(channel, &f) {
            Ok(m) => m,
            Err(e) => return link.fail(&e),
        };
        let Some((request_id, end)) = bulk_request(&m) else {
            return;
        };
        match request {
            None => request = Some(request_id),
            Some(expected) if expected != request_id => {
                return link.fail(&Error::MixedRequests {
                    channel,
                    expected,
                    got: request_id,
                });
            }
            Some(_) => {}
        }
        link.stats
            .count_in(channel, frame::HEADER_LEN + f.payload.len());
        if !link.forward(&tx, m).await {
            return link.end("the orchestrator let go of the session");
        }
        if end {
            return match link.read(&mut recv, Some(channel)).await {
                Read::Finished | Read::Reset | Read::Gone => {}
                Read::Bad(e) => link.fail(&e),
                Read::Frame(_) => link.fail(&Error::AfterEnd {
                    channel,
                    request_id,
                }),
            };
        }
    }
}

/// Orchestrator → node: `Ack` on control, everything else on the commands stream.
async fn route_commands(
    link: Link,
    mut rx: mpsc::Receiver<ToCompute>,
    ctl_send: quinn::SendStream,
    opts: SessionOptions,
) {
    let (ctl_q, ctl_rx) = mpsc::channel(opts.channel_capacity);
    let (cmd_q, cmd_rx) = mpsc::channel(opts.channel_capacity);
    let ctl_writer = tokio::spawn(write_stream(
        link.clone(),
        Channel::Control,
        Some(ctl_send),
        ctl_rx,
    ));
    let cmd_writer = tokio::spawn(write_stream(link.clone(), Channel::Commands, None, cmd_rx));
    loop {
        let m = tokio::select! {
            biased;
            _ = link.token.cancelled() => return,
            m = rx.recv() => m,
        };
        let Some(m) = m else { break };
        let (channel, bytes) = match encode_to_compute(&m) {
            Ok(x) => x,
            Err(e) => return link.fail(&e),
        };
        let queue = match channel {
            Channel::Control => &ctl_q,
            Channel::Commands => &cmd_q,
            other => {
                return link.fail(&Error::WrongChannel {
                    message: compute_name(&m),
                    belongs: other,
                    on: Channel::Commands,
                });
            }
        };
        if !link.forward(queue, bytes).await {
            return;
        }
    }
    // The orchestrator let go: deliver what it sent before, then close.
    drop((ctl_q, cmd_q));
    let _ = tokio::time::timeout(opts.idle_timeout, async {
        let _ = ctl_writer.await;
        let _ = cmd_writer.await;
    })
    .await;
    link.end("session ended by the orchestrator");
}

// ---------------------------------------------------------------------------------------------
// Compute node side
// ---------------------------------------------------------------------------------------------

/// The orchestrator a node's session is connected to.
#[derive(Debug, Clone)]
pub struct Connected {
    /// The `HOST:PORT` dialled.
    pub orchestrator: String,
    /// The node id in the orchestrator's certificate.
    pub server_id: String,
    pub link: LinkStats,
}

/// The compute node's side: keeps one session to one of `orchestrators` up, reconnecting with backoff.
#[derive(Debug)]
pub struct SessionClient {
    orchestrators: Vec<String>,
    config: quinn::ClientConfig,
    opts: SessionOptions,
    stats: SessionStats,
    seed: u64,
    /// Dial every orchestrator from this endpoint instead of binding one per address family.
    endpoint: Option<quinn::Endpoint>,
}

impl SessionClient {
    pub fn new(
        orchestrators: Vec<String>,
        identity: &ClientIdentity,
        opts: SessionOptions,
    ) -> Result<Self, Error> {
        opts.validate()?;
        let orchestrators: Vec<String> = orchestrators
            .into_iter()
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty())
            .collect();
        if orchestrators.is_empty() {
            return Err(Error::NoOrchestrators);
        }
        Ok(SessionClient {
            orchestrators,
            config: identity.client_config(&opts)?,
            opts,
            stats: SessionStats::default(),
            seed: random_seed(),
            endpoint: None,
        })
    }

    /// Seeds the backoff jitter (tests).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Dials from `endpoint` — one the caller made over its own socket or runtime
    /// (`quinn::Endpoint::new_with_abstract_socket`), e.g. a simulated network in tests — instead
    /// of binding a UDP socket per address family. [`SessionClient::run`] closes it when it returns.
    pub fn with_endpoint(mut self, endpoint: quinn::Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    pub fn stats(&self) -> SessionStats {
        self.stats.clone()
    }

    /// Runs until `shutdown`. Each established connection becomes one call of `session` with a fresh
    /// [`ComputeEnd`]; when the connection dies its inbox closes, and `session`'s future must then
    /// return — the next connection is made only after it has.
    pub async fn run<F>(self, shutdown: CancellationToken, mut session: F) -> Result<(), Error>
    where
        F: FnMut(ComputeEnd, Connected) -> BoxFuture<'static, ()>,
    {
        let mut backoff = Backoff::new(self.opts.backoff_base, self.opts.backoff_cap, self.seed);
        let mut endpoints = Endpoints {
            given: self.endpoint.clone(),
            ..Endpoints::default()
        };
        let mut next = 0usize;
        let mut rounds = 0u64;
        while !shutdown.is_cancelled() {
            if rounds > 0 {
                SessionStats::bump(&self.stats.0.reconnect_attempts);
            }
            rounds += 1;
            let connected = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                c = self.connect(&mut endpoints, &mut next, &mut backoff) => c,
            };
            match connected {
                Ok((conn, server_id, target)) => {
                    SessionStats::bump(&self.stats.0.handshakes);
                    // tokio's clock (the same as std's outside tests) so a paused or simulated
                    // clock sees how long the session lived.
                    let started = tokio::time::Instant::now();
                    self.run_session(conn, &target, server_id, &shutdown, &mut session)
                        .await;
                    if started.elapsed() > self.opts.backoff_reset_after {
                        backoff.reset();
                    }
                }
                Err(e) => {
                    SessionStats::bump(&self.stats.0.handshake_failures);
                    self.stats.set_last_error(e.to_string());
                    tracing::warn!(error = %e, "cannot open a compute session");
                }
            }
            let delay = backoff.next_delay();
            tracing::debug!(?delay, "next compute session attempt");
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        endpoints.close().await;
        Ok(())
    }

    /// One connection round: dials the orchestrators in turn, a new dial every
    /// [`SessionOptions::probe_interval`] (jittered) for as long as none has answered, each left open
    /// until its own handshake timeout. QUIC retransmits a lost Initial only after an exponentially
    /// growing PTO (0.3 s, 0.6 s, 1.2 s, … with the default initial RTT), so a single dial into a link
    /// that is down probes it ever more rarely; overlapping fresh dials keep probing it every few
    /// hundred milliseconds without giving up on a slow path early (a path with a 3 s RTT still
    /// answers the first dial). The first dial the orchestrator answers is finished and every other
    /// dropped. A silent path never ends the round; a refusal (the orchestrator closed the
    /// handshake, or answered and did not finish it in time) does, and the caller backs off.
    /// Returns the connection, the orchestrator's node id and the address dialled.
    async fn connect(
        &self,
        endpoints: &mut Endpoints,
        next: &mut usize,
        backoff: &mut Backoff,
    ) -> Result<(quinn::Connection, String, String), Error> {
        let mut dials = futures::stream::FuturesUnordered::new();
        let mut next_dial = tokio::time::Instant::now();
        let mut first = true;
        loop {
            tokio::select! {
                biased;
                Some(answer) = futures::StreamExt::next(&mut dials) => match answer {
                    Answer::Answered { target, connecting, deadline } => {
                        // Dropping the other dials abandons their handshakes.
                        drop(dials);
                        let (conn, server_id) = self.finish(connecting, &target, deadline).await?;
                        return Ok((conn, server_id, target));
                    }
                    Answer::Silent { target } => {
                        SessionStats::bump(&self.stats.0.unanswered_dials);
                        let e = Error::HandshakeTimeout {
                            addr: target.clone(),
                            timeout: self.opts.handshake_timeout,
                        };
                        tracing::debug!(orchestrator = %target, error = %e, "dial unanswered");
                        self.stats.set_last_error(e.to_string());
                    }
                    Answer::Refused(e) => return Err(e),
                },
                _ = tokio::time::sleep_until(next_dial) => {
                    let target = self.orchestrators[*next % self.orchestrators.len()].clone();
                    *next = next.wrapping_add(1);
                    if !first {
                        SessionStats::bump(&self.stats.0.redials);
                    }
                    first = false;
                    next_dial = tokio::time::Instant::now() + backoff.next_probe(self.opts.probe_interval);
                    match self.dial(endpoints, &target).await {
                        Ok(connecting) => {
                            let deadline = tokio::time::Instant::now() + self.opts.handshake_timeout;
                            dials.push(first_answer(connecting, target, deadline));
                        }
                        // Nothing else under way: let the caller back off.
                        Err(e) if dials.is_empty() => return Err(e),
                        Err(e) => {
                            tracing::warn!(orchestrator = %target, error = %e, "cannot dial");
                            self.stats.set_last_error(e.to_string());
                        }
                    }
                }
            }
        }
    }

    /// Starts one QUIC handshake with `target`.
    async fn dial(
        &self,
        endpoints: &mut Endpoints,
        target: &str,
    ) -> Result<quinn::Connecting, Error> {
        let addr = tokio::net::lookup_host(target)
            .await
            .map_err(|source| Error::Resolve {
                addr: target.to_string(),
                source,
            })?
            .next()
            .ok_or_else(|| Error::NoAddress {
                addr: target.to_string(),
            })?;
        let endpoint = endpoints.for_addr(addr)?;
        endpoint
            .connect_with(self.config.clone(), addr, SERVER_NAME)
            .map_err(|source| Error::Dial {
                addr: target.to_string(),
                source,
            })
    }

    /// Completes a handshake the orchestrator has answered, by its dial's deadline.
    async fn finish(
        &self,
        connecting: quinn::Connecting,
        target: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(quinn::Connection, String), Error> {
        let conn = tokio::time::timeout_at(deadline, connecting)
            .await
            .map_err(|_| Error::HandshakeTimeout {
                addr: target.to_string(),
                timeout: self.opts.handshake_timeout,
            })?
            .map_err(|source| Error::Handshake {
                addr: target.to_string(),
                source,
            })?;
        let server_id = tls::peer_node_id(&conn)?;
        Ok((conn, server_id))
    }

    async fn run_session<F>(
        &self,
        conn: quinn::Connection,
        target: &str,
        server_id: String,
        shutdown: &CancellationToken,
        session: &mut F,
    ) where
        F: FnMut(ComputeEnd, Connected) -> BoxFuture<'static, ()>,
    {
        let link = Link {
            conn: conn.clone(),
            stats: self.stats.clone(),
            token: shutdown.child_token(),
            peer: format!("{server_id}@{target}").into(),
            max_frame: self.opts.max_frame,
        };
        // Streams are announced with their first frame: the Hello goes out on this one first.
        let (ctl_send, ctl_recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.stats.set_last_error(e.to_string());
                return;
            }
        };
        let _connected = ConnectedGuard::new(&self.stats);
        self.stats.set_current(Some(conn.clone()));
        let cap = self.opts.channel_capacity;
        let (inbox_tx, inbox_rx) = mpsc::channel(cap);
        let (outbox_tx, outbox_rx) = mpsc::channel(cap);
        tokio::spawn(read_orchestrator_control(
            link.clone(),
            ctl_recv,
            inbox_tx.clone(),
        ));
        tokio::spawn(accept_commands(link.clone(), inbox_tx));
        let dispatcher = tokio::spawn(dispatch_outbox(
            link.clone(),
            outbox_rx,
            ctl_send,
            self.opts,
        ));
        tracing::info!(orchestrator = %target, server = %server_id, "compute session connected");
        let mut fut = session(
            ComputeEnd {
                inbox: inbox_rx,
                outbox: outbox_tx,
            },
            Connected {
                orchestrator: target.to_string(),
                server_id,
                link: LinkStats { conn: conn.clone() },
            },
        );
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                link.token.cancel();
                fut.await;
                conn.close(CLOSE_NORMAL.into(), b"compute node shutting down");
            }
            e = conn.closed() => {
                if !matches!(e, quinn::ConnectionError::LocallyClosed) {
                    self.stats.set_last_error(describe_close(&e));
                }
                tracing::info!(orchestrator = %target, reason = %describe_close(&e), "compute session lost");
                link.token.cancel();
                fut.await;
            }
            _ = &mut fut => {
                // The node let go: flush what it sent, then close.
                let _ = tokio::time::timeout(self.opts.idle_timeout, dispatcher).await;
                link.end("session ended by the compute node");
            }
        }
        self.stats.set_current(None);
    }
}

/// Runs a compute node's sessions: see [`SessionClient::run`].
pub async fn run_client<F>(
    orchestrators: Vec<String>,
    identity: ClientIdentity,
    opts: SessionOptions,
    shutdown: CancellationToken,
    session: F,
) -> Result<(), Error>
where
    F: FnMut(ComputeEnd, Connected) -> BoxFuture<'static, ()>,
{
    SessionClient::new(orchestrators, &identity, opts)?
        .run(shutdown, session)
        .await
}

fn describe_close(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => format!(
            "the orchestrator closed the session: {}",
            String::from_utf8_lossy(&c.reason)
        ),
        quinn::ConnectionError::Reset => {
            "the orchestrator restarted and no longer knows this session (stateless reset)"
                .to_string()
        }
        quinn::ConnectionError::TimedOut => {
            "no packet from the orchestrator within the idle timeout".to_string()
        }
        // A refusal in the handshake (revoked, wrong role, expired…) says what to do.
        other => format!("{other}{}", refusal_hint(&other.to_string())),
    }
}

/// One client endpoint per address family, made on first use (or the one given to the client).
/// How one dial of a connection round ended its first phase.
enum Answer {
    /// The orchestrator's first flight arrived (ServerHello and ALPN): the path works.
    Answered {
        target: String,
        connecting: quinn::Connecting,
        deadline: tokio::time::Instant,
    },
    /// Nothing came back before the dial's deadline.
    Silent { target: String },
    /// The orchestrator closed the handshake before its first flight.
    Refused(Error),
}

/// Waits for the orchestrator's first answer to one dial, until `deadline`.
async fn first_answer(
    mut connecting: quinn::Connecting,
    target: String,
    deadline: tokio::time::Instant,
) -> Answer {
    match tokio::time::timeout_at(deadline, connecting.handshake_data()).await {
        Ok(Ok(_)) => Answer::Answered {
            target,
            connecting,
            deadline,
        },
        Err(_) | Ok(Err(quinn::ConnectionError::TimedOut)) => Answer::Silent { target },
        Ok(Err(source)) => Answer::Refused(Error::Handshake {
            addr: target,
            source,
        }),
    }
}

#[derive(Default)]
struct Endpoints {
    given: Option<quinn::Endpoint>,
    v4: Option<quinn::Endpoint>,
    v6: Option<quinn::Endpoint>,
}

impl Endpoints {
    fn for_addr(&mut self, addr: SocketAddr) -> Result<&quinn::Endpoint, Error> {
        if let Some(ep) = &self.given {
            return Ok(ep);
        }
        let (slot, bind) = if addr.is_ipv4() {
            (&mut self.v4, SocketAddr::from(([0, 0, 0, 0], 0)))
        } else {
            (&mut self.v6, SocketAddr::from(([0u16; 8], 0)))
        };
        if slot.is_none() {
            let ep = quinn::Endpoint::client(bind)
                .map_err(|source| Error::Bind { addr: bind, source })?;
            *slot = Some(ep);
        }
        slot.as_ref().ok_or(Error::Options("unreachable"))
    }

    async fn close(self) {
        for ep in [self.given, self.v4, self.v6].into_iter().flatten() {
            ep.close(CLOSE_NORMAL.into(), b"compute node shutting down");
            let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
        }
    }
}

async fn read_orchestrator_control(
    link: Link,
    mut recv: quinn::RecvStream,
    inbox: mpsc::Sender<ToCompute>,
) {
    loop {
        let f = match link.read(&mut recv, Some(Channel::Control)).await {
            Read::Frame(f) => f,
            Read::Bad(e) => return link.fail(&e),
            Read::Finished | Read::Reset | Read::Gone => return,
        };
        let m = match decode_to_compute(Channel::Control, &f) {
            Ok(m) => m,
            Err(e) => return link.fail(&e),
        };
        link.stats
            .count_in(Channel::Control, frame::HEADER_LEN + f.payload.len());
        if !link.forward(&inbox, m).await {
            return;
        }
    }
}

async fn accept_commands(link: Link, inbox: mpsc::Sender<ToCompute>) {
    let mut inbox = Some(inbox);
    loop {
        let recv = tokio::select! {
            biased;
            _ = link.token.cancelled() => return,
            s = link.conn.accept_uni() => match s { Ok(s) => s, Err(_) => return },
        };
        let Some(inbox) = inbox.take() else {
            return link.fail(&Error::SecondStream(Channel::Commands));
        };
        tokio::spawn(read_commands(link.clone(), recv, inbox));
    }
}

async fn read_commands(link: Link, mut recv: quinn::RecvStream, inbox: mpsc::Sender<ToCompute>) {
    loop {
        let f = match link.read(&mut recv, Some(Channel::Commands)).await {
            Read::Frame(f) => f,
            Read::Bad(e) => return link.fail(&e),
            Read::Finished | Read::Reset | Read::Gone => return,
        };
        let m = match decode_to_compute(Channel::Commands, &f) {
            Ok(m) => m,
            Err(e) => return link.fail(&e),
        };
        link.stats
            .count_in(Channel::Commands, frame::HEADER_LEN + f.payload.len());
        if !link.forward(&inbox, m).await {
            return;
        }
    }
}

/// Node → orchestrator: routes the outbox onto the control, reports and per-request bulk streams,
/// never waiting for a bulk stream while under the bulk budget.
async fn dispatch_outbox(
    link: Link,
    mut outbox: mpsc::Receiver<ToOrchestrator>,
    ctl_send: quinn::SendStream,
    opts: SessionOptions,
) {
    let (ctl_q, ctl_rx) = mpsc::channel(opts.channel_capacity);
    let (rep_q, rep_rx) = mpsc::channel(opts.channel_capacity);
    let mut writers = tokio::task::JoinSet::new();
    writers.spawn(write_stream(
        link.clone(),
        Channel::Control,
        Some(ctl_send),
        ctl_rx,
    ));
    writers.spawn(write_stream(link.clone(), Channel::Reports, None, rep_rx));
    let budget = Arc::new(BulkBudget::default());
    // `None`: the orchestrator stopped that stream; drop the rest of the request.
    let mut bulk: HashMap<(Channel, u64), Option<mpsc::UnboundedSender<Bytes>>> = HashMap::new();
    loop {
        while writers.try_join_next().is_some() {}
        if budget.parked.load(Ordering::Acquire) >= opts.bulk_buffer {
            tokio::select! {
                biased;
                _ = link.token.cancelled() => return,
                _ = budget.freed.notified() => continue,
            }
        }
        let m = tokio::select! {
            biased;
            _ = link.token.cancelled() => return,
            m = outbox.recv() => m,
        };
        let Some(m) = m else { break };
        let (channel, bytes) = match encode_to_orchestrator(&m) {
            Ok(x) => x,
            Err(e) => return link.fail(&e),
        };
        let queue = match channel {
            Channel::Control => &ctl_q,
            Channel::Reports => &rep_q,
            Channel::Logs | Channel::Results => {
                let Some((request_id, end)) = bulk_request(&m) else {
                    continue;
                };
                let entry = bulk.entry((channel, request_id)).or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    writers.spawn(write_bulk(
                        link.clone(),
                        channel,
                        request_id,
                        rx,
                        budget.clone(),
                    ));
                    Some(tx)
                });
                if let Some(tx) = entry {
                    let n = bytes.len();
                    budget.parked.fetch_add(n, Ordering::AcqRel);
                    if tx.send(bytes).is_err() {
                        budget.release(n);
                        *entry = None;
                    }
                }
                if end {
                    bulk.remove(&(channel, request_id));
                }
                continue;
            }
            Channel::Commands => {
                return link.fail(&Error::WrongChannel {
                    message: orchestrator_name(&m),
                    belongs: channel,
                    on: Channel::Reports,
                });
            }
        };
        if !link.forward(queue, bytes).await {
            return;
        }
    }
    // The node let go: finish every stream and wait until the orchestrator has them.
    drop((ctl_q, rep_q, bulk));
    while writers.join_next().await.is_some() {}
}
