//! The driver thread: owns the `RawNode`, the storage and the `ClusterState`; ticks, steps,
//! proposes, runs the Ready loop, applies committed entries and answers proposers.
//! The order of the Ready loop, and why, is in the [module docs](super).

use std::collections::{BTreeSet, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot};
use ::raft::{RawNode, SnapshotStatus, StateRole};
use protobuf::Message as _;
use tokio::sync::watch;

use super::logger::logger;
use super::node::{Input, Reply};
use super::storage::DiskStorage;
use super::{RaftConfig, RaftError, Transport};
use crate::replica::{ProposeError, ReplicaStatus};
use crate::state::{ClusterState, Command, Outcome};

/// Inputs handled between two looks at the Ready state (keeps ticks on time under load).
const BATCH: usize = 1024;

struct Pending {
    reply: Reply,
    deadline: Instant,
    within: Duration,
    /// Log index the entry was appended at (on this leader).
    index: u64,
}

pub(crate) struct Driver {
    cfg: RaftConfig,
    raw: RawNode<DiskStorage>,
    state: ClusterState,
    state_dirty: bool,
    transport: Arc<dyn Transport>,
    state_tx: watch::Sender<Arc<ClusterState>>,
    status: Arc<Mutex<ReplicaStatus>>,
    /// Distinguishes this run of the replica from earlier ones in proposal keys.
    incarnation: u64,
    next_seq: u64,
    pending: HashMap<u64, Pending>,
    /// `(index, seq)` of every pending proposal, to find those overwritten by another entry.
    by_index: BTreeSet<(u64, u64)>,
    /// Peers a snapshot was sent to in this round (reported to raft after the round).
    snapshots_sent: Vec<u64>,
    /// Outcomes of applied proposals, sent after the state that includes them is published
    /// (a proposer that reads `state()` after its answer sees its command).
    answers: Vec<(Reply, Result<Outcome, ProposeError>)>,
}

/// Proposal key carried in the entry context: who proposed it, in which run, which proposal.
fn encode_key(node: u64, incarnation: u64, seq: u64) -> Vec<u8> {
    [node, incarnation, seq].iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn decode_key(ctx: &[u8]) -> Option<(u64, u64, u64)> {
    if ctx.len() != 24 {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(ctx[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Some((word(0), word(1), word(2)))
}

impl Driver {
    pub fn new(
        cfg: RaftConfig,
        storage: DiskStorage,
        state: ClusterState,
        transport: Arc<dyn Transport>,
        state_tx: watch::Sender<Arc<ClusterState>>,
        status: Arc<Mutex<ReplicaStatus>>,
    ) -> Result<Driver, RaftError> {
        let raft_cfg = ::raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            // `applied` stays 0: raft starts applying after the snapshot the state came from
            ..Default::default()
        };
        let cs = storage.conf_state().clone();
        let mut configured: Vec<u64> = cfg.peers.iter().map(|p| p.id).collect();
        let mut stored = cs.voters.clone();
        configured.sort_unstable();
        stored.sort_unstable();
        if configured != stored {
            tracing::warn!(
                id = cfg.id,
                ?configured,
                ?stored,
                "raft peers differ from the membership stored in the data directory; the stored one is used"
            );
        }
        let mut raw = RawNode::new(&raft_cfg, storage, &logger(cfg.id))?;
        if cs.voters == [cfg.id] && cs.learners.is_empty() {
            // alone: no one to wait for, lead now
            raw.campaign()?;
        }
        let incarnation = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Ok(Driver {
            cfg,
            raw,
            state,
            state_dirty: true,
            transport,
            state_tx,
            status,
            incarnation,
            next_seq: 1,
            pending: HashMap::new(),
            by_index: BTreeSet::new(),
            snapshots_sent: Vec::new(),
            answers: Vec::new(),
        })
    }

    /// Drive until shutdown (`Ok`) or a storage failure (`Err` with the reason; every pending
    /// proposal has then failed with `Stopped`).
    pub fn run(mut self, inbox: &Receiver<Input>) -> Result<(), String> {
        let tick = self.cfg.tick;
        let mut next_tick = Instant::now() + tick;
        loop {
            let mut stop = false;
            match inbox.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                Ok(input) => stop |= self.handle(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop = true,
            }
            for _ in 0..BATCH {
                match inbox.try_recv() {
                    Ok(input) => stop |= self.handle(input),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick = (next_tick + tick).max(now);
                self.expire(now);
            }
            if let Err(e) = self.on_ready() {
                let reason = e.to_string();
                self.publish(); // what was applied before the failure stands
                self.fail_all(|| ProposeError::Stopped(reason.clone()));
                return Err(reason);
            }
            self.publish();
            if stop {
                self.stop();
                return Ok(());
            }
        }
    }

    /// Handle one input; true when it asks to stop.
    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Propose { data, deadline, within, reply } => self.propose(data, deadline, within, reply),
            Input::Step(m) if m.to != self.cfg.id => {
                tracing::warn!(
                    id = self.cfg.id,
                    to = m.to,
                    from = m.from,
                    "raft message for another replica dropped; check the peer addresses"
                );
            }
            Input::Step(m) => {
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!(id = self.cfg.id, error = %e, "raft message ignored");
                }
            }
            Input::Shutdown => return true,
        }
        false
    }

    fn leader_addr(&self) -> Option<String> {
        match self.raw.raft.leader_id {
            0 => None,
            id => self.cfg.addr_of(id),
        }
    }

    fn propose(&mut self, data: Vec<u8>, deadline: Instant, within: Duration, reply: Reply) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(ProposeError::NotLeader { leader: self.leader_addr() }));
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = encode_key(self.cfg.id, self.incarnation, seq);
        match self.raw.propose(key, data) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                self.by_index.insert((index, seq));
                self.pending.insert(seq, Pending { reply, deadline, within, index });
            }
            Err(::raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(ProposeError::NotLeader { leader: self.leader_addr() }));
            }
            Err(e) => {
                let _ = reply.send(Err(ProposeError::Stopped(format!("raft refused the proposal: {e}"))));
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), RaftError> {
        // Bounded: each round persists something or hands out committed entries.
        for _ in 0..64 {
            if !self.raw.has_ready() {
                break;
            }
            let mut rd = self.raw.ready();
            if let Some(ss) = rd.ss() {
                let (id, term, leader) = (self.cfg.id, self.raw.raft.term, ss.leader_id);
                tracing::info!(id, term, leader, role = ?ss.raft_state, "raft role changed");
            }
            // 1. a leader's messages may leave before its own append is durable
            let msgs = rd.take_messages();
            self.send(msgs);
            // 2. a snapshot from the leader replaces log and state
            if !rd.snapshot().is_empty() {
                self.install_snapshot(rd.snapshot().clone())?;
            }
            // 3. entries committed earlier
            self.apply(rd.take_committed_entries())?;
            // 4. persist entries and hard state (fsync) ...
            self.raw.mut_store().append(rd.entries())?;
            if let Some(hs) = rd.hs() {
                let old = self.raw.store().hard_state();
                let durable = hs.term != old.term || hs.vote != old.vote;
                self.raw.mut_store().set_hard_state(hs.clone(), durable)?;
            }
            // 5. ... before the messages that acknowledge them
            let msgs = rd.take_persisted_messages();
            self.send(msgs);
            // 6. the light ready
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.raw.mut_store().set_commit(commit);
            }
            self.send(light.take_messages());
            self.apply(light.take_committed_entries())?;
            self.raw.advance_apply();
        }
        for to in std::mem::take(&mut self.snapshots_sent) {
            // fire-and-forget transport: if it was lost, the follower's rejection brings it back
            self.raw.report_snapshot(to, SnapshotStatus::Finish);
        }
        self.maybe_compact()
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.snapshots_sent.push(m.to);
            }
            self.transport.send(m.to, m);
        }
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), RaftError> {
        let index = snap.get_metadata().index;
        let mut state = ClusterState::from_bytes(&snap.data).map_err(|e| RaftError::Corrupt {
            path: self.cfg.data_dir.clone(),
            reason: format!("snapshot {index} from the leader does not hold a cluster state: {e}"),
        })?;
        state.applied_index = index;
        self.raw.mut_store().apply_snapshot(snap)?;
        tracing::info!(id = self.cfg.id, index, "installed raft snapshot from the leader");
        self.state = state;
        self.state_dirty = true;
        // Proposals at or below the snapshot: whether they made it is unknown here.
        while let Some(&(idx, seq)) = self.by_index.first() {
            if idx > index {
                break;
            }
            self.by_index.pop_first();
            if let Some(p) = self.pending.remove(&seq) {
                let _ = p.reply.send(Err(ProposeError::Timeout(p.within)));
            }
        }
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in entries {
            if e.index <= self.state.applied_index {
                continue;
            }
            let outcome = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => None,
                EntryType::EntryNormal => Some(match serde_json::from_slice::<Command>(&e.data) {
                    Ok(cmd) => self.state.apply(e.index, &cmd),
                    Err(err) => {
                        let (id, index) = (self.cfg.id, e.index);
                        tracing::error!(id, index, error = %err, "undecodable raft command skipped");
                        Outcome::Rejected { reason: format!("undecodable command: {err}") }
                    }
                }),
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data).map_err(::raft::Error::from)?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().set_conf_state(cs)?;
                    None
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(::raft::Error::from)?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().set_conf_state(cs)?;
                    None
                }
            };
            self.state.applied_index = e.index;
            self.state_dirty = true;
            if let Some((node, incarnation, seq)) = decode_key(&e.context) {
                if node == self.cfg.id && incarnation == self.incarnation {
                    if let Some(p) = self.pending.remove(&seq) {
                        self.by_index.remove(&(p.index, seq));
                        self.answers.push((p.reply, Ok(outcome.unwrap_or(Outcome::Applied))));
                    }
                }
            }
        }
        // A proposal whose index is now applied by a different entry was overwritten.
        let applied = self.state.applied_index;
        while let Some(&(idx, seq)) = self.by_index.first() {
            if idx > applied {
                break;
            }
            self.by_index.pop_first();
            if let Some(p) = self.pending.remove(&seq) {
                let _ = p.reply.send(Err(ProposeError::NotLeader { leader: self.leader_addr() }));
            }
        }
        Ok(())
    }

    /// Snapshot the state and compact the log every `snapshot_every` applied entries.
    fn maybe_compact(&mut self) -> Result<(), RaftError> {
        let applied = self.state.applied_index;
        if applied < self.raw.store().snapshot_index() + self.cfg.snapshot_every {
            return Ok(());
        }
        let term = self.raw.raft.raft_log.term(applied)?;
        let mut snap = Snapshot { data: self.state.to_bytes().into(), ..Default::default() };
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(self.raw.store().conf_state().clone());
        let commit = self.raw.raft.raft_log.committed;
        let store = self.raw.mut_store();
        store.set_commit(commit);
        store.compact(snap)?;
        tracing::debug!(id = self.cfg.id, index = applied, "raft log compacted");
        Ok(())
    }

    /// Fail proposals past their deadline.
    fn expire(&mut self, now: Instant) {
        let late: Vec<u64> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(s, _)| *s).collect();
        for seq in late {
            if let Some(p) = self.pending.remove(&seq) {
                self.by_index.remove(&(p.index, seq));
                let _ = p.reply.send(Err(ProposeError::Timeout(p.within)));
            }
        }
    }

    fn fail_all(&mut self, err: impl Fn() -> ProposeError) {
        self.by_index.clear();
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(err()));
        }
    }

    fn publish(&mut self) {
        if self.state_dirty {
            self.state_dirty = false;
            self.state_tx.send_replace(Arc::new(self.state.clone()));
        }
        let raft = &self.raw.raft;
        let status = ReplicaStatus {
            id: self.cfg.id,
            term: raft.term,
            leader_id: (raft.leader_id != 0).then_some(raft.leader_id),
            leader_addr: self.leader_addr(),
            is_leader: raft.state == StateRole::Leader,
            commit_index: raft.raft_log.committed,
            applied_index: self.state.applied_index,
        };
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
        for (reply, answer) in self.answers.drain(..) {
            let _ = reply.send(answer);
        }
    }

    fn stop(&mut self) {
        let commit = self.raw.raft.raft_log.committed;
        self.raw.mut_store().set_commit(commit);
        if let Err(e) = self.raw.mut_store().persist_state() {
            tracing::warn!(id = self.cfg.id, error = %e, "could not record the commit index at shutdown");
        }
        self.fail_all(|| ProposeError::Stopped("coordinator replica is shutting down".into()));
    }
}
