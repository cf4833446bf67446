//! Prometheus metrics of a node (`GET /metrics`: OpenMetrics or the 0.0.4 text format, as the
//! scraper asks, see [`exposition`]). One registry per node, so tests and a
//! devstack can run several nodes in one process. Gauges of the replicated state (jobs by type and
//! state, executions by state, Raft indexes) are refreshed at scrape time.

pub mod exposition;

use std::sync::Mutex;
use std::time::Duration;

use caravel_net::session::{Channel, SessionStats, StatsSnapshot};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}
fn run_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 20))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
    pub status: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnly {
    pub route: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub r#type: String,
    pub state: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvalLabels {
    pub trigger: String,
    pub outcome: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabels {
    pub engine: String,
    pub outcome: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub api_requests: Family<RouteLabels, Counter>,
    pub api_latency: HistFamily<RouteOnly>,
    pub jobs: Family<JobLabels, Gauge>,
    pub executions: Family<StateLabel, Gauge>,
    pub evaluations: Family<EvalLabels, Counter>,
    pub scheduling_latency: Histogram,
    pub raft_term: Gauge,
    pub raft_last_log_index: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_commit_index: Gauge,
    commit_source: Mutex<Option<std::sync::Arc<std::sync::atomic::AtomicU64>>>,
    pub raft_is_leader: Gauge,
    pub raft_leader_id: Gauge,
    pub raft_writes: HistFamily<CommandLabels>,
    pub executor_run: HistFamily<EngineLabels>,
    pub reports: Family<OutcomeLabel, Counter>,
    pub sessions_opened: Counter,
    pub sessions_connected: Gauge,
    pub nodes: Family<StateLabel, Gauge>,
    pub raft_replication_lag: Family<PeerLabel, Gauge>,
    pub raft_elections: Counter,
    pub raft_leader_changes: Counter,
    pub raft_snapshots: Counter,
    pub raft_snapshot_index: Gauge,
    pub forwarded_writes: Counter,
    /// Writes whose outcome was unknown (the leader died or moved mid-write), by what followed.
    pub unknown_outcome_writes: Family<OutcomeLabel, Counter>,
    pub read_index_latency: Histogram,
    // Raft peers (QUIC RPC): what they did wrong, folded in at scrape time.
    peer_source: Mutex<Option<std::sync::Arc<caravel_net::rpc::PeerStats>>>,
    pub raft_peer_violations: Family<KindLabel, Counter>,
    pub raft_peer_connections: Gauge,
    // Compute sessions (QUIC): counters of the session server are folded in at scrape time.
    session_source: Mutex<Option<(SessionStats, StatsSnapshot)>>,
    pub session_handshakes: Counter,
    pub session_handshake_failures: Counter,
    pub session_refused: Counter,
    pub session_shed: Counter,
    pub session_protocol_errors: Counter,
    pub session_frames: Family<ChannelLabels, Counter>,
    pub session_bytes: Family<ChannelLabels, Counter>,
    pub session_reconnects: Counter,
    pub session_resync: Histogram,
    pub replayed_reports: Counter,
    /// Reports per Raft entry of the report group commit.
    pub report_batch: Histogram,
    /// Job submissions per Raft entry of the submission group commit.
    pub submission_batch: Histogram,
    pub reconcile_cancels: Counter,
    pub session_rtt: Family<NodeLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub session_cwnd: Family<NodeLabel, Gauge>,
    pub session_lost_packets: Family<NodeLabel, Gauge>,
    pub session_congestion_events: Family<NodeLabel, Gauge>,
    /// Certificates whose expiry is exported, read at scrape time.
    pub certs: CertExpiry,
}

/// The current leaf certificate (DER) of something that serves or presents one.
pub type LeafSource = std::sync::Arc<dyn Fn() -> Option<Vec<u8>> + Send + Sync>;

/// `caravel_tls_cert_expiry_timestamp_seconds{cert}`: when each certificate a node uses expires,
/// read from its source at scrape time (so a renewed certificate shows at once).
#[derive(Default)]
pub struct CertExpiry {
    sources: Mutex<Vec<(&'static str, LeafSource)>>,
    gauge: Family<CertLabel, Gauge>,
}

impl CertExpiry {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "tls_cert_expiry_timestamp_seconds",
            "When each certificate this node uses expires (Unix seconds)",
            self.gauge.clone(),
        );
    }

    pub fn track(&self, cert: &'static str, source: LeafSource) {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((cert, source));
    }

    fn refresh(&self) {
        for (name, source) in self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if let Some(t) = source().and_then(|der| caravel_net::tls::not_after(&der)) {
                self.gauge
                    .get_or_create(&CertLabel {
                        cert: name.to_string(),
                    })
                    .set(t);
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabel {
    /// `api` (the REST API's), `node` (this node's cluster certificate), `ca`.
    pub cert: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: String,
    pub direction: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("caravel");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            api_requests: Family::default(),
            api_latency: Family::new_with_constructor(latency_histogram),
            jobs: Family::default(),
            executions: Family::default(),
            evaluations: Family::default(),
            scheduling_latency: latency_histogram(),
            raft_term: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_commit_index: Gauge::default(),
            commit_source: Mutex::new(None),
            raft_is_leader: Gauge::default(),
            raft_leader_id: Gauge::default(),
            raft_writes: Family::new_with_constructor(latency_histogram),
            executor_run: Family::new_with_constructor(run_histogram),
            reports: Family::default(),
            sessions_opened: Counter::default(),
            sessions_connected: Gauge::default(),
            nodes: Family::default(),
            raft_replication_lag: Family::default(),
            raft_elections: Counter::default(),
            raft_leader_changes: Counter::default(),
            raft_snapshots: Counter::default(),
            raft_snapshot_index: Gauge::default(),
            forwarded_writes: Counter::default(),
            unknown_outcome_writes: Family::default(),
            read_index_latency: latency_histogram(),
            peer_source: Mutex::new(None),
            raft_peer_violations: Family::default(),
            raft_peer_connections: Gauge::default(),
            session_source: Mutex::new(None),
            session_handshakes: Counter::default(),
            session_handshake_failures: Counter::default(),
            session_refused: Counter::default(),
            session_shed: Counter::default(),
            session_protocol_errors: Counter::default(),
            session_frames: Family::default(),
            session_bytes: Family::default(),
            session_reconnects: Counter::default(),
            session_resync: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            replayed_reports: Counter::default(),
            report_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            submission_batch: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            reconcile_cancels: Counter::default(),
            session_rtt: Family::default(),
            session_cwnd: Family::default(),
            session_lost_packets: Family::default(),
            session_congestion_events: Family::default(),
            certs: CertExpiry::default(),
        };
        m.certs.register(&mut r);
        r.register(
            "raft_replication_lag_entries",
            "On the leader: log entries each follower or learner is behind",
            m.raft_replication_lag.clone(),
        );
        r.register(
            "raft_elections",
            "Elections this member started (became candidate)",
            m.raft_elections.clone(),
        );
        r.register(
            "raft_leader_changes",
            "Changes of leader seen by this member",
            m.raft_leader_changes.clone(),
        );
        r.register(
            "raft_snapshots",
            "Snapshots built or installed on this member",
            m.raft_snapshots.clone(),
        );
        r.register(
            "raft_snapshot_index",
            "Last log index covered by this member's snapshot",
            m.raft_snapshot_index.clone(),
        );
        r.register(
            "raft_forwarded_writes",
            "Writes this member forwarded to the leader",
            m.forwarded_writes.clone(),
        );
        r.register(
            "raft_unknown_outcome_writes",
            "Writes whose leader died or lost its leadership mid-write: outcome=resent (safe to apply twice: sent again), outcome=unknown (answered 503, outcome unknown)",
            m.unknown_outcome_writes.clone(),
        );
        r.register(
            "raft_read_index_seconds",
            "Time to confirm a linearizable read (read-index and wait for apply)",
            m.read_index_latency.clone(),
        );
        r.register(
            "api_requests",
            "API requests by method, route and status",
            m.api_requests.clone(),
        );
        r.register(
            "api_request_duration_seconds",
            "API request latency by route",
            m.api_latency.clone(),
        );
        r.register("jobs", "Jobs by type and state", m.jobs.clone());
        r.register(
            "executions",
            "Executions by compute state",
            m.executions.clone(),
        );
        r.register(
            "evaluations_processed",
            "Evaluations processed by the scheduler, by trigger and outcome",
            m.evaluations.clone(),
        );
        r.register(
            "scheduling_latency_seconds",
            "Time from an evaluation's creation to its committed plan",
            m.scheduling_latency.clone(),
        );
        r.register("raft_term", "Current Raft term", m.raft_term.clone());
        r.register(
            "raft_last_log_index",
            "Last Raft log index on this member",
            m.raft_last_log_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Last Raft log index applied on this member",
            m.raft_applied_index.clone(),
        );
        r.register(
            "raft_commit_index",
            "Last Raft log index known committed on this member",
            m.raft_commit_index.clone(),
        );
        r.register(
            "raft_is_leader",
            "1 if this member is the Raft leader",
            m.raft_is_leader.clone(),
        );
        r.register(
            "raft_leader_id",
            "Raft id of the current leader (0 if none)",
            m.raft_leader_id.clone(),
        );
        r.register(
            "raft_write_duration_seconds",
            "Time from proposing a command to its apply, by command",
            m.raft_writes.clone(),
        );
        r.register(
            "executor_run_seconds",
            "Execution run time (Running → terminal) by engine and outcome",
            m.executor_run.clone(),
        );
        r.register(
            "compute_reports",
            "Execution reports from compute nodes by outcome (applied, duplicate, rejected)",
            m.reports.clone(),
        );
        r.register(
            "compute_sessions_opened",
            "Compute sessions established",
            m.sessions_opened.clone(),
        );
        r.register(
            "compute_sessions_connected",
            "Compute sessions held by this orchestrator",
            m.sessions_connected.clone(),
        );
        r.register(
            "nodes",
            "Compute nodes by connection status",
            m.nodes.clone(),
        );
        r.register(
            "compute_session_handshakes",
            "Compute sessions established over QUIC (valid certificate and Hello)",
            m.session_handshakes.clone(),
        );
        r.register(
            "compute_session_handshake_failures",
            "QUIC/TLS handshakes of compute nodes that failed (bad or missing certificate, timeout)",
            m.session_handshake_failures.clone(),
        );
        r.register(
            "compute_session_refused",
            "Compute sessions refused after the handshake (Hello missing or naming another node)",
            m.session_refused.clone(),
        );
        r.register(
            "raft_peer_violations",
            "Raft peer streams or connections closed for breaking a limit: oversized_frame, bad_frame, read_timeout, too_many_connections",
            m.raft_peer_violations.clone(),
        );
        r.register(
            "raft_peer_connections",
            "Raft peer connections (and handshakes) open on this member",
            m.raft_peer_connections.clone(),
        );
        r.register(
            "compute_session_shed",
            "Dials refused before any handshake work because too many handshakes were in progress",
            m.session_shed.clone(),
        );
        r.register(
            "compute_session_protocol_errors",
            "Compute sessions closed for an undecodable frame, another protocol version or a message on the wrong channel",
            m.session_protocol_errors.clone(),
        );
        r.register(
            "compute_session_frames",
            "Frames on compute sessions by channel and direction (in: from nodes)",
            m.session_frames.clone(),
        );
        r.register(
            "compute_session_bytes",
            "Frame payload bytes on compute sessions by channel and direction",
            m.session_bytes.clone(),
        );
        r.register(
            "compute_session_reconnects",
            "Sessions opened by a compute node that was registered before (reconnects after a cut, a restart or a failover)",
            m.session_reconnects.clone(),
        );
        r.register(
            "compute_session_resync_seconds",
            "From a node's Hello until every report it had made is committed (outbox replayed)",
            m.session_resync.clone(),
        );
        r.register(
            "compute_report_batch_reports",
            "Compute reports committed per Raft entry (group commit of what every session sent meanwhile)",
            m.report_batch.clone(),
        );
        r.register(
            "api_submission_batch_jobs",
            "Job submissions committed per Raft entry (group commit of what every API client sent meanwhile)",
            m.submission_batch.clone(),
        );
        r.register(
            "compute_session_replayed_reports",
            "Reports received again after a reconnect (the node's outbox replay)",
            m.replayed_reports.clone(),
        );
        r.register(
            "compute_session_reconcile_cancels",
            "Executions a reconnecting node still ran that the cluster no longer wanted, cancelled",
            m.reconcile_cancels.clone(),
        );
        r.register(
            "compute_session_rtt_seconds",
            "Smoothed QUIC round-trip time of each compute session",
            m.session_rtt.clone(),
        );
        r.register(
            "compute_session_cwnd_bytes",
            "QUIC congestion window of each compute session",
            m.session_cwnd.clone(),
        );
        r.register(
            "compute_session_lost_packets",
            "Packets lost on each compute session's current connection",
            m.session_lost_packets.clone(),
        );
        r.register(
            "compute_session_congestion_events",
            "Congestion events on each compute session's current connection",
            m.session_congestion_events.clone(),
        );
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = r;
        m
    }

    /// Exports the expiry of a certificate as `caravel_tls_cert_expiry_timestamp_seconds{cert}`.
    pub fn track_certificate(&self, cert: &'static str, source: LeafSource) {
        self.certs.track(cert, source);
    }

    /// The REST API's (reloading) certificate.
    pub fn track_api_certificate(&self, cert: std::sync::Arc<crate::api::listener::ReloadingCert>) {
        self.track_certificate(
            "api",
            std::sync::Arc::new(move || cert.leaf().map(|c| c.to_vec())),
        );
    }

    /// Folds the Raft RPC server's peer counters into the registry at scrape time.
    pub fn track_peers(&self, stats: std::sync::Arc<caravel_net::rpc::PeerStats>) {
        *self.peer_source.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }

    fn refresh_peers(&self) {
        let Some(stats) = self
            .peer_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return;
        };
        for (kind, n) in stats.violations() {
            let c = self
                .raft_peer_violations
                .get_or_create(&KindLabel { kind: kind.into() });
            c.inc_by(n.saturating_sub(c.get()));
        }
        self.raft_peer_connections.set(stats.connections() as i64);
    }

    /// Folds the session server's counters into the registry at scrape time.
    pub fn track_sessions(&self, stats: SessionStats) {
        *self
            .session_source
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((stats, StatsSnapshot::default()));
    }

    fn refresh_sessions(&self, cluster: &crate::orchestrator::Cluster) {
        if let Some((stats, last)) = self
            .session_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            let now = stats.snapshot();
            let d = |a: u64, b: u64| a.saturating_sub(b);
            self.session_handshakes
                .inc_by(d(now.handshakes, last.handshakes));
            self.session_handshake_failures
                .inc_by(d(now.handshake_failures, last.handshake_failures));
            self.session_refused.inc_by(d(now.refused, last.refused));
            self.session_shed.inc_by(d(now.shed, last.shed));
            self.session_protocol_errors
                .inc_by(d(now.protocol_errors, last.protocol_errors));
            add_channel_counts(&self.session_frames, &self.session_bytes, &now, last);
            *last = now;
        }
        self.session_rtt.clear();
        self.session_cwnd.clear();
        self.session_lost_packets.clear();
        self.session_congestion_events.clear();
        for (node, link) in cluster.session_links() {
            let st = link.stats();
            let l = NodeLabel { node };
            self.session_rtt
                .get_or_create(&l)
                .set(st.path.rtt.as_secs_f64());
            self.session_cwnd.get_or_create(&l).set(st.path.cwnd as i64);
            self.session_lost_packets
                .get_or_create(&l)
                .set(st.path.lost_packets as i64);
            self.session_congestion_events
                .get_or_create(&l)
                .set(st.path.congestion_events as i64);
        }
    }

    /// Adds another component's families (the compute node's) to this node's registry.
    pub fn register_with(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Reads the commit index from the Raft log store at scrape time.
    pub fn track_commit_index(&self, source: std::sync::Arc<std::sync::atomic::AtomicU64>) {
        *self.commit_source.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    pub fn observe_write(&self, command: &str, d: Duration) {
        self.raft_writes
            .get_or_create(&CommandLabels {
                command: command.into(),
            })
            .observe(d.as_secs_f64());
    }
    pub fn forwarded_write(&self) {
        self.forwarded_writes.inc();
    }
    /// A write whose outcome was unknown was sent again (`resent`) or answered so (`unknown`).
    pub fn unknown_outcome_write(&self, outcome: &str) {
        self.unknown_outcome_writes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }
    pub fn observe_read_index(&self, d: Duration) {
        self.read_index_latency.observe(d.as_secs_f64());
    }

    /// Follows Raft's metrics: counts elections, leader changes and snapshots as they happen.
    pub async fn watch_raft(
        self: std::sync::Arc<Self>,
        raft: crate::raft::Raft,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut rx = raft.metrics();
        let (mut leader, mut state, mut snapshot) = {
            let m = rx.borrow();
            (m.current_leader, m.state, m.snapshot)
        };
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
            let m = rx.borrow().clone();
            if m.current_leader != leader && m.current_leader.is_some() {
                self.raft_leader_changes.inc();
            }
            if m.state != state && m.state == openraft::ServerState::Candidate {
                self.raft_elections.inc();
            }
            if m.snapshot != snapshot && m.snapshot.is_some() {
                self.raft_snapshots.inc();
                self.raft_snapshot_index
                    .set(m.snapshot.map(|l| l.index).unwrap_or(0) as i64);
            }
            (leader, state, snapshot) = (m.current_leader, m.state, m.snapshot);
        }
    }

    pub fn observe_eval(&self, trigger: &str, outcome: &str) {
        self.evaluations
            .get_or_create(&EvalLabels {
                trigger: trigger.into(),
                outcome: outcome.into(),
            })
            .inc();
    }
    pub fn observe_run(&self, engine: &str, outcome: &str, secs: f64) {
        self.executor_run
            .get_or_create(&EngineLabels {
                engine: engine.into(),
                outcome: outcome.into(),
            })
            .observe(secs);
    }
    pub fn observe_report_batch(&self, reports: usize) {
        self.report_batch.observe(reports as f64);
    }
    pub fn observe_submission_batch(&self, jobs: usize) {
        self.submission_batch.observe(jobs as f64);
    }
    pub fn observe_report(&self, outcome: &str) {
        self.reports
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }
    pub fn observe_request(&self, method: &str, route: &str, status: u16, d: Duration) {
        self.api_requests
            .get_or_create(&RouteLabels {
                method: method.into(),
                route: route.into(),
                status: status.to_string(),
            })
            .inc();
        self.api_latency
            .get_or_create(&RouteOnly {
                route: route.into(),
            })
            .observe(d.as_secs_f64());
    }

    /// Refreshes the state gauges from a cluster and renders the text format.
    pub fn render(&self, cluster: &crate::orchestrator::Cluster) -> String {
        self.jobs.clear();
        self.executions.clear();
        self.nodes.clear();
        cluster.read(|s| {
            for j in s.jobs.values() {
                self.jobs
                    .get_or_create(&JobLabels {
                        r#type: j.kind.clone(),
                        state: j.state.state_type.as_str().into(),
                    })
                    .inc();
            }
            for e in s.executions.values() {
                self.executions
                    .get_or_create(&StateLabel {
                        state: e.compute_state.state_type.as_str().into(),
                    })
                    .inc();
            }
            for n in s.nodes.values().filter(|n| n.info.node_type == "Compute") {
                self.nodes
                    .get_or_create(&StateLabel {
                        state: n.connection_state.status.as_str().into(),
                    })
                    .inc();
            }
        });
        {
            let m = cluster.raft().metrics().borrow().clone();
            self.raft_term.set(m.current_term as i64);
            self.raft_last_log_index
                .set(m.last_log_index.unwrap_or(0) as i64);
            self.raft_applied_index
                .set(m.last_applied.map(|l| l.index).unwrap_or(0) as i64);
            self.raft_is_leader
                .set(i64::from(m.current_leader == Some(cluster.node_id())));
            self.raft_leader_id
                .set(m.current_leader.unwrap_or(0) as i64);
            self.raft_replication_lag.clear();
            if let Some(rep) = &m.replication {
                let last = m.last_log_index.unwrap_or(0);
                let membership = m.membership_config.membership();
                for (id, matched) in rep.iter() {
                    if *id == cluster.node_id() {
                        continue;
                    }
                    let peer = membership
                        .get_node(id)
                        .map(|n| n.name.clone())
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| id.to_string());
                    let lag = last.saturating_sub(matched.map(|l| l.index).unwrap_or(0));
                    self.raft_replication_lag
                        .get_or_create(&PeerLabel { peer })
                        .set(lag as i64);
                }
            }
        }
        if let Some(c) = self
            .commit_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            self.raft_commit_index
                .set(c.load(std::sync::atomic::Ordering::Relaxed) as i64);
        }
        self.sessions_connected
            .set(cluster.connected_nodes() as i64);
        self.refresh_sessions(cluster);
        self.refresh_peers();
        self.certs.refresh();
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// `/metrics` of a compute-only node: the compute node's families and its session to the
/// orchestrators (state, attempts, frames and bytes per channel, QUIC path statistics), read from
/// the session client's counters at scrape time.
pub struct NodeSessionMetrics {
    registry: Registry,
    stats: SessionStats,
    last: Mutex<StatsSnapshot>,
    connected: Gauge,
    handshakes: Counter,
    handshake_failures: Counter,
    reconnect_attempts: Counter,
    redials: Counter,
    unanswered_dials: Counter,
    protocol_errors: Counter,
    frames: Family<ChannelLabels, Counter>,
    bytes: Family<ChannelLabels, Counter>,
    rtt: Gauge<f64, std::sync::atomic::AtomicU64>,
    cwnd: Gauge,
    lost_packets: Gauge,
    congestion_events: Gauge,
    certs: CertExpiry,
}

impl std::fmt::Debug for NodeSessionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSessionMetrics")
    }
}

impl NodeSessionMetrics {
    pub fn new(compute: caravel_compute::metrics::ComputeMetrics, stats: SessionStats) -> Self {
        let mut r = Registry::with_prefix("caravel");
        compute.register(&mut r);
        let m = NodeSessionMetrics {
            registry: Registry::default(),
            stats,
            last: Mutex::new(StatsSnapshot::default()),
            connected: Gauge::default(),
            handshakes: Counter::default(),
            handshake_failures: Counter::default(),
            reconnect_attempts: Counter::default(),
            redials: Counter::default(),
            unanswered_dials: Counter::default(),
            protocol_errors: Counter::default(),
            frames: Family::default(),
            bytes: Family::default(),
            rtt: Gauge::default(),
            cwnd: Gauge::default(),
            lost_packets: Gauge::default(),
            congestion_events: Gauge::default(),
            certs: CertExpiry::default(),
        };
        r.register(
            "session_connected",
            "1 while a session to an orchestrator is up",
            m.connected.clone(),
        );
        r.register(
            "session_handshakes",
            "Sessions established with an orchestrator",
            m.handshakes.clone(),
        );
        r.register(
            "session_handshake_failures",
            "Connection rounds that ended without a session (refused certificate, closed or unfinished handshake)",
            m.handshake_failures.clone(),
        );
        r.register(
            "session_reconnect_attempts",
            "Connection rounds after the first (reconnects), each after its backoff delay",
            m.reconnect_attempts.clone(),
        );
        r.register(
            "session_redials",
            "Dials started within a round because the earlier ones were still unanswered",
            m.redials.clone(),
        );
        r.register(
            "session_unanswered_dials",
            "Dials that got no answer at all within the handshake timeout (a silent path)",
            m.unanswered_dials.clone(),
        );
        r.register(
            "session_protocol_errors",
            "Sessions closed for a bad frame or another protocol version",
            m.protocol_errors.clone(),
        );
        r.register(
            "session_frames",
            "Frames by channel and direction (out: to the orchestrator)",
            m.frames.clone(),
        );
        r.register(
            "session_bytes",
            "Frame payload bytes by channel and direction",
            m.bytes.clone(),
        );
        r.register(
            "session_rtt_seconds",
            "Smoothed QUIC round-trip time",
            m.rtt.clone(),
        );
        r.register(
            "session_cwnd_bytes",
            "QUIC congestion window",
            m.cwnd.clone(),
        );
        r.register(
            "session_lost_packets",
            "Packets lost on the current connection",
            m.lost_packets.clone(),
        );
        r.register(
            "session_congestion_events",
            "Congestion events on the current connection",
            m.congestion_events.clone(),
        );
        m.certs.register(&mut r);
        NodeSessionMetrics { registry: r, ..m }
    }

    /// Exports the expiry of a certificate as `caravel_tls_cert_expiry_timestamp_seconds{cert}`.
    pub fn track_certificate(&self, cert: &'static str, source: LeafSource) {
        self.certs.track(cert, source);
    }

    pub fn render(&self) -> String {
        self.certs.refresh();
        let now = self.stats.snapshot();
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let d = |a: u64, b: u64| a.saturating_sub(b);
            self.handshakes.inc_by(d(now.handshakes, last.handshakes));
            self.handshake_failures
                .inc_by(d(now.handshake_failures, last.handshake_failures));
            self.reconnect_attempts
                .inc_by(d(now.reconnect_attempts, last.reconnect_attempts));
            self.redials.inc_by(d(now.redials, last.redials));
            self.unanswered_dials
                .inc_by(d(now.unanswered_dials, last.unanswered_dials));
            self.protocol_errors
                .inc_by(d(now.protocol_errors, last.protocol_errors));
            add_channel_counts(&self.frames, &self.bytes, &now, &last);
            *last = now.clone();
        }
        self.connected.set(now.connected as i64);
        match self.stats.link().filter(|l| !l.is_closed()) {
            Some(link) => {
                let st = link.stats();
                self.rtt.set(st.path.rtt.as_secs_f64());
                self.cwnd.set(st.path.cwnd as i64);
                self.lost_packets.set(st.path.lost_packets as i64);
                self.congestion_events.set(st.path.congestion_events as i64);
            }
            None => {
                self.rtt.set(0.0);
                self.cwnd.set(0);
                self.lost_packets.set(0);
                self.congestion_events.set(0);
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Adds what each channel carried since `last` to the frame and byte counters.
fn add_channel_counts(
    frames: &Family<ChannelLabels, Counter>,
    bytes: &Family<ChannelLabels, Counter>,
    now: &StatsSnapshot,
    last: &StatsSnapshot,
) {
    let d = |a: u64, b: u64| a.saturating_sub(b);
    for c in Channel::ALL {
        let (n, l) = (now.channel(c), last.channel(c));
        for (direction, f, b) in [
            ("in", d(n.frames_in, l.frames_in), d(n.bytes_in, l.bytes_in)),
            (
                "out",
                d(n.frames_out, l.frames_out),
                d(n.bytes_out, l.bytes_out),
            ),
        ] {
            let labels = ChannelLabels {
                channel: c.name().into(),
                direction: direction.into(),
            };
            frames.get_or_create(&labels).inc_by(f);
            bytes.get_or_create(&labels).inc_by(b);
        }
    }
}
