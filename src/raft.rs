//! The root's adapter between openraft and the network: the Raft configuration, Raft ids, the
//! network factory that carries openraft's RPCs over mutual-TLS QUIC ([`caravel_net::rpc`]), and
//! the server side that answers them together with the orchestrator-to-orchestrator requests
//! (forwarded writes, read-index, membership admin, member status).
//!
//! ```text
//!   openraft ──append/vote/snapshot──▶ PeerClient ──QUIC rpc──▶ PeerHandler ──▶ openraft (peer)
//!   Cluster::write on a follower ──FORWARD_WRITE──▶ PeerHandler on the leader ──▶ client_write
//!   Cluster::read_linearizable on a follower ──READ_INDEX──▶ leader's read index, then wait applied
//! ```
//!
//! Bodies are postcard-encoded; frames carry the protocol version and a checksum, and the ALPN
//! `caravel-raft/1` keeps other protocol majors out at the handshake. A peer's identity is the node id
//! in its certificate (cluster CA); only members may call, except on a pristine node waiting to be
//! added (it cannot tell its future leader from anyone else).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use caravel_model::command::{Command, CommandResponse};
use caravel_net::rpc;
use caravel_raft_store::{
    EntryCache, NodeAddr, TypeConfig, decode_append_request, encode_append_request,
};
use futures::future::BoxFuture;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;

/// Request kinds on the `caravel-raft/1` protocol.
pub mod kind {
    pub const APPEND: u8 = 1;
    pub const VOTE: u8 = 2;
    pub const SNAPSHOT: u8 = 3;
    pub const FORWARD_WRITE: u8 = 4;
    pub const READ_INDEX: u8 = 5;
    pub const ADMIN: u8 = 6;
    pub const STATUS: u8 = 7;
    pub const HEARTBEATS: u8 = 8;
    /// Whether this member holds a compute node's session: answers its API address, or nothing.
    pub const SESSION_AT: u8 = 9;
    /// Streams (`caravel_net::rpc::FIRST_STREAM_KIND` and up): an execution's logs or results
    /// through the member holding its node's session (`orchestrator::relay`).
    pub const RELAY_LOGS: u8 = 130;
    pub const RELAY_RESULT: u8 = 131;
}

/// A member's Raft id: the first 8 bytes of SHA-256 of its node id, so every member derives the
/// same id from `--peers` without a registry. Never 0 (openraft reserves nothing, but 0 reads badly).
pub fn raft_id(name: &str) -> NodeId {
    use sha2::Digest;
    let d = sha2::Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b).max(1)
}

/// Raft timing. openraft uses the heartbeat interval as the timeout of every append RPC, so it must
/// cover a loaded machine's fsync plus the transfer of one small batch (large ones are detached).
/// A follower refuses votes for `election_max_ms` after it last heard from its leader (openraft's
/// leader lease), and [`election_watchdog`] stands for election soon after that lease, so a dead
/// leader is replaced in about 0.6–0.8 s with the defaults. See docs/ARCHITECTURE.md ("Timing").
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 100,
            election_min_ms: 300,
            election_max_ms: 600,
        }
    }
}

pub fn raft_config(t: RaftTiming) -> openraft::Config {
    openraft::Config {
        cluster_name: "caravel".into(),
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: t.election_min_ms,
        election_timeout_max: t.election_max_ms,
        // Per chunk; chunks are 3 MiB, so even a slow WAN link moves one in time.
        install_snapshot_timeout: 10_000,
        // openraft gives each append RPC one heartbeat interval, whatever it carries; job specs
        // can be large (inline inputs), so batches stay small enough to cross in time, and a
        // member that fell behind catches up instead of timing out on one huge batch forever.
        max_payload_entries: 32,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
        // A follower installing a snapshot must still find the logs written meanwhile (openraft#1706).
        max_in_snapshot_log_to_keep: 5_000,
        ..Default::default()
    }
}

/// The network factory. Without TLS (a single-member group) there is no transport, and the factory
/// reports every peer as unreachable.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    client: Option<rpc::Client>,
    sizes: EntrySizes,
    cache: EntryCache,
    contact: LeaderContact,
}

impl PeerNetwork {
    /// `cache` is the log store's ([`caravel_raft_store::LogStore::cache`]): append requests are
    /// built from the encodings the log made. Votes refused for a lease are noted in `contact` (for
    /// [`election_watchdog`]).
    pub fn new(client: Option<rpc::Client>, cache: EntryCache, contact: LeaderContact) -> Self {
        PeerNetwork {
            client,
            sizes: Default::default(),
            cache,
            contact,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PeerClient {
    target: NodeId,
    node: NodeAddr,
    client: Option<rpc::Client>,
    /// A large append batch still being sent (see [`PeerClient::append_entries`]).
    in_flight: Option<Arc<InFlight>>,
    /// Encoded sizes of log entries, shared by every peer's client: measuring a batch means
    /// encoding its entries, which for megabyte-sized jobs costs more CPU than a heartbeat
    /// interval allows; each entry is measured once.
    sizes: EntrySizes,
    /// The log's recent entries with their encodings: a request is built from those bytes.
    cache: EntryCache,
    contact: LeaderContact,
}

/// Encoded sizes by log id (an entry never changes under its id); forgotten wholesale past
/// [`ENTRY_SIZES_KEPT`].
type EntrySizes = Arc<std::sync::Mutex<BTreeMap<caravel_raft_store::LogId, usize>>>;

const ENTRY_SIZES_KEPT: usize = 4096;

type AppendResult = Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>>;

/// An append batch sent by its own task, so that it may take longer than openraft's deadline for
/// one append (the heartbeat interval); a retry of the same batch waits for it instead of sending
/// it again from the start.
#[derive(Debug)]
struct InFlight {
    vote: openraft::Vote<NodeId>,
    prev_log_id: Option<caravel_raft_store::LogId>,
    /// The last entry it carries.
    last: Option<caravel_raft_store::LogId>,
    done: tokio::sync::watch::Receiver<Option<Arc<AppendResult>>>,
    /// The sending task, stopped when nobody waits for it any more: the replication stream was
    /// rebuilt (leader or membership change), so a new stream does not send it a second time
    /// beside it.
    task: tokio::task::AbortHandle,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Batches this large (encoded) are sent by their own task: at the 250 ms heartbeat interval a
/// 3 MiB job needs ~100 Mbit/s to replicate within one deadline, which a busy member or a
/// cross-region link does not give.
const DETACH_BYTES: usize = 256 << 10;

/// How long a detached batch may take; the QUIC idle timeout ends it sooner on a dead link.
const DETACHED_APPEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits for a detached batch's answer, and copies it (openraft's type is not `Clone`); `None` if
/// its task ended without one. (The error type is the one `RaftNetwork` returns.)
#[allow(clippy::result_large_err)]
async fn answer_of(f: &InFlight) -> Option<AppendResult> {
    let mut done = f.done.clone();
    let r = done.wait_for(Option::is_some).await.ok()?;
    let r = r.as_ref()?;
    Some(match r.as_ref() {
        Ok(AppendEntriesResponse::Success) => Ok(AppendEntriesResponse::Success),
        Ok(AppendEntriesResponse::PartialSuccess(l)) => {
            Ok(AppendEntriesResponse::PartialSuccess(*l))
        }
        Ok(AppendEntriesResponse::Conflict) => Ok(AppendEntriesResponse::Conflict),
        Ok(AppendEntriesResponse::HigherVote(v)) => Ok(AppendEntriesResponse::HigherVote(*v)),
        Err(e) => Err(e.clone()),
    })
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;
    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerClient {
        PeerClient {
            target,
            node: node.clone(),
            client: self.client.clone(),
            in_flight: None,
            sizes: self.sizes.clone(),
            cache: self.cache.clone(),
            contact: self.contact.clone(),
        }
    }
}

type RpcErr<E> = RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        kind: u8,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: for<'de> Deserialize<'de>,
        E: std::error::Error + for<'de> Deserialize<'de>,
    {
        let body = postcard::to_allocvec(req)
            .map_err(|e| RPCError::Network(NetworkError::new(&io::Error::other(e))))?;
        self.call_body(kind, action, &body, option).await
    }

    /// [`Self::call`] with the request already encoded.
    async fn call_body<Resp, E>(
        &self,
        kind: u8,
        action: RPCTypes,
        body: &[u8],
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Resp: for<'de> Deserialize<'de>,
        E: std::error::Error + for<'de> Deserialize<'de>,
    {
        let Some(client) = &self.client else {
            let e = io::Error::new(
                io::ErrorKind::NotConnected,
                "no Raft transport: this orchestrator runs without TLS, as a group of one",
            );
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        let ttl = option.hard_ttl();
        let answer = client
            .call(&self.node.raft_addr, &self.node.name, kind, body, ttl)
            .await
            .map_err(|e| match e {
                rpc::Error::Timeout { .. } => RPCError::Timeout(Timeout {
                    action,
                    id: 0,
                    target: self.target,
                    timeout: ttl,
                }),
                e if e.is_unreachable() => RPCError::Unreachable(Unreachable::new(&e)),
                e => RPCError::Network(NetworkError::new(&e)),
            })?;
        let decoded: Result<Resp, RaftError<NodeId, E>> = postcard::from_bytes(&answer)
            .map_err(|e| RPCError::Network(NetworkError::new(&io::Error::other(e))))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Waits between replication attempts to a member that did not answer: the first
/// [`QUICK_RETRIES`] every [`QUICK_RETRY`], then every [`SLOW_RETRY`] (openraft's default for all
/// of them), so a member restarted within ~2 s is found by the next attempt, not up to half a
/// second later, and one that stays down costs two dials a second.
const QUICK_RETRY: Duration = Duration::from_millis(100);
const QUICK_RETRIES: usize = 20;
const SLOW_RETRY: Duration = Duration::from_millis(500);

impl RaftNetwork<TypeConfig> for PeerClient {
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(
            std::iter::repeat_n(QUICK_RETRY, QUICK_RETRIES).chain(std::iter::repeat(SLOW_RETRY)),
        )
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        // openraft retries a batch from the same point after its deadline: join the transfer in
        // flight that carries its start before measuring anything (measuring means encoding).
        if let Some(f) = self.in_flight.clone()
            && f.vote == rpc.vote
            && f.prev_log_id == rpc.prev_log_id
            && f.last.is_some()
            && rpc.entries.iter().any(|e| Some(e.log_id) == f.last)
        {
            let whole = rpc.entries.last().map(|e| e.log_id);
            let result = answer_of(&f).await;
            self.in_flight = None;
            match result {
                Some(Ok(AppendEntriesResponse::Success)) if f.last != whole => {
                    return Ok(AppendEntriesResponse::PartialSuccess(f.last));
                }
                Some(Ok(answer)) => return Ok(answer),
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        // openraft caps a batch by count only; cut it by size too, so it always fits one frame,
        // and report the part sent as a partial success (openraft sends the rest next).
        let (sizes, cache) = (self.sizes.clone(), self.cache.clone());
        let (rpc, cut_at, bytes) = cut_to_budget_with(rpc, APPEND_BUDGET, &mut |e| {
            if let Some(b) = cache.bytes_of(&e.log_id) {
                return b.len();
            }
            if let Some(s) = sizes.lock().ok().and_then(|m| m.get(&e.log_id).copied()) {
                return s;
            }
            let s = postcard::to_allocvec(e).map_or(usize::MAX, |b| b.len());
            if let Ok(mut m) = sizes.lock() {
                if m.len() >= ENTRY_SIZES_KEPT {
                    m.clear();
                }
                m.insert(e.log_id, s);
            }
            s
        });
        let last = rpc.entries.last().map(|e| e.log_id);
        let as_sent = |answer: AppendEntriesResponse<NodeId>,
                       sent: Option<caravel_raft_store::LogId>| {
            match answer {
                AppendEntriesResponse::Success if sent != last || cut_at.is_some() => {
                    AppendEntriesResponse::PartialSuccess(sent)
                }
                other => other,
            }
        };
        if bytes < DETACH_BYTES {
            let body = encode_append_request(&self.cache, &rpc)
                .map_err(|e| RPCError::Network(NetworkError::new(&io::Error::other(e))))?;
            let answer: AppendEntriesResponse<NodeId> = self
                .call_body(kind::APPEND, RPCTypes::AppendEntries, &body, &option)
                .await?;
            return Ok(as_sent(answer, last));
        }
        // A large batch: join the one in flight when it carries the start of this one (openraft
        // retries from the same point after its deadline); else let it end first (its bytes are
        // most of the way there), then send.
        if let Some(f) = self.in_flight.clone() {
            let result = answer_of(&f).await;
            self.in_flight = None;
            let joins = f.vote == rpc.vote && f.prev_log_id == rpc.prev_log_id && f.last <= last;
            match result {
                Some(Ok(answer)) if joins => return Ok(as_sent(answer, f.last)),
                Some(Err(e)) if joins => return Err(e),
                _ => {}
            }
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        // The task's copy holds no `InFlight`, so dropping ours stops it.
        let this = PeerClient {
            in_flight: None,
            ..self.clone()
        };
        let detached = RPCOption::new(option.hard_ttl().max(DETACHED_APPEND_TIMEOUT));
        let (vote, prev_log_id) = (rpc.vote, rpc.prev_log_id);
        let task = tokio::spawn(async move {
            // Encoding megabytes of jobs is CPU work: off the runtime's workers, which also
            // carry heartbeats and votes.
            let cache = this.cache.clone();
            let body =
                tokio::task::spawn_blocking(move || encode_append_request(&cache, &rpc)).await;
            let r: AppendResult = match body {
                Ok(Ok(body)) => {
                    this.call_body(kind::APPEND, RPCTypes::AppendEntries, &body, &detached)
                        .await
                }
                Ok(Err(e)) => Err(RPCError::Network(NetworkError::new(&io::Error::other(e)))),
                Err(e) => Err(RPCError::Network(NetworkError::new(&io::Error::other(
                    e.to_string(),
                )))),
            };
            let _ = tx.send(Some(Arc::new(r)));
        })
        .abort_handle();
        let f = Arc::new(InFlight {
            vote,
            prev_log_id,
            last,
            done: rx,
            task,
        });
        self.in_flight = Some(f.clone());
        let result = answer_of(&f).await;
        self.in_flight = None;
        match result {
            Some(r) => r.map(|answer| as_sent(answer, last)),
            None => Err(RPCError::Network(NetworkError::new(&io::Error::other(
                "the append task ended without an answer",
            )))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(kind::SNAPSHOT, RPCTypes::InstallSnapshot, &rpc, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        let resp = self.call(kind::VOTE, RPCTypes::Vote, &rpc, &option).await;
        if let Ok(r) = &resp
            && refused_for_lease(&rpc, r)
        {
            self.contact.refused_for_lease();
        }
        resp
    }
}

/// Whether a vote was refused because the member still honours its leader's lease: its log is no
/// longer than the candidate's, and it kept a vote of an earlier term (openraft 0.9 grants a
/// higher term to a candidate with a log as long as its own unless a lease runs; it does not say
/// why it refused).
pub fn refused_for_lease(req: &VoteRequest<NodeId>, resp: &VoteResponse<NodeId>) -> bool {
    !resp.vote_granted
        && resp.last_log_id <= req.last_log_id
        && resp.vote.leader_id().term < req.vote.leader_id().term
}

/// The most an append-entries request may carry (its frame limit is 16 MiB; a single job is at most
/// `MAX_JOB_BYTES`, 3 MiB, so a batch always holds at least one entry).
pub const APPEND_BUDGET: usize = 12 << 20;

/// Keeps the longest prefix of the request's entries (at least one) whose encoding fits `budget`;
/// returns the request, when it was cut the last log id it still carries, and the encoded size of
/// the entries it carries.
pub fn cut_to_budget(
    rpc: AppendEntriesRequest<TypeConfig>,
    budget: usize,
) -> (
    AppendEntriesRequest<TypeConfig>,
    Option<caravel_raft_store::LogId>,
    usize,
) {
    cut_to_budget_with(rpc, budget, &mut |e| {
        postcard::to_allocvec(e).map_or(usize::MAX, |b| b.len())
    })
}

/// [`cut_to_budget`] with the entries' encoded sizes given by `size`.
pub fn cut_to_budget_with(
    mut rpc: AppendEntriesRequest<TypeConfig>,
    budget: usize,
    size: &mut dyn FnMut(&caravel_raft_store::Entry) -> usize,
) -> (
    AppendEntriesRequest<TypeConfig>,
    Option<caravel_raft_store::LogId>,
    usize,
) {
    let mut used = 0usize;
    let mut keep = 0;
    for e in &rpc.entries {
        let s = size(e);
        if keep > 0 && used.saturating_add(s) > budget {
            break;
        }
        used = used.saturating_add(s);
        keep += 1;
    }
    if keep == rpc.entries.len() {
        return (rpc, None, used);
    }
    rpc.entries.truncate(keep);
    let last = rpc.entries.last().map(|e| e.log_id);
    // The follower must not commit past what it was sent.
    if let Some(l) = last {
        rpc.leader_commit = rpc.leader_commit.min(Some(l));
    }
    (rpc, last, used)
}

/// Why a request that must run on the leader did not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum LeaderError {
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("not committed within {0} ms: no quorum?")]
    Timeout(u64),
    #[error("{0}")]
    Refused(String),
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// The leader lost its leadership with the write in flight: it may yet be committed by the
    /// next leader, or not.
    #[error("{0}")]
    Unknown(String),
}

/// The answer to a forwarded write: what applying it produced and its log index.
pub type ForwardAnswer = Result<(CommandResponse, u64), LeaderError>;

/// Membership changes, run on the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Add a member: as a learner until it has caught up, then as a voter.
    Add(NodeAddr),
    /// Remove a member by node id.
    Remove(String),
}

/// What a member says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct MemberInfo {
    pub name: String,
    pub api_addr: String,
    pub raft_addr: String,
    pub state: String,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub leader: Option<NodeId>,
}

/// What this member is, for status answers.
#[derive(Debug, Clone)]
pub struct SelfAddr {
    pub name: String,
    pub api_addr: String,
    pub raft_addr: String,
}

/// Maps a Raft API error to [`LeaderError`], reading the leader hint first.
macro_rules! lerr {
    ($e:expr) => {{
        let e = $e;
        let forward = e.forward_to_leader::<NodeAddr>().map(|f| f.leader_id);
        leader_err(forward, e)
    }};
}

/// How long a membership step may take (a learner catching up may need a snapshot).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `req` on this member, which must be the leader.
pub async fn admin(raft: &Raft, req: AdminRequest) -> Result<String, LeaderError> {
    let m = raft.metrics().borrow().clone();
    if m.current_leader != Some(m.id) {
        return Err(LeaderError::NotLeader(m.current_leader));
    }
    let membership = m.membership_config.membership().clone();
    if membership.get_joint_config().len() > 1 {
        return Err(LeaderError::Refused(
            "another membership change is in flight; wait for it to finish (caravel cluster status) and try again".into(),
        ));
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let timed = |what: &'static str| {
        move |_: tokio::time::error::Elapsed| {
            LeaderError::Timeout(ADMIN_TIMEOUT.as_millis() as u64).with_context(what)
        }
    };
    match req {
        AdminRequest::Add(addr) => {
            if addr.name.is_empty() || addr.raft_addr.is_empty() {
                return Err(LeaderError::Refused(
                    "a new member needs a node id and a Raft address (ID@HOST:PORT)".into(),
                ));
            }
            let id = raft_id(&addr.name);
            if voters.contains(&id) {
                return Err(LeaderError::Refused(format!(
                    "{} is already a voting member",
                    addr.name
                )));
            }
            tokio::time::timeout(ADMIN_TIMEOUT, raft.add_learner(id, addr.clone(), true))
                .await
                .map_err(timed("adding the learner"))?
                .map_err(|e| lerr!(e))?;
            let mut add = BTreeSet::new();
            add.insert(id);
            tokio::time::timeout(
                ADMIN_TIMEOUT,
                raft.change_membership(ChangeMembers::AddVoterIds(add), false),
            )
            .await
            .map_err(timed("promoting the learner"))?
            .map_err(|e| lerr!(e))?;
            Ok(format!(
                "{} ({}) joined as a voter; the group has {} voters",
                addr.name,
                addr.raft_addr,
                voters.len() + 1
            ))
        }
        AdminRequest::Remove(name) => {
            let id = raft_id(&name);
            let is_learner = membership.learner_ids().any(|l| l == id);
            if !voters.contains(&id) && !is_learner {
                return Err(LeaderError::Refused(format!(
                    "no member named {name:?}; see caravel cluster status"
                )));
            }
            let mut set = BTreeSet::new();
            set.insert(id);
            let change = if is_learner {
                ChangeMembers::RemoveNodes(set)
            } else {
                if voters.len() == 1 {
                    return Err(LeaderError::Refused(format!(
                        "{name} is the last voter; removing it would leave no one to hold the state"
                    )));
                }
                ChangeMembers::RemoveVoters(set)
            };
            tokio::time::timeout(ADMIN_TIMEOUT, raft.change_membership(change, false))
                .await
                .map_err(timed("removing the member"))?
                .map_err(|e| lerr!(e))?;
            Ok(format!("{name} was removed from the group"))
        }
    }
}

impl LeaderError {
    fn with_context(self, what: &str) -> Self {
        match self {
            LeaderError::Timeout(ms) => LeaderError::Refused(format!(
                "{what} did not finish within {ms} ms; is the new member reachable at its Raft address? The change may still complete: check caravel cluster status"
            )),
            e => e,
        }
    }
}

fn leader_err<E: std::fmt::Display>(
    forward: Option<Option<NodeId>>,
    e: RaftError<NodeId, E>,
) -> LeaderError {
    if let Some(leader) = forward {
        return LeaderError::NotLeader(leader);
    }
    match e {
        RaftError::APIError(e) => LeaderError::Refused(e.to_string()),
        RaftError::Fatal(f) => LeaderError::Fatal(f.to_string()),
    }
}

/// Proposes `cmd` on this member, which must lead: applied (its answer and log index), or why not.
/// Only a member that did not lead when asked answers [`LeaderError::NotLeader`] — the write surely
/// was not proposed and may go to the leader. openraft also answers a write that was appended and
/// then lost with the leadership "forward to the leader" (its entry may still be committed by the
/// next leader): that is [`LeaderError::Unknown`], never `NotLeader`.
pub async fn propose(raft: &Raft, cmd: Arc<Command>, timeout: Duration) -> ForwardAnswer {
    let (me, leader) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.id, m.current_leader)
    };
    if leader != Some(me) {
        return Err(LeaderError::NotLeader(leader));
    }
    match tokio::time::timeout(timeout, raft.client_write(cmd)).await {
        Err(_) => Err(LeaderError::Timeout(timeout.as_millis() as u64)),
        Ok(Ok(r)) => Ok((r.data, r.log_id.index)),
        Ok(Err(e)) => match lerr!(e) {
            LeaderError::NotLeader(now) => Err(LeaderError::Unknown(format!(
                "the leader lost its leadership (now {now:?}) with the write in flight; it may or may not be committed"
            ))),
            e => Err(e),
        },
    }
}

/// The API address other members can reach: the API's own, with an unspecified host (`0.0.0.0`,
/// `[::]`) replaced by the host of the advertised Raft address.
pub fn advertised_api(me: &SelfAddr) -> String {
    let Ok(api) = me.api_addr.parse::<std::net::SocketAddr>() else {
        return me.api_addr.clone();
    };
    if !api.ip().is_unspecified() {
        return api.to_string();
    }
    let host = me
        .raft_addr
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    format!("{host}:{}", api.port())
}

/// This member's view of itself.
pub fn member_info(raft: &Raft, me: &SelfAddr) -> MemberInfo {
    let m = raft.metrics().borrow().clone();
    MemberInfo {
        name: me.name.clone(),
        api_addr: me.api_addr.clone(),
        raft_addr: me.raft_addr.clone(),
        state: state_name(m.state).into(),
        term: m.current_term,
        last_log_index: m.last_log_index.unwrap_or(0),
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        leader: m.current_leader,
    }
}

pub fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Learner => "learner",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
    }
}

/// Answers the `caravel-raft/1` requests of peers.
pub struct PeerHandler {
    pub raft: Raft,
    pub me: SelfAddr,
    /// Node ids allowed to call before this member knows its membership (its `--peers`).
    pub bootstrap_peers: BTreeSet<String>,
    /// The orchestrator, once built (heartbeats relayed by followers land in it).
    pub cluster: Arc<OnceLock<crate::orchestrator::Cluster>>,
    /// When a leader last reached this member (for [`election_watchdog`]).
    pub contact: LeaderContact,
    /// The log's recent entries: a received entry's bytes go to the log as they came.
    pub cache: EntryCache,
}

/// When this member last received an append or a snapshot chunk from a leader, when it last
/// refused its vote to a candidate whose log is shorter than its own, and when a member last
/// refused it a vote for its leader's lease.
#[derive(Debug, Clone, Default)]
pub struct LeaderContact(Arc<std::sync::Mutex<ContactTimes>>);

#[derive(Debug, Default)]
struct ContactTimes {
    leader: Option<std::time::Instant>,
    /// Requests from a leader being handled now.
    busy: usize,
    refused_shorter: Option<std::time::Instant>,
    refused_for_lease: Option<std::time::Instant>,
}

impl LeaderContact {
    fn times(&self) -> std::sync::MutexGuard<'_, ContactTimes> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Marks a leader's request being handled: the leader is not silent until it is done, however
    /// long this member takes (a restarted member's first appends wait for fsyncs on a disk still
    /// busy with its recovery: one took 0.7 s, and the member stood against a live leader).
    fn busy(&self) -> Busy<'_> {
        let mut t = self.times();
        t.busy += 1;
        t.leader = Some(std::time::Instant::now());
        Busy(self)
    }
    fn refused_shorter_log(&self) {
        self.times().refused_shorter = Some(std::time::Instant::now());
    }
    fn silence(&self) -> Option<Duration> {
        let t = self.times();
        if t.busy > 0 {
            return Some(Duration::ZERO);
        }
        t.leader.map(|t| t.elapsed())
    }
    fn since_refused_shorter(&self) -> Option<Duration> {
        self.times().refused_shorter.map(|t| t.elapsed())
    }
    fn refused_for_lease(&self) {
        self.times().refused_for_lease = Some(std::time::Instant::now());
    }
    fn since_refused_for_lease(&self) -> Option<Duration> {
        self.times().refused_for_lease.map(|t| t.elapsed())
    }
}

/// A leader's request being handled ([`LeaderContact::busy`]); done when dropped.
struct Busy<'a>(&'a LeaderContact);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut t = self.0.times();
        t.busy = t.busy.saturating_sub(1);
        t.leader = Some(std::time::Instant::now());
    }
}

/// Starts an election as soon as a silent leader's lease has run out. openraft 0.9 has a follower
/// refuse votes for `election_max_ms` after it last heard from its leader (the leader lease), and
/// start its own election only after that lease *plus* its election timeout — 2.25–3 s with the
/// old 750 ms default, where a dead leader need cost only its lease. This watchdog starts the
/// election when the lease is over on this member plus a random 0 to `election_min_ms / 2` (so
/// that two followers seldom stand at once); openraft's own timer stays as the fallback. A vote
/// asked of a member whose lease still runs is refused as before: safety never depends on it.
///
/// It also stands for a member left with no leader after refusing its vote to a candidate whose
/// log is shorter than its own (that candidate cannot win with this vote): openraft would wait a
/// whole election timeout, and the refused candidate backs off `smaller_log_timeout` (2 ×
/// `election_max_ms`), so the member with the longer log stands after half to one heartbeat
/// interval instead (the 1.26 s failover of docs/benchmarks.md, 2026-12-04; one to two heartbeat
/// intervals until 2026-12-08).
///
/// And it stands again, once per lease, a candidate (or a member left with no leader) refused a vote
/// for a lease one to two heartbeat intervals earlier: the other member heard the dead leader a
/// little later than this one, so its lease ends a little later, and openraft would wait out a
/// whole election timeout (1.05 s failovers, docs/benchmarks.md 2026-12-08). A refusal for a shorter
/// log never triggers it, so a shorter-log candidate cannot outbid a longer one term after term.
pub fn election_watchdog(raft: Raft, contact: LeaderContact, t: RaftTiming) {
    let lease = Duration::from_millis(t.election_max_ms);
    let spread = (t.election_min_ms / 2).max(1);
    let beat = t.heartbeat_ms.max(1);
    // Every tick past the lease is a tick of failover: a fifth of a heartbeat, at most 20 ms.
    let tick = Duration::from_millis((t.heartbeat_ms / 5).clamp(5, 20));
    let half_beat = (beat / 2).max(1);
    tokio::spawn(async move {
        let mut seed = raft_id(&format!("{:?}", std::time::SystemTime::now()));
        let mut metrics = raft.metrics();
        let mut jitter = Duration::from_millis(seed % spread);
        // A heartbeat interval plus up to another: time for a candidate that did win to say so.
        let mut quick = Duration::from_millis(beat + seed % beat);
        // Half a heartbeat interval plus up to another half: a shorter-log candidate that this
        // member refused cannot win with its vote (in a group of three with one member down, it
        // cannot win at all), so there is little to wait for.
        let mut settle = Duration::from_millis(half_beat + seed % half_beat);
        let mut leaderless_since: Option<std::time::Instant> = None;
        let mut last_stand: Option<std::time::Instant> = None;
        let mut last_lease_stand: Option<std::time::Instant> = None;
        loop {
            tokio::time::sleep(tick).await;
            let m = metrics.borrow_and_update().clone();
            if m.running_state.is_err() {
                return;
            }
            let voter_follower = m.state == openraft::ServerState::Follower
                && m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == m.id);
            if voter_follower && m.current_leader.is_none() {
                leaderless_since.get_or_insert_with(std::time::Instant::now);
            } else {
                leaderless_since = None;
            }
            // Never heard from a leader (a member just started): openraft's timer decides.
            let Some(silence) = contact.silence() else {
                continue;
            };
            let since_stand = last_stand.map(|s| s.elapsed());
            let dead_leader = voter_follower
                && m.current_leader.is_some_and(|l| l != m.id)
                && silence >= lease + jitter
                && since_stand.is_none_or(|s| s >= lease);
            let longer_log_unled = voter_follower
                && m.current_leader.is_none()
                && silence >= lease
                && contact.since_refused_shorter().is_some_and(|r| r < lease)
                && leaderless_since.is_some_and(|l| l.elapsed() >= settle)
                && since_stand.is_none_or(|s| s >= settle);
            let unled = voter_follower && m.current_leader.is_none()
                || m.state == openraft::ServerState::Candidate;
            let refused_for_lease = unled
                && silence >= lease
                && contact
                    .since_refused_for_lease()
                    .is_some_and(|r| r >= quick && r < lease)
                && since_stand.is_none_or(|s| s >= quick)
                && last_lease_stand.is_none_or(|s| s.elapsed() >= lease);
            if !(dead_leader || longer_log_unled || refused_for_lease) {
                continue;
            }
            if dead_leader {
                tracing::info!(
                    leader = ?m.current_leader,
                    silent_ms = silence.as_millis(),
                    "no word from the leader past its lease: standing for election"
                );
            } else if longer_log_unled {
                tracing::info!(
                    silent_ms = silence.as_millis(),
                    "no leader, and a candidate with a shorter log was refused: standing for election"
                );
            } else {
                tracing::info!(
                    silent_ms = silence.as_millis(),
                    "a vote was refused for a lease that has run out since: standing again"
                );
                last_lease_stand = Some(std::time::Instant::now());
            }
            if raft.trigger().elect().await.is_err() {
                return;
            }
            last_stand = Some(std::time::Instant::now());
            seed = seed.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15;
            jitter = Duration::from_millis(seed % spread);
            quick = Duration::from_millis(beat + seed % beat);
            settle = Duration::from_millis(half_beat + seed % half_beat);
        }
    });
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(v).map_err(|e| format!("cannot encode the answer: {e}"))
}
fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("cannot decode the request: {e}"))
}

impl PeerHandler {
    /// Whether `peer` may call: a member of the group (voter or learner), one of `--peers`, or
    /// anyone certified by the CA while this member has no membership yet.
    fn allowed(&self, peer: &str) -> bool {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let id = raft_id(peer);
        let mut nodes = m.membership().nodes().peekable();
        if nodes.peek().is_none() {
            return true;
        }
        m.membership().nodes().any(|(n, _)| *n == id) || self.bootstrap_peers.contains(peer)
    }

    async fn handle_inner(&self, peer: String, k: u8, body: Bytes) -> Result<Vec<u8>, String> {
        if !self.allowed(&peer) {
            tracing::warn!(%peer, "refusing a Raft request from a node that is not a member");
            return Err(format!(
                "{peer} is not a member of this orchestrator group; add it with caravel cluster add"
            ));
        }
        let raft = &self.raft;
        match k {
            kind::APPEND => {
                let req = decode_append_request(&self.cache, &body)
                    .map_err(|e| format!("cannot decode the request: {e}"))?;
                let _busy = self.contact.busy();
                encode(&raft.append_entries(req).await)
            }
            kind::VOTE => {
                let req: VoteRequest<NodeId> = decode(&body)?;
                let resp = raft.vote(req.clone()).await;
                if let Ok(r) = &resp
                    && !r.vote_granted
                    && req.last_log_id < r.last_log_id
                {
                    self.contact.refused_shorter_log();
                }
                encode(&resp)
            }
            kind::SNAPSHOT => {
                let req: InstallSnapshotRequest<TypeConfig> = decode(&body)?;
                let _busy = self.contact.busy();
                encode(&raft.install_snapshot(req).await)
            }
            kind::FORWARD_WRITE => {
                let cmd: Arc<Command> = decode(&body)?;
                encode(&propose(raft, cmd, crate::orchestrator::WRITE_TIMEOUT).await)
            }
            kind::READ_INDEX => {
                let ans: Result<u64, LeaderError> = match tokio::time::timeout(
                    crate::orchestrator::WRITE_TIMEOUT,
                    raft.get_read_log_id(),
                )
                .await
                {
                    Err(_) => Err(LeaderError::Timeout(
                        crate::orchestrator::WRITE_TIMEOUT.as_millis() as u64,
                    )),
                    Ok(Ok((read, _))) => Ok(read.map(|l| l.index).unwrap_or(0)),
                    Ok(Err(e)) => Err(lerr!(e)),
                };
                encode(&ans)
            }
            kind::ADMIN => {
                let req: AdminRequest = decode(&body)?;
                encode(&admin(raft, req).await)
            }
            kind::STATUS => encode(&member_info(raft, &self.me)),
            kind::HEARTBEATS => {
                // (compute node, milliseconds since its last heartbeat) from a follower's sessions.
                let beats: Vec<(String, u64)> = decode(&body)?;
                if let Some(c) = self.cluster.get() {
                    let now = crate::orchestrator::now_ns();
                    for (node, age_ms) in beats {
                        c.heartbeat(&node, now - (age_ms as i64) * 1_000_000);
                    }
                }
                encode(&())
            }
            kind::SESSION_AT => {
                let node: String = decode(&body)?;
                let here = self
                    .cluster
                    .get()
                    .is_some_and(|c| c.session(&node).is_some());
                encode(&here.then(|| advertised_api(&self.me)))
            }
            other => Err(format!("unknown request kind {other}")),
        }
    }
}

impl rpc::Handler for PeerHandler {
    fn handle(
        &self,
        peer: String,
        kind: u8,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let this = PeerHandler {
            raft: self.raft.clone(),
            me: self.me.clone(),
            bootstrap_peers: self.bootstrap_peers.clone(),
            cluster: self.cluster.clone(),
            contact: self.contact.clone(),
            cache: self.cache.clone(),
        };
        Box::pin(async move { this.handle_inner(peer, kind, body).await })
    }

    fn stream(
        &self,
        peer: String,
        k: u8,
        body: Bytes,
    ) -> BoxFuture<'static, Result<rpc::AnswerStream, String>> {
        let allowed = self.allowed(&peer);
        let cluster = self.cluster.get().cloned();
        Box::pin(async move {
            if !allowed {
                return Err(format!("{peer} is not a member of this orchestrator group"));
            }
            let cluster = cluster.ok_or("this member is still starting")?;
            match k {
                kind::RELAY_LOGS | kind::RELAY_RESULT => {
                    let req: crate::orchestrator::relay::RelayRequest = decode(&body)?;
                    crate::orchestrator::relay::serve(cluster, req).await
                }
                other => Err(format!("unknown stream kind {other}")),
            }
        })
    }
}

/// Calls a peer with a postcard body and decodes its postcard answer.
pub async fn call_peer<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
    client: &rpc::Client,
    node: &NodeAddr,
    k: u8,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, rpc::Error> {
    let body = postcard::to_allocvec(req).map_err(|e| rpc::Error::Remote {
        addr: node.raft_addr.clone(),
        message: format!("cannot encode the request: {e}"),
    })?;
    let answer = client
        .call(&node.raft_addr, &node.name, k, &body, timeout)
        .await?;
    postcard::from_bytes(&answer).map_err(|e| rpc::Error::Remote {
        addr: node.raft_addr.clone(),
        message: format!("cannot decode the answer: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answers of the 1.05 s failover (docs/benchmarks.md, 2026-12-08), as openraft 0.9 gave
    /// them: only a refusal for a lease counts, not one for a shorter log or a vote given to
    /// another candidate of the same term.
    #[test]
    fn a_vote_refused_for_a_lease_is_told_from_the_other_refusals() {
        use openraft::{CommittedLeaderId, Vote};
        let lid = |term, i| caravel_raft_store::LogId::new(CommittedLeaderId::new(term, 3), i);
        let req = |term, last| VoteRequest::<NodeId> {
            vote: Vote::new(term, 1),
            last_log_id: Some(lid(18, last)),
        };
        let resp = |vote: Vote<NodeId>, granted, last| VoteResponse::<NodeId> {
            vote,
            vote_granted: granted,
            last_log_id: Some(lid(18, last)),
        };
        let old_leader = Vote::new_committed(18, 3);
        // The old leader's follower heard it 150 ms later: its lease still ran.
        assert!(refused_for_lease(
            &req(19, 40_063),
            &resp(old_leader, false, 40_062)
        ));
        assert!(refused_for_lease(
            &req(19, 40_063),
            &resp(old_leader, false, 40_063)
        ));
        // Refused for a shorter log, however old the responder's vote.
        assert!(!refused_for_lease(
            &req(19, 40_062),
            &resp(old_leader, false, 40_063)
        ));
        // Already voted for another candidate of the same term, or granted.
        assert!(!refused_for_lease(
            &req(19, 40_063),
            &resp(Vote::new(19, 2), false, 40_062)
        ));
        assert!(!refused_for_lease(
            &req(19, 40_063),
            &resp(Vote::new(19, 1), true, 40_062)
        ));
    }

    #[test]
    fn append_batches_are_cut_by_size_and_never_commit_past_what_they_carry() {
        use caravel_raft_store::{Entry, LogId};
        use openraft::{CommittedLeaderId, EntryPayload, Vote};
        let lid = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
        let big = |i| Entry {
            log_id: lid(i),
            payload: EntryPayload::Normal(std::sync::Arc::new(Command::StopJob {
                job_id: "x".repeat(1000),
                reason: String::new(),
                evaluation_id: String::new(),
                now: 0,
            })),
        };
        let rpc = || AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(lid(0)),
            entries: (1..=10).map(big).collect(),
            leader_commit: Some(lid(9)),
        };
        let (all, cut, bytes) = cut_to_budget(rpc(), 1 << 20);
        assert_eq!((all.entries.len(), cut), (10, None));
        assert!((10_000..11_000).contains(&bytes), "{bytes}");
        let (part, cut, _) = cut_to_budget(rpc(), 3500);
        assert_eq!(part.entries.len(), 3);
        assert_eq!(cut, Some(lid(3)));
        assert_eq!(part.leader_commit, Some(lid(3)));
        let (one, cut, _) = cut_to_budget(rpc(), 10);
        assert_eq!(
            one.entries.len(),
            1,
            "an entry larger than the budget still goes alone"
        );
        assert_eq!(cut, Some(lid(1)));
    }

    #[test]
    fn raft_ids_are_stable_and_distinct() {
        assert_eq!(raft_id("orch-1"), raft_id("orch-1"));
        assert_ne!(raft_id("orch-1"), raft_id("orch-2"));
        assert_ne!(raft_id(""), 0);
    }
}

/// Golden encodings of the orchestrator-to-orchestrator requests and answers (postcard bodies of
/// `caravel-raft/1` frames; the frame carries the protocol version). Files in
/// `tests/golden/<format>/peer_*.bin`; later versions must read every earlier directory.
/// `CARAVEL_BLESS=1` rewrites this version's.
#[cfg(test)]
mod golden {
    use super::*;
    use crate::orchestrator::relay::RelayRequest;
    use caravel_raft_store::{Entry, LogId};
    use openraft::{CommittedLeaderId, EntryPayload, Vote};

    fn golden<T: Serialize + for<'de> Deserialize<'de> + std::fmt::Debug>(name: &str, v: &T) {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/v1")
            .join(format!("peer_{name}.bin"));
        let bytes = postcard::to_allocvec(v).unwrap();
        if std::env::var_os("CARAVEL_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            return;
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let back: T = postcard::from_bytes(&stored)
            .unwrap_or_else(|e| panic!("{} no longer decodes: {e}", path.display()));
        assert_eq!(format!("{back:?}"), format!("{v:?}"), "{}", path.display());
        assert_eq!(bytes, stored, "peer {name}: the wire format changed");
    }

    #[test]
    fn every_peer_request_and_answer_reads_back_from_its_golden_encoding() {
        let lid = |t, i| LogId::new(CommittedLeaderId::new(t, 7), i);
        let append = AppendEntriesRequest::<caravel_raft_store::TypeConfig> {
            vote: Vote::new_committed(2, 7),
            prev_log_id: Some(lid(2, 9)),
            entries: vec![Entry {
                log_id: lid(2, 10),
                payload: EntryPayload::Normal(std::sync::Arc::new(Command::StopJob {
                    job_id: "j-1".into(),
                    reason: "r".into(),
                    evaluation_id: "ev-1".into(),
                    now: 1,
                })),
            }],
            leader_commit: Some(lid(2, 9)),
        };
        golden("append_entries", &append);
        golden(
            "vote_request",
            &VoteRequest::<NodeId>::new(Vote::new(3, 7), Some(lid(2, 10))),
        );
        let forwarded: ForwardAnswer = Ok((CommandResponse::Duplicate, 11));
        golden("forward_answer", &forwarded);
        let refused: ForwardAnswer = Err(LeaderError::NotLeader(Some(7)));
        golden("forward_not_leader", &refused);
        let unknown: ForwardAnswer = Err(LeaderError::Unknown("leadership lost".into()));
        golden("forward_unknown", &unknown);
        golden(
            "admin_add",
            &AdminRequest::Add(NodeAddr::named("orch-4", "10.0.0.4:1235", "")),
        );
        golden("admin_remove", &AdminRequest::Remove("orch-1".into()));
        golden(
            "member_info",
            &MemberInfo {
                name: "orch-1".into(),
                api_addr: "10.0.0.1:1234".into(),
                raft_addr: "10.0.0.1:1235".into(),
                state: "leader".into(),
                term: 2,
                last_log_index: 10,
                applied_index: 10,
                leader: Some(7),
            },
        );
        golden("heartbeats", &vec![("edge-1".to_string(), 1500u64)]);
        golden("session_at", &Some("10.0.0.2:1234".to_string()));
        golden(
            "relay_logs",
            &RelayRequest::Logs {
                node_id: "edge-1".into(),
                execution_id: "e-1".into(),
                follow: true,
                tail: false,
                offsets: Some((10, 20)),
            },
        );
        golden(
            "relay_result",
            &RelayRequest::Result {
                node_id: "edge-1".into(),
                execution_id: "e-1".into(),
            },
        );
    }
}
