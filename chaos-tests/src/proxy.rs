//! A fault-injecting UDP proxy for cutting and degrading QUIC links (Raft between orchestrators,
//! compute sessions) between real processes on loopback.
//!
//! ```text
//!  client A ──┐                 ┌─ socket for A ─┐
//!  client B ──┼─▶ listen socket ┼─ socket for B ─┼──▶ upstream
//!             │   (local_addr)  └─ ...          ─┘
//!             │        ▲                  │
//!             │        └── to_client link ◀┘   (each link: blackhole → loss → duplicate →
//!             └──────────▶ to_upstream link ──▶  reorder → bandwidth → delay/jitter → send)
//! ```
//!
//! Every client source address gets its own upstream socket, so the upstream sees several clients
//! as several peers. Each direction is one `Link`: a pure state machine (no I/O, no clock, its
//! randomness from a seeded generator) that a thin task feeds and drains. The faults are shared
//! and can be changed while the proxy runs ([`Proxy::set`]); with [`Faults::seed`] set, the same
//! sequence of datagrams meets the same fate.
//!
//! Depends on no crate of ours.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams waiting for a link task; beyond this they are dropped (counted as `dropped_overflow`).
const LINK_CHANNEL: usize = 8_192;
/// A datagram held back for reordering is sent anyway if no other datagram follows within this.
pub const REORDER_MAX_HOLD: Duration = Duration::from_millis(100);
/// The bandwidth queue holds this much traffic (at the configured rate) before it drops.
const QUEUE_TIME: Duration = Duration::from_millis(250);
/// ... but never less than this many bytes (four full-size Ethernet frames).
const QUEUE_MIN_BYTES: u64 = 6_000;
/// The token bucket holds this much traffic (a burst) ...
const BURST_TIME: Duration = Duration::from_millis(20);
/// ... but never less than one full-size Ethernet frame.
const BURST_MIN_BYTES: u64 = 1_500;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the local address of the listen socket: {0}")]
    LocalAddr(std::io::Error),
    #[error("{name} must be a probability between 0 and 1, not {value}")]
    Probability { name: &'static str, value: f64 },
}

/// One direction of the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Client → upstream.
    ToUpstream,
    /// Upstream → client.
    ToClient,
}

/// The faults applied to one direction. The default is a perfect link.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LinkFaults {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Every datagram is held this long ...
    #[serde(rename = "delay_ms", serialize_with = "millis")]
    pub delay: Duration,
    /// ... plus or minus a uniform random amount up to this (never below zero). Jitter larger than
    /// the gap between datagrams reorders them, as on a real network.
    #[serde(rename = "jitter_ms", serialize_with = "millis")]
    pub jitter: Duration,
    /// Probability that a datagram is sent twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back and sent after the next one (or after
    /// [`REORDER_MAX_HOLD`] if none follows).
    pub reorder: f64,
    /// Bytes per second through a token bucket; what overflows a small queue (250 ms of traffic,
    /// at least 6,000 bytes) is dropped. `None` is unlimited.
    pub bandwidth: Option<u64>,
}

impl LinkFaults {
    /// A link that loses datagrams with probability `p`.
    pub fn loss(p: f64) -> Self {
        LinkFaults {
            loss: p,
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<(), Error> {
        for (name, value) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(Error::Probability { name, value });
            }
        }
        Ok(())
    }
}

/// The proxy's whole fault configuration. The default forwards everything untouched.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Faults {
    pub to_upstream: LinkFaults,
    pub to_client: LinkFaults,
    /// Drop everything, both ways, including what is already queued or delayed: a cut link.
    pub blackhole: bool,
    /// Clients cut off, both ways: datagrams from these source addresses, and the upstream's
    /// answers to them, are dropped (a partition of one peer behind a proxy several peers share).
    pub blocked_sources: Vec<SocketAddr>,
    /// Seeds the random decisions, so a run can be repeated. Every [`Proxy::set`] with a seed
    /// restarts both directions' random streams from it. `None` seeds from the clock.
    pub seed: Option<u64>,
}

impl Faults {
    /// No faults: every datagram forwarded at once.
    pub fn none() -> Self {
        Self::default()
    }

    /// The same faults in both directions.
    pub fn both(link: LinkFaults) -> Self {
        Faults {
            to_upstream: link.clone(),
            to_client: link,
            ..Self::default()
        }
    }

    /// Everything dropped.
    pub fn blackhole() -> Self {
        Faults {
            blackhole: true,
            ..Self::default()
        }
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The faults of one direction.
    pub fn link(&self, direction: Direction) -> &LinkFaults {
        match direction {
            Direction::ToUpstream => &self.to_upstream,
            Direction::ToClient => &self.to_client,
        }
    }

    /// The faults of one direction, to change.
    pub fn link_mut(&mut self, direction: Direction) -> &mut LinkFaults {
        match direction {
            Direction::ToUpstream => &mut self.to_upstream,
            Direction::ToClient => &mut self.to_client,
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        self.to_upstream.validate()?;
        self.to_client.validate()
    }
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1_000.0)
}

/// Counters of one direction, since the proxy started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DirectionStats {
    /// Datagrams that arrived at the proxy.
    pub received: u64,
    /// Datagrams sent on (duplicates included).
    pub forwarded: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Datagrams held back to be sent after the next one.
    pub reordered: u64,
    /// All drops, the sum of the four below.
    pub dropped: u64,
    pub dropped_loss: u64,
    pub dropped_blackhole: u64,
    pub dropped_bandwidth: u64,
    /// The proxy could not keep up or the socket refused the send.
    pub dropped_overflow: u64,
}

/// Counters of both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    pub to_upstream: DirectionStats,
    pub to_client: DirectionStats,
    /// Client source addresses seen (each has its own upstream socket).
    pub clients: u64,
}

impl ProxyStats {
    pub fn direction(&self, direction: Direction) -> &DirectionStats {
        match direction {
            Direction::ToUpstream => &self.to_upstream,
            Direction::ToClient => &self.to_client,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_blackhole: AtomicU64,
    dropped_bandwidth: AtomicU64,
    dropped_overflow: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DirectionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut s = DirectionStats {
            received: get(&self.received),
            forwarded: get(&self.forwarded),
            duplicated: get(&self.duplicated),
            reordered: get(&self.reordered),
            dropped: 0,
            dropped_loss: get(&self.dropped_loss),
            dropped_blackhole: get(&self.dropped_blackhole),
            dropped_bandwidth: get(&self.dropped_bandwidth),
            dropped_overflow: get(&self.dropped_overflow),
        };
        s.dropped = s.dropped_loss + s.dropped_blackhole + s.dropped_bandwidth + s.dropped_overflow;
        s
    }
}

/// SplitMix64: tiny, fast, and good enough to decide the fate of datagrams.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn seeded(seed: u64, direction: Direction) -> Self {
        let salt = match direction {
            Direction::ToUpstream => 0x5555_5555_5555_5555,
            Direction::ToClient => 0xAAAA_AAAA_AAAA_AAAA,
        };
        Rng(seed ^ salt)
    }

    fn from_clock(direction: Direction) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        Self::seeded(
            nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32),
            direction,
        )
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`; draws nothing when `p` is zero, so a perfect link stays cheap.
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.next_f64() < p
    }
}

/// What a [`Link`] carries: anything with a size on the wire.
pub(crate) trait Wire: Clone {
    fn wire_len(&self) -> usize;
}

/// One direction's fault pipeline, with no I/O: datagrams go in with [`Link::push`] and come out
/// of [`Link::poll`] when due; [`Link::next_wakeup`] says when to poll again.
#[derive(Debug)]
pub(crate) struct Link<P> {
    direction: Direction,
    faults: LinkFaults,
    blackhole: bool,
    rng: Rng,
    counters: Arc<Counters>,
    /// A datagram held back for reordering, and since when.
    held: Option<(Instant, P)>,
    /// The bandwidth queue and its token bucket (tokens may go negative: a datagram larger than
    /// the bucket still passes, and the debt delays the next).
    queue: VecDeque<P>,
    queued_bytes: u64,
    tokens: f64,
    refilled: Instant,
    /// Delayed datagrams by due time; `seq` keeps equal due times in arrival order.
    in_flight: BinaryHeap<Reverse<Timed<P>>>,
    seq: u64,
}

#[derive(Debug)]
struct Timed<P> {
    at: Instant,
    seq: u64,
    packet: P,
}

impl<P> PartialEq for Timed<P> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<P> Eq for Timed<P> {}
impl<P> PartialOrd for Timed<P> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<P> Ord for Timed<P> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl<P: Wire> Link<P> {
    fn new(direction: Direction, faults: &Faults, counters: Arc<Counters>, now: Instant) -> Self {
        let mut link = Link {
            direction,
            faults: LinkFaults::default(),
            blackhole: false,
            rng: Rng::from_clock(direction),
            counters,
            held: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            tokens: 0.0,
            refilled: now,
            in_flight: BinaryHeap::new(),
            seq: 0,
        };
        link.set_faults(faults, now);
        link
    }

    fn set_faults(&mut self, faults: &Faults, now: Instant) {
        if let Some(seed) = faults.seed {
            self.rng = Rng::seeded(seed, self.direction);
        }
        let new = faults.link(self.direction).clone();
        if new.bandwidth != self.faults.bandwidth {
            self.tokens = new.bandwidth.map_or(0.0, |r| burst(r) as f64);
            self.refilled = now;
        }
        self.faults = new;
        self.blackhole = faults.blackhole;
        if self.blackhole {
            let cut = self.held.take().map_or(0, |_| 1)
                + self.queue.len() as u64
                + self.in_flight.len() as u64;
            self.queue.clear();
            self.queued_bytes = 0;
            self.in_flight.clear();
            self.counters
                .dropped_blackhole
                .fetch_add(cut, Ordering::Relaxed);
        } else if self.faults.bandwidth.is_none() {
            // The cap was lifted: what waited for it goes on now.
            self.queued_bytes = 0;
            for p in std::mem::take(&mut self.queue) {
                self.schedule(now, p);
            }
        }
    }

    /// A datagram arrives.
    fn push(&mut self, now: Instant, packet: P) {
        Counters::bump(&self.counters.received);
        if self.blackhole {
            Counters::bump(&self.counters.dropped_blackhole);
            return;
        }
        if self.rng.chance(self.faults.loss) {
            Counters::bump(&self.counters.dropped_loss);
            return;
        }
        if self.rng.chance(self.faults.duplicate) {
            Counters::bump(&self.counters.duplicated);
            self.reorder(now, packet.clone());
        }
        self.reorder(now, packet);
    }

    fn reorder(&mut self, now: Instant, packet: P) {
        if self.held.is_none() && self.rng.chance(self.faults.reorder) {
            Counters::bump(&self.counters.reordered);
            self.held = Some((now, packet));
            return;
        }
        self.shape(now, packet);
        if let Some((_, held)) = self.held.take() {
            self.shape(now, held);
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.faults.bandwidth {
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate as f64).min(burst(rate) as f64);
            self.refilled = now;
        }
    }

    fn shape(&mut self, now: Instant, packet: P) {
        let Some(rate) = self.faults.bandwidth else {
            self.schedule(now, packet);
            return;
        };
        self.refill(now);
        let len = packet.wire_len() as u64;
        if self.queue.is_empty() && self.tokens >= 0.0 {
            self.tokens -= len as f64;
            self.schedule(now, packet);
        } else if self.queued_bytes + len <= queue_limit(rate) {
            self.queued_bytes += len;
            self.queue.push_back(packet);
        } else {
            Counters::bump(&self.counters.dropped_bandwidth);
        }
    }

    fn schedule(&mut self, now: Instant, packet: P) {
        let mut delay = self.faults.delay;
        if !self.faults.jitter.is_zero() {
            let offset = self.faults.jitter.mul_f64(self.rng.next_f64());
            delay = if self.rng.next_u64() & 1 == 0 {
                delay + offset
            } else {
                delay.saturating_sub(offset)
            };
        }
        self.seq += 1;
        self.in_flight.push(Reverse(Timed {
            at: now + delay,
            seq: self.seq,
            packet,
        }));
    }

    /// The next datagram due at `now`, if any. Call until `None`.
    fn poll(&mut self, now: Instant) -> Option<P> {
        if let Some((since, _)) = &self.held
            && now >= *since + REORDER_MAX_HOLD
            && let Some((_, p)) = self.held.take()
        {
            self.shape(now, p);
        }
        if !self.queue.is_empty() {
            self.refill(now);
            while self.tokens >= 0.0 {
                let Some(p) = self.queue.pop_front() else {
                    break;
                };
                let len = p.wire_len() as u64;
                self.queued_bytes -= len;
                self.tokens -= len as f64;
                self.schedule(now, p);
            }
        }
        match self.in_flight.peek() {
            Some(Reverse(t)) if t.at <= now => self.in_flight.pop().map(|Reverse(t)| t.packet),
            _ => None,
        }
    }

    /// When [`Link::poll`] may next return something.
    fn next_wakeup(&self) -> Option<Instant> {
        let held = self
            .held
            .as_ref()
            .map(|(since, _)| *since + REORDER_MAX_HOLD);
        let queue = match (self.queue.is_empty(), self.faults.bandwidth) {
            (false, Some(rate)) if self.tokens < 0.0 => Some(
                self.refilled
                    + Duration::from_secs_f64(-self.tokens / rate as f64)
                    + Duration::from_micros(1),
            ),
            (false, _) => Some(self.refilled),
            (true, _) => None,
        };
        let in_flight = self.in_flight.peek().map(|Reverse(t)| t.at);
        [held, queue, in_flight].into_iter().flatten().min()
    }
}

fn burst(rate: u64) -> u64 {
    ((rate as f64 * BURST_TIME.as_secs_f64()) as u64).max(BURST_MIN_BYTES)
}

fn queue_limit(rate: u64) -> u64 {
    ((rate as f64 * QUEUE_TIME.as_secs_f64()) as u64).max(QUEUE_MIN_BYTES)
}

/// A datagram on its way: payload, the socket to send it from and where to.
#[derive(Clone, Debug)]
struct Packet {
    payload: Arc<[u8]>,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
}

impl Wire for Packet {
    fn wire_len(&self) -> usize {
        self.payload.len()
    }
}

/// A running proxy. Dropping it stops it (without waiting); [`Proxy::shutdown`] waits until its
/// sockets are closed.
#[derive(Debug)]
pub struct Proxy {
    local_addr: SocketAddr,
    upstream: SocketAddr,
    faults: watch::Sender<Faults>,
    counters: [Arc<Counters>; 2],
    clients: Arc<AtomicU64>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Proxy {
    /// Listens on `listen` (port 0 picks one; see [`Proxy::local_addr`]) and forwards to
    /// `upstream`, with no faults. Must be called inside a tokio runtime.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> Result<Proxy, Error> {
        Self::start_with(listen, upstream, Faults::none()).await
    }

    /// As [`Proxy::start`], with faults from the first datagram on.
    pub async fn start_with(
        listen: SocketAddr,
        upstream: SocketAddr,
        faults: Faults,
    ) -> Result<Proxy, Error> {
        faults.validate()?;
        let socket = UdpSocket::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = socket.local_addr().map_err(Error::LocalAddr)?;
        let socket = Arc::new(socket);
        let (faults_tx, _) = watch::channel(faults);
        let counters = [Arc::new(Counters::default()), Arc::new(Counters::default())];
        let clients = Arc::new(AtomicU64::new(0));
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();

        let (up_tx, up_rx) = mpsc::channel(LINK_CHANNEL);
        let (down_tx, down_rx) = mpsc::channel(LINK_CHANNEL);
        for (direction, rx, c) in [
            (Direction::ToUpstream, up_rx, &counters[0]),
            (Direction::ToClient, down_rx, &counters[1]),
        ] {
            tasks.spawn(run_link(
                direction,
                rx,
                faults_tx.subscribe(),
                c.clone(),
                shutdown.clone(),
            ));
        }
        let listener = Listener {
            socket,
            upstream,
            up_tx,
            down_tx,
            counters: counters.clone(),
            clients: clients.clone(),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
            faults: faults_tx.subscribe(),
        };
        tasks.spawn(listener.run());
        tracing::debug!(%local_addr, %upstream, "udp proxy started");
        Ok(Proxy {
            local_addr,
            upstream,
            faults: faults_tx,
            counters,
            clients,
            shutdown,
            tasks,
        })
    }

    /// Where clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Replaces the faults; takes effect for the next datagram (and, for a blackhole, for what
    /// is already queued).
    pub fn set(&self, faults: Faults) -> Result<(), Error> {
        faults.validate()?;
        self.faults.send_replace(faults);
        Ok(())
    }

    /// Changes the faults in place, e.g. `proxy.update(|f| f.blackhole = true)`.
    pub fn update(&self, change: impl FnOnce(&mut Faults)) -> Result<(), Error> {
        let mut faults = self.faults();
        change(&mut faults);
        self.set(faults)
    }

    /// Cuts (`true`) or restores (`false`) the link, leaving the other faults as they are.
    pub fn blackhole(&self, on: bool) -> Result<(), Error> {
        self.update(|f| f.blackhole = on)
    }

    /// All faults off (the seed is kept).
    pub fn heal(&self) -> Result<(), Error> {
        self.update(|f| {
            *f = Faults {
                seed: f.seed,
                ..Faults::none()
            }
        })
    }

    pub fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            to_upstream: self.counters[0].snapshot(),
            to_client: self.counters[1].snapshot(),
            clients: self.clients.load(Ordering::Relaxed),
        }
    }

    /// Stops forwarding and waits until every task has ended and every socket is closed.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Receives from clients, opens one upstream socket per client, and hands datagrams to the links.
struct Listener {
    socket: Arc<UdpSocket>,
    upstream: SocketAddr,
    up_tx: mpsc::Sender<Packet>,
    down_tx: mpsc::Sender<Packet>,
    counters: [Arc<Counters>; 2],
    clients: Arc<AtomicU64>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    faults: watch::Receiver<Faults>,
}

impl Listener {
    async fn run(self) {
        let mut sockets: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, from) = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    Err(e) => {
                        // Unconnected sockets report almost nothing; keep serving the others.
                        tracing::debug!(error = %e, "udp proxy: receive from clients failed");
                        continue;
                    }
                },
            };
            if self.faults.borrow().blocked_sources.contains(&from) {
                Counters::bump(&self.counters[0].received);
                Counters::bump(&self.counters[0].dropped_blackhole);
                continue;
            }
            let upstream_socket = match sockets.get(&from) {
                Some(s) => s.clone(),
                None => match self.open_client(from).await {
                    Ok(s) => {
                        sockets.insert(from, s.clone());
                        s
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, client = %from, "udp proxy: cannot open an upstream socket");
                        Counters::bump(&self.counters[0].dropped_overflow);
                        continue;
                    }
                },
            };
            let packet = Packet {
                payload: Arc::from(&buf[..n]),
                socket: upstream_socket,
                to: self.upstream,
            };
            if self.up_tx.try_send(packet).is_err() {
                Counters::bump(&self.counters[0].received);
                Counters::bump(&self.counters[0].dropped_overflow);
            }
        }
    }

    /// A new socket towards the upstream for client `from`, and a task relaying its replies.
    async fn open_client(&self, client: SocketAddr) -> std::io::Result<Arc<UdpSocket>> {
        let ip = match (self.upstream.ip(), self.socket.local_addr()?.ip()) {
            (IpAddr::V4(u), _) if u.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (IpAddr::V6(u), _) if u.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            (IpAddr::V4(_), _) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (IpAddr::V6(_), _) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let socket = Arc::new(UdpSocket::bind(SocketAddr::new(ip, 0)).await?);
        self.clients.fetch_add(1, Ordering::Relaxed);
        let relay = Relay {
            from_upstream: socket.clone(),
            listen: self.socket.clone(),
            upstream: self.upstream,
            client,
            down_tx: self.down_tx.clone(),
            counters: self.counters[1].clone(),
            shutdown: self.shutdown.clone(),
            faults: self.faults.clone(),
        };
        self.tasks.spawn(relay.run());
        Ok(socket)
    }
}

/// Relays what the upstream sends to one client's socket back towards that client.
struct Relay {
    from_upstream: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    upstream: SocketAddr,
    client: SocketAddr,
    down_tx: mpsc::Sender<Packet>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    faults: watch::Receiver<Faults>,
}

impl Relay {
    async fn run(self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, from) = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                r = self.from_upstream.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, client = %self.client, "udp proxy: receive from upstream failed");
                        continue;
                    }
                },
            };
            // Only the upstream may answer through this socket.
            if from != self.upstream {
                continue;
            }
            if self.faults.borrow().blocked_sources.contains(&self.client) {
                Counters::bump(&self.counters.received);
                Counters::bump(&self.counters.dropped_blackhole);
                continue;
            }
            let packet = Packet {
                payload: Arc::from(&buf[..n]),
                socket: self.listen.clone(),
                to: self.client,
            };
            if self.down_tx.try_send(packet).is_err() {
                Counters::bump(&self.counters.received);
                Counters::bump(&self.counters.dropped_overflow);
            }
        }
    }
}

/// The thin runtime around one [`Link`]: feed it, wake when it says, send what is due.
async fn run_link(
    direction: Direction,
    mut rx: mpsc::Receiver<Packet>,
    mut faults: watch::Receiver<Faults>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    let initial = faults.borrow_and_update().clone();
    let mut link: Link<Packet> = Link::new(direction, &initial, counters.clone(), Instant::now());
    loop {
        let now = Instant::now();
        while let Some(p) = link.poll(now) {
            match p.socket.send_to(&p.payload, p.to).await {
                Ok(_) => Counters::bump(&counters.forwarded),
                Err(e) => {
                    tracing::debug!(error = %e, to = %p.to, "udp proxy: send failed");
                    Counters::bump(&counters.dropped_overflow);
                }
            }
        }
        let wake = link.next_wakeup();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            changed = faults.changed() => {
                if changed.is_err() {
                    break;
                }
                let f = faults.borrow_and_update().clone();
                link.set_faults(&f, Instant::now());
            }
            p = rx.recv() => match p {
                Some(p) => link.push(Instant::now(), p),
                None => break,
            },
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashSet;

    const LOOPBACK: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    /// A guard against hangs only; nothing asserts how fast anything is.
    const PATIENCE: Duration = Duration::from_secs(20);
    /// Every datagram a test sends starts with this, and receivers ignore any datagram without
    /// it: tests run side by side in separate processes, and a QUIC client of another test may
    /// keep retrying a port that the kernel has since handed to one of ours.
    const MARK: &[u8] = b"caravel-proxy-test:";

    fn tagged(body: &[u8]) -> Vec<u8> {
        [MARK, body].concat()
    }

    fn untagged(datagram: &[u8]) -> Option<&[u8]> {
        datagram.strip_prefix(MARK)
    }

    /// An upstream that echoes every datagram back to its sender.
    async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let socket = UdpSocket::bind(LOOPBACK).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        (addr, task)
    }

    /// An upstream that records what it receives, read as it arrives so no buffer overflows.
    type Received = Arc<std::sync::Mutex<Vec<(Vec<u8>, SocketAddr)>>>;

    struct Sink {
        got: Received,
        _task: tokio::task::JoinHandle<()>,
    }

    impl Sink {
        /// Everything received so far, once nothing new has arrived for `quiet`.
        async fn drain(&self, quiet: Duration) -> Vec<Vec<u8>> {
            self.drain_with_sources(quiet)
                .await
                .into_iter()
                .map(|(d, _)| d)
                .collect()
        }

        async fn drain_with_sources(&self, quiet: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
            loop {
                let before = self.got.lock().unwrap().len();
                tokio::time::sleep(quiet).await;
                let got = self.got.lock().unwrap();
                if got.len() == before {
                    return got.clone();
                }
            }
        }
    }

    async fn sink() -> (Sink, SocketAddr) {
        let socket = UdpSocket::bind(LOOPBACK).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = got.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if let Some(body) = untagged(&buf[..n]) {
                    into.lock().unwrap().push((body.to_vec(), from));
                }
            }
        });
        let sink = Sink { got, _task: task };
        (sink, addr)
    }

    async fn client() -> UdpSocket {
        UdpSocket::bind(LOOPBACK).await.unwrap()
    }

    /// The body of the next datagram a test sent.
    async fn recv(socket: &UdpSocket) -> Vec<u8> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, _) = tokio::time::timeout(PATIENCE, socket.recv_from(&mut buf))
                .await
                .expect("no datagram within the patience limit")
                .unwrap();
            if let Some(body) = untagged(&buf[..n]) {
                return body.to_vec();
            }
        }
    }

    /// Receives until nothing arrives for `quiet`.
    async fn drain(socket: &UdpSocket, quiet: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while let Ok(Ok((n, _))) = tokio::time::timeout(quiet, socket.recv_from(&mut buf)).await {
            if let Some(body) = untagged(&buf[..n]) {
                out.push(body.to_vec());
            }
        }
        out
    }

    fn numbered(i: u32) -> Vec<u8> {
        tagged(&i.to_be_bytes())
    }

    fn number(d: &[u8]) -> u32 {
        u32::from_be_bytes(d[..4].try_into().unwrap())
    }

    /// Waits until `n` datagrams towards the upstream have reached the proxy. Tests that send many
    /// wait for this every few datagrams, so that no socket buffer overflows.
    async fn arrived(proxy: &Proxy, n: u64) {
        tokio::time::timeout(PATIENCE, async {
            while proxy.stats().to_upstream.received < n {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("datagrams did not reach the proxy");
    }

    /// Waits until the proxy has handled `n` datagrams towards the upstream (sent or dropped).
    async fn settle(proxy: &Proxy, n: u64) {
        arrived(proxy, n).await;
        tokio::time::timeout(PATIENCE, async {
            loop {
                let s = proxy.stats().to_upstream;
                if s.forwarded + s.dropped >= n + s.duplicated {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the proxy did not handle every datagram");
    }

    #[tokio::test]
    async fn datagrams_are_forwarded_both_ways_and_clients_are_told_apart() {
        let (upstream, _echo) = echo_server().await;
        let proxy = Proxy::start(LOOPBACK, upstream).await.unwrap();
        let (a, b) = (client().await, client().await);
        a.send_to(&tagged(b"from a"), proxy.local_addr())
            .await
            .unwrap();
        b.send_to(&tagged(b"from b"), proxy.local_addr())
            .await
            .unwrap();
        assert_eq!(recv(&a).await, b"from a");
        assert_eq!(recv(&b).await, b"from b");
        let s = proxy.stats();
        assert_eq!(s.clients, 2);
        assert_eq!(s.to_upstream.forwarded, 2);
        assert_eq!(s.to_client.forwarded, 2);
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn the_upstream_sees_one_source_address_per_client() {
        let (upstream, up_addr) = sink().await;
        let proxy = Proxy::start(LOOPBACK, up_addr).await.unwrap();
        let (a, b) = (client().await, client().await);
        for c in [&a, &b, &a] {
            c.send_to(&tagged(b"x"), proxy.local_addr()).await.unwrap();
        }
        settle(&proxy, 3).await;
        let got = upstream
            .drain_with_sources(Duration::from_millis(200))
            .await;
        assert_eq!(got.len(), 3);
        let sources: HashSet<SocketAddr> = got.iter().map(|(_, from)| *from).collect();
        assert_eq!(sources.len(), 2);
    }

    #[tokio::test]
    async fn a_blackhole_drops_everything_and_healing_restores_the_link() {
        let (upstream, _echo) = echo_server().await;
        let proxy = Proxy::start(LOOPBACK, upstream).await.unwrap();
        let c = client().await;
        c.send_to(&tagged(b"before"), proxy.local_addr())
            .await
            .unwrap();
        assert_eq!(recv(&c).await, b"before");

        proxy.blackhole(true).unwrap();
        for _ in 0..20 {
            c.send_to(&tagged(b"cut"), proxy.local_addr())
                .await
                .unwrap();
        }
        settle(&proxy, 21).await;
        assert!(drain(&c, Duration::from_millis(200)).await.is_empty());
        // At least ours: a QUIC client of a test running beside this one may retry a port the
        // kernel has since given to this proxy, and its stray datagrams are dropped (and counted) too.
        let dropped = proxy.stats().to_upstream.dropped_blackhole;
        assert!(dropped >= 20, "{dropped} dropped");

        proxy.heal().unwrap();
        c.send_to(&tagged(b"after"), proxy.local_addr())
            .await
            .unwrap();
        assert_eq!(recv(&c).await, b"after");
    }

    #[tokio::test]
    async fn a_blackhole_also_drops_what_is_already_delayed() {
        let (upstream, up_addr) = sink().await;
        let slow = Faults::both(LinkFaults {
            delay: Duration::from_secs(2),
            ..LinkFaults::default()
        });
        let proxy = Proxy::start_with(LOOPBACK, up_addr, slow).await.unwrap();
        let c = client().await;
        for i in 0..5 {
            c.send_to(&numbered(i), proxy.local_addr()).await.unwrap();
        }
        tokio::time::timeout(PATIENCE, async {
            while proxy.stats().to_upstream.received < 5 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        proxy.blackhole(true).unwrap();
        // None of ours arrived (the sink keeps only marked datagrams), and the proxy dropped at
        // least those 5 (strays from a neighbouring test's QUIC client may add to the count: CI
        // once saw 13).
        assert!(upstream.drain(Duration::from_secs(3)).await.is_empty());
        let dropped = proxy.stats().to_upstream.dropped_blackhole;
        assert!(dropped >= 5, "{dropped} dropped");
    }

    #[tokio::test]
    async fn seeded_loss_drops_about_the_configured_share() {
        let (upstream, up_addr) = sink().await;
        let faults = Faults {
            to_upstream: LinkFaults::loss(0.2),
            ..Faults::none()
        }
        .with_seed(7);
        let proxy = Proxy::start_with(LOOPBACK, up_addr, faults).await.unwrap();
        let c = client().await;
        let total = 2_000u32;
        for i in 0..total {
            c.send_to(&numbered(i), proxy.local_addr()).await.unwrap();
            if i % 100 == 99 {
                // Let the proxy keep up, so the socket buffers never overflow.
                settle(&proxy, u64::from(i) + 1).await;
            }
        }
        settle(&proxy, u64::from(total)).await;
        let s = proxy.stats().to_upstream;
        assert_eq!(s.dropped_overflow, 0);
        let got = upstream.drain(Duration::from_millis(300)).await.len() as u64;
        assert_eq!(got, s.forwarded);
        let share = s.dropped_loss as f64 / f64::from(total);
        assert!((0.15..=0.25).contains(&share), "loss share {share}");
    }

    #[tokio::test]
    async fn the_same_seed_drops_the_same_datagrams() {
        async fn survivors(seed: u64) -> Vec<u32> {
            let (upstream, up_addr) = sink().await;
            let faults = Faults::both(LinkFaults::loss(0.3)).with_seed(seed);
            let proxy = Proxy::start_with(LOOPBACK, up_addr, faults).await.unwrap();
            let c = client().await;
            for i in 0..200 {
                c.send_to(&numbered(i), proxy.local_addr()).await.unwrap();
                settle(&proxy, u64::from(i) + 1).await;
            }
            let mut got: Vec<u32> = upstream
                .drain(Duration::from_millis(300))
                .await
                .iter()
                .map(|d| number(d))
                .collect();
            got.sort_unstable();
            got
        }
        let first = survivors(42).await;
        assert!(first.len() < 200);
        assert_eq!(first, survivors(42).await);
        assert_ne!(first, survivors(43).await);
    }

    #[tokio::test]
    async fn duplication_delivers_some_datagrams_twice() {
        let (upstream, up_addr) = sink().await;
        let faults = Faults::both(LinkFaults {
            duplicate: 0.3,
            ..LinkFaults::default()
        })
        .with_seed(1);
        let proxy = Proxy::start_with(LOOPBACK, up_addr, faults).await.unwrap();
        let c = client().await;
        for i in 0..200 {
            c.send_to(&numbered(i), proxy.local_addr()).await.unwrap();
            if i % 10 == 9 {
                arrived(&proxy, u64::from(i) + 1).await;
            }
        }
        settle(&proxy, 200).await;
        let got = upstream.drain(Duration::from_millis(300)).await;
        let distinct: HashSet<u32> = got.iter().map(|d| number(d)).collect();
        let dups = proxy.stats().to_upstream.duplicated;
        assert!(dups > 0);
        assert_eq!(distinct.len(), 200);
        assert_eq!(got.len() as u64, 200 + dups);
    }

    #[tokio::test]
    async fn delay_holds_datagrams_back_and_keeps_their_order() {
        let upstream = UdpSocket::bind(LOOPBACK).await.unwrap();
        let up_addr = upstream.local_addr().unwrap();
        let delay = Duration::from_millis(300);
        let faults = Faults::both(LinkFaults {
            delay,
            ..LinkFaults::default()
        });
        let proxy = Proxy::start_with(LOOPBACK, up_addr, faults).await.unwrap();
        let c = client().await;
        let sent_at = std::time::Instant::now();
        for i in 0..10 {
            c.send_to(&numbered(i), proxy.local_addr()).await.unwrap();
        }
        let first = recv(&upstream).await;
        assert!(sent_at.elapsed() >= delay, "arrived before the delay");
        let mut order = vec![number(&first)];
        order.extend(
            drain(&upstream, Duration::from_millis(500))
                .await
                .iter()
                .map(|d| number(d)),
        );
        assert_eq!(order, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn reordering_sends_some_datagrams_after_their_successor() {
        let (upstream, up_addr) = sink().await;
        let faults = Faults::both(LinkFaults {
            reorder: 0.2,
            ..LinkFaults::default()
        })
        .with_seed(3);
        let proxy = Proxy::start_with(LOOPBACK, up_addr, faults).await.unwrap();
        let c = client().await;
        // In bursts of ten: a datagram held back is released by the next one in its burst.
        for i in 0..200 {
            c.send_to(&numbered(i), proxy.local_addr()).await.unwrap();
            if i % 10 == 9 {
                settle(&proxy, u64::from(i) + 1).await;
            }
        }
        let got: Vec<u32> = upstream
            .drain(Duration::from_millis(400))
            .await
            .iter()
            .map(|d| number(d))
            .collect();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..200).collect::<Vec<_>>(), "nothing lost");
        assert_ne!(got, sorted, "order changed");
        assert!(proxy.stats().to_upstream.reordered > 0);
    }

    #[tokio::test]
    async fn a_bandwidth_cap_drops_what_overflows_and_delays_the_rest() {
        let (upstream, up_addr) = sink().await;
        let rate = 20_000;
        let faults = Faults::both(LinkFaults {
            bandwidth: Some(rate),
            ..LinkFaults::default()
        });
        let proxy = Proxy::start_with(LOOPBACK, up_addr, faults).await.unwrap();
        let c = client().await;
        let started = std::time::Instant::now();
        // 100 KB at once against a 20 KB/s link with a 6 KB queue.
        for i in 0..100 {
            let mut d = numbered(i);
            d.resize(1_000, 0);
            c.send_to(&d, proxy.local_addr()).await.unwrap();
            if i % 10 == 9 {
                arrived(&proxy, u64::from(i) + 1).await;
            }
        }
        settle(&proxy, 100).await;
        let got = upstream.drain(Duration::from_millis(500)).await;
        let s = proxy.stats().to_upstream;
        assert!(s.dropped_bandwidth > 0);
        assert_eq!(got.len() as u64, s.forwarded);
        assert_eq!(s.forwarded + s.dropped_bandwidth, 100);
        // What got through at 20 KB/s cannot have taken less than its size allows (minus the
        // initial burst).
        let bytes = got.len() as u64 * 1_000;
        let least = Duration::from_secs_f64((bytes - burst(rate)) as f64 / rate as f64);
        assert!(
            started.elapsed() >= least,
            "{bytes} bytes passed a {rate} B/s cap in {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn invalid_probabilities_are_refused() {
        let (_s, up_addr) = sink().await;
        let proxy = Proxy::start(LOOPBACK, up_addr).await.unwrap();
        let err = proxy.set(Faults::both(LinkFaults::loss(1.5))).unwrap_err();
        assert!(matches!(err, Error::Probability { name: "loss", .. }));
        assert_eq!(proxy.faults(), Faults::none());
    }

    /// A self-signed certificate and QUIC configs that trust only it, with a 2 s idle timeout
    /// and keep-alives, so a cut link shows up as an idle timeout.
    fn quic_configs() -> (quinn::ServerConfig, quinn::ClientConfig) {
        use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = certified.cert.der().clone();
        let key =
            rustls::pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let alpn = b"caravel-proxy-test".to_vec();

        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key.into())
            .unwrap();
        server_tls.alpn_protocols = vec![alpn.clone()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client_tls.alpn_protocols = vec![alpn];

        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(Duration::from_secs(2).try_into().unwrap()));
        transport.keep_alive_interval(Some(Duration::from_millis(300)));
        let transport = Arc::new(transport);
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            QuicServerConfig::try_from(server_tls).unwrap(),
        ));
        server.transport_config(transport.clone());
        let mut client =
            quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls).unwrap()));
        client.transport_config(transport);
        (server, client)
    }

    /// A QUIC server that echoes every bidirectional stream.
    fn quic_echo_server(config: quinn::ServerConfig) -> (quinn::Endpoint, SocketAddr) {
        let endpoint = quinn::Endpoint::server(config, LOOPBACK).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            if let Ok(data) = recv.read_to_end(1 << 20).await {
                                let _ = send.write_all(&data).await;
                                let _ = send.finish();
                            }
                        });
                    }
                });
            }
        });
        (endpoint, addr)
    }

    async fn quic_echo(conn: &quinn::Connection, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(payload).await?;
        send.finish()?;
        Ok(recv.read_to_end(1 << 20).await?)
    }

    #[tokio::test]
    async fn quic_works_through_loss_dies_in_a_blackhole_and_reconnects_after_healing() {
        let (server_config, client_config) = quic_configs();
        let (_server, server_addr) = quic_echo_server(server_config);
        let lossy = Faults::both(LinkFaults::loss(0.1)).with_seed(11);
        let proxy = Proxy::start_with(LOOPBACK, server_addr, lossy)
            .await
            .unwrap();
        let mut client = quinn::Endpoint::client(LOOPBACK).unwrap();
        client.set_default_client_config(client_config);

        let connect = || async {
            tokio::time::timeout(
                PATIENCE,
                client.connect(proxy.local_addr(), "localhost").unwrap(),
            )
            .await
            .expect("no QUIC handshake within the patience limit")
        };
        let conn = connect().await.unwrap();
        for i in 0..20u8 {
            let payload = vec![i; 10_000];
            let echoed = tokio::time::timeout(PATIENCE, quic_echo(&conn, &payload))
                .await
                .expect("no echo within the patience limit")
                .unwrap();
            assert_eq!(echoed, payload);
        }
        let s = proxy.stats();
        assert!(s.to_upstream.dropped_loss + s.to_client.dropped_loss > 0);

        proxy.set(Faults::blackhole()).unwrap();
        let reason = tokio::time::timeout(PATIENCE, conn.closed())
            .await
            .expect("the connection outlived the blackhole");
        assert_eq!(reason, quinn::ConnectionError::TimedOut);
        assert!(quic_echo(&conn, b"cut").await.is_err());

        proxy.heal().unwrap();
        let conn = connect().await.unwrap();
        assert_eq!(quic_echo(&conn, b"healed").await.unwrap(), b"healed");
        conn.close(0u32.into(), b"done");
        client.wait_idle().await;
    }

    #[derive(Clone, Debug, PartialEq)]
    struct Fake(u32, usize);
    impl Wire for Fake {
        fn wire_len(&self) -> usize {
            self.1
        }
    }

    #[test]
    fn a_held_back_datagram_is_released_when_no_successor_comes() {
        let now = Instant::now();
        let faults = Faults::both(LinkFaults {
            reorder: 1.0,
            ..LinkFaults::default()
        });
        let mut link = Link::new(
            Direction::ToUpstream,
            &faults,
            Arc::new(Counters::default()),
            now,
        );
        link.push(now, Fake(1, 10));
        assert_eq!(link.poll(now), None);
        assert_eq!(link.next_wakeup(), Some(now + REORDER_MAX_HOLD));
        assert_eq!(link.poll(now + REORDER_MAX_HOLD), Some(Fake(1, 10)));
    }

    #[test]
    fn a_datagram_larger_than_the_bucket_passes_and_its_debt_delays_the_next() {
        let now = Instant::now();
        let faults = Faults::both(LinkFaults {
            bandwidth: Some(1_000),
            ..LinkFaults::default()
        });
        let mut link = Link::new(
            Direction::ToUpstream,
            &faults,
            Arc::new(Counters::default()),
            now,
        );
        link.push(now, Fake(1, 3_000));
        link.push(now, Fake(2, 100));
        assert_eq!(link.poll(now), Some(Fake(1, 3_000)));
        assert_eq!(link.poll(now), None);
        let wake = link.next_wakeup().unwrap();
        // 3,000 bytes against a 1,500-byte bucket: 1.5 s of debt at 1,000 B/s.
        assert!(wake >= now + Duration::from_millis(1_500));
        assert_eq!(link.poll(wake), Some(Fake(2, 100)));
    }
}
