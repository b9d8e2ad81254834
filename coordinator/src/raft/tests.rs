//! Raft node tests: real `RaftNode`s with data in temp dirs, on the in-memory network (drops,
//! delays, partitions), proposing real state-machine commands. Every wait has a deadline.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::*;
use crate::replica::{ProposeError, Replica};
use crate::state::{ClusterState, Command, Outcome};

const WAIT: Duration = Duration::from_secs(15);

fn register(worker: &str, now_ms: u64) -> Command {
    Command::RegisterWorker {
        gpus: 0,
        worker: worker.into(),
        addr: format!("{worker}:7100"),
        protocol: cyclotron_proto::PROTOCOL_VERSION,
        lease_ms: 10_000,
        now_ms,
        session_hash: String::new(),
        replaces: None,
    }
}

fn heartbeat(worker: &str, now_ms: u64) -> Command {
    Command::Heartbeat { worker: worker.into(), now_ms }
}

fn submit(job: &str) -> Command {
    let text = "name = \"j\"\n[data]\nsource = \"fashion_mnist\"\n[model]\narch = \"small_resnet\"\n\
                [[stage]]\nlr = 0.1\ncycles = 1\ncycle_len = 1\n";
    let spec = cyclotron_core::spec::JobSpec::from_toml_str(text, "<test>").unwrap();
    Command::SubmitJob {
        request_id: String::new(),
        job: job.into(),
        spec: Box::new(spec),
        spec_toml: text.into(),
        workers_per_run: 1,
        max_restarts: 1,
        now_ms: 5,
    }
}

/// Wait for a proposal's answer; the node owes one by the proposal's deadline, so a missing
/// answer (a bug) fails the test after `WAIT` instead of hanging it.
fn block_on<T>(answer: impl std::future::Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async { tokio::time::timeout(WAIT * 2, answer).await })
        .expect("the raft node never answered the proposal")
}

/// Poll `cond` until it holds; false at the deadline.
fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(10));
    }
}

/// The state without the applied index (which counts leaders' empty entries too).
fn content(s: &ClusterState) -> ClusterState {
    ClusterState { applied_index: 0, ..s.clone() }
}

struct Cluster {
    net: Arc<MemNetwork>,
    dirs: Vec<TempDir>,
    nodes: Vec<Option<RaftNode>>,
    snapshot_every: u64,
}

impl Cluster {
    fn new(n: u64, seed: u64, snapshot_every: u64) -> Cluster {
        let mut c = Cluster {
            net: MemNetwork::new(seed),
            dirs: (0..n).map(|_| tempfile::tempdir().unwrap()).collect(),
            nodes: (0..n).map(|_| None).collect(),
            snapshot_every,
        };
        for id in 1..=n {
            c.start(id);
        }
        c
    }

    fn ids(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64).collect()
    }

    fn addr(id: u64) -> String {
        format!("http://coordinator-{id}:7000")
    }

    fn config(&self, id: u64) -> RaftConfig {
        let peers = self.ids().into_iter().map(|id| Peer { id, addr: Self::addr(id) }).collect();
        let mut cfg = RaftConfig::new(id, peers, self.dir(id).to_path_buf());
        cfg.tick = Duration::from_millis(25);
        cfg.snapshot_every = self.snapshot_every;
        cfg
    }

    fn dir(&self, id: u64) -> &Path {
        self.dirs[id as usize - 1].path()
    }

    fn start(&mut self, id: u64) {
        let node = RaftNode::start(self.config(id), self.net.clone()).unwrap();
        self.net.attach(id, node.mailbox());
        self.nodes[id as usize - 1] = Some(node);
    }

    fn stop(&mut self, id: u64) {
        self.net.detach(id);
        if let Some(node) = self.nodes[id as usize - 1].take() {
            node.shutdown();
        }
    }

    fn node(&self, id: u64) -> &RaftNode {
        self.nodes[id as usize - 1].as_ref().expect("node is running")
    }

    fn live(&self) -> impl Iterator<Item = &RaftNode> {
        self.nodes.iter().flatten()
    }

    fn leader(&self) -> Option<u64> {
        self.live().filter(|n| n.status().is_leader).max_by_key(|n| n.status().term).map(|n| n.id())
    }

    fn wait_leader(&self) -> u64 {
        let mut leader = None;
        assert!(
            wait_until(WAIT, || {
                leader = self.leader();
                leader.is_some()
            }),
            "no leader elected"
        );
        leader.unwrap()
    }

    /// Propose through whichever node leads. `strict`: only a definite "not applied"
    /// (`NotLeader`) is retried, so the outcome is the one and only application of `cmd`.
    fn propose(&self, cmd: &Command, strict: bool) -> Outcome {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(id) = self.leader() {
                match block_on(self.node(id).propose(cmd.clone(), Duration::from_secs(2))) {
                    Ok(outcome) => return outcome,
                    Err(e @ ProposeError::Timeout(_)) if strict => panic!("{cmd:?}: {e}"),
                    Err(e) => last = Some(e),
                }
            }
            sleep(Duration::from_millis(20));
        }
        panic!("{cmd:?} did not commit within {WAIT:?}: {last:?}");
    }

    fn state(&self, id: u64) -> Arc<ClusterState> {
        self.node(id).state().borrow().clone()
    }

    /// Wait until every running replica holds the same state (same applied index too).
    fn wait_converged(&self) -> Arc<ClusterState> {
        let ok = wait_until(WAIT, || {
            let states: Vec<_> = self.live().map(|n| n.state().borrow().clone()).collect();
            states.windows(2).all(|w| w[0] == w[1])
        });
        let states: Vec<_> =
            self.live().map(|n| (n.id(), n.status(), n.state().borrow().applied_index)).collect();
        assert!(ok, "replicas did not converge: {states:?}");
        self.live().next().unwrap().state().borrow().clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in self.ids() {
            self.stop(id);
        }
    }
}

#[test]
fn config_errors_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let peers = vec![Peer { id: 1, addr: "a".into() }, Peer { id: 2, addr: "b".into() }];
    let mut cfg = RaftConfig::new(3, peers.clone(), dir.path().to_path_buf());
    assert!(cfg.validate().unwrap_err().to_string().contains("raft id 3 is not in peers [1, 2]"));
    cfg.id = 1;
    cfg.peers.push(Peer { id: 2, addr: "c".into() });
    assert!(cfg.validate().unwrap_err().to_string().contains("peer id 2 appears twice"));
    cfg.peers = peers;
    cfg.heartbeat_ticks = 10;
    assert!(cfg.validate().unwrap_err().to_string().contains("must exceed heartbeat_ticks"));
    cfg.heartbeat_ticks = 2;
    assert!(cfg.validate().is_ok());
    let err = RaftNode::start(RaftConfig { snapshot_every: 0, ..cfg }, MemNetwork::new(1)).err().unwrap();
    assert!(err.to_string().contains("snapshot_every must be ≥ 1"), "{err}");
}

#[test]
fn a_disk_error_in_the_driver_stops_the_node_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = RaftConfig::new(1, vec![Peer { id: 1, addr: "a".into() }], dir.path().to_path_buf());
    cfg.snapshot_every = 3;
    let node = RaftNode::start(cfg, MemNetwork::new(1)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || node.status().is_leader));
    // the next compaction cannot write its snapshot (even root cannot open a folder as a file)
    std::fs::create_dir(dir.path().join("raft-snapshot.tmp")).unwrap();
    let mut stopped = None;
    for i in 0..10 {
        match block_on(node.propose(heartbeat(&format!("w{i}"), i), Duration::from_secs(5))) {
            Err(ProposeError::Stopped(why)) => {
                stopped = Some(why);
                break;
            }
            _ => continue,
        }
    }
    let why = stopped.expect("proposals fail once the driver died");
    assert!(why.contains("raft-snapshot"), "{why}");
    let died = block_on(async { tokio::time::timeout(Duration::from_secs(5), node.died()).await }).unwrap();
    assert!(died.contains("raft-snapshot"), "{died}");
}

#[test]
fn one_replica_commits_in_order_and_keeps_its_state_across_restarts() {
    let mut c = Cluster::new(1, 1, 1000);
    let cmds = [
        register("w1", 1),
        heartbeat("w1", 2),
        heartbeat("w9", 3), // unknown: rejected, and the rejection comes back
        submit("j1"),
        submit("j1"), // duplicate: rejected
        Command::CancelJob { job: "j1".into(), reason: "test".into() },
        register("w2", 4),
    ];
    // the single-process reference: the same commands applied in order
    let mut reference = ClusterState::default();
    for (i, cmd) in cmds.iter().enumerate() {
        let expected = reference.apply(i as u64 + 1, cmd);
        assert_eq!(c.propose(cmd, true), expected, "command {i}: {cmd:?}");
    }
    assert!(matches!(c.propose(&heartbeat("w9", 9), true), Outcome::Rejected { .. }));
    let before = c.state(1);
    assert_eq!(content(&before), content(&reference));

    let status = c.node(1).status();
    assert!(status.is_leader);
    assert_eq!((status.leader_id, status.leader_addr.as_deref()), (Some(1), Some(Cluster::addr(1).as_str())));
    assert!(status.commit_index >= status.applied_index && status.applied_index == before.applied_index);

    for _ in 0..2 {
        c.stop(1);
        c.start(1);
        assert!(wait_until(WAIT, || c.state(1).applied_index >= before.applied_index), "state not replayed");
        assert_eq!(content(&c.state(1)), content(&before), "state after restart");
    }
    assert_eq!(c.propose(&heartbeat("w2", 10), true), Outcome::Applied);
}

#[test]
fn three_replicas_survive_losing_the_leader_and_the_old_leader_catches_up() {
    let mut c = Cluster::new(3, 2, 1000);
    let leader = c.wait_leader();
    for i in 0..20 {
        assert_eq!(c.propose(&register(&format!("w{i}"), i), true), Outcome::Applied);
    }
    let state = c.wait_converged();
    assert_eq!(state.workers.len(), 20);

    // a follower answers at once with the leader's address
    let follower = c.ids().into_iter().find(|&id| id != leader).unwrap();
    match block_on(c.node(follower).propose(register("x", 0), Duration::from_secs(2))) {
        Err(ProposeError::NotLeader { leader: Some(addr) }) => assert_eq!(addr, Cluster::addr(leader)),
        other => panic!("a follower must redirect to the leader, got {other:?}"),
    }
    assert_eq!(c.node(follower).status().leader_addr, Some(Cluster::addr(leader)));

    c.stop(leader);
    let new_leader = c.wait_leader();
    assert_ne!(new_leader, leader);
    for id in c.ids().into_iter().filter(|&id| id != leader) {
        assert_eq!(c.state(id).workers.len(), 20, "replica {id} lost committed commands");
    }
    for i in 20..30 {
        assert_eq!(c.propose(&register(&format!("w{i}"), i), true), Outcome::Applied);
    }

    c.start(leader);
    let state = c.wait_converged();
    assert_eq!(state.workers.len(), 30);

    // the whole cluster restarts from its disks
    for id in c.ids() {
        c.stop(id);
    }
    for id in c.ids() {
        c.start(id);
    }
    c.wait_leader();
    assert_eq!(c.propose(&register("w30", 30), true), Outcome::Applied);
    let after = c.wait_converged();
    assert_eq!(after.workers.len(), 31);
    for (w, record) in &state.workers {
        assert_eq!(after.workers.get(w), Some(record), "{w} changed across the restart");
    }
}

#[test]
fn a_lossy_network_applies_the_same_log_everywhere() {
    let c = Cluster::new(3, 3, 1000);
    c.net.set_default_link(LinkConfig {
        drop: 0.2,
        delay_min: Duration::ZERO,
        delay_max: Duration::from_millis(15),
    });
    let mut committed = Vec::new();
    for i in 0..30 {
        let w = format!("w{i}");
        // lenient: a timed-out proposal may have applied too; re-registering is harmless
        assert_eq!(c.propose(&register(&w, i), false), Outcome::Applied);
        if i % 3 == 0 {
            assert_eq!(c.propose(&heartbeat(&w, 100 + i), false), Outcome::Applied);
        }
        committed.push(w);
    }
    let stats = c.net.stats();
    assert!(stats.dropped > 0, "the network must actually lose messages: {stats:?}");
    c.net.set_default_link(LinkConfig::default());
    let state = c.wait_converged();
    for w in &committed {
        assert!(state.workers.contains_key(w), "{w} was committed but is missing");
    }
}

#[test]
fn a_partitioned_minority_cannot_commit_and_the_cluster_heals() {
    let c = Cluster::new(3, 4, 1000);
    let old = c.wait_leader();
    assert_eq!(c.propose(&register("before", 1), true), Outcome::Applied);
    c.wait_converged();

    let majority: Vec<u64> = c.ids().into_iter().filter(|&id| id != old).collect();
    c.net.partition(&[&[old], &majority]);
    // the old leader still believes it leads and accepts this, but cannot commit it; once the
    // partition heals its entry is overwritten and the proposal fails (long before its deadline)
    let stranded = c.node(old).propose(register("minority", 2), Duration::from_secs(20));
    let stranded = std::thread::spawn(move || block_on(stranded));
    // the majority elects a leader of its own and keeps committing
    let mut new = None;
    assert!(wait_until(WAIT, || {
        new = majority.iter().copied().find(|&id| c.node(id).status().is_leader);
        new.is_some()
    }));
    for i in 0..5 {
        let cmd = register(&format!("majority{i}"), 10 + i);
        assert_eq!(block_on(c.node(new.unwrap()).propose(cmd, Duration::from_secs(5))), Ok(Outcome::Applied));
    }
    // with check-quorum the isolated leader steps down
    assert!(wait_until(WAIT, || !c.node(old).status().is_leader), "isolated leader kept leading");
    assert!(matches!(
        block_on(c.node(old).propose(register("minority2", 3), Duration::from_millis(500))),
        Err(ProposeError::NotLeader { .. } | ProposeError::Timeout(_))
    ));

    c.net.heal();
    let state = c.wait_converged();
    match stranded.join().unwrap() {
        Err(ProposeError::NotLeader { .. }) => {}
        other => panic!("a stranded proposal must fail once overwritten, got {other:?}"),
    }
    assert!(state.workers.contains_key("before") && state.workers.contains_key("majority4"));
    assert!(!state.workers.contains_key("minority"), "an uncommitted minority proposal was applied");
    assert!(!state.workers.contains_key("minority2"));
    assert_eq!(c.propose(&register("after", 20), true), Outcome::Applied);
}

#[test]
fn a_fresh_replica_catches_up_by_snapshot_after_compaction() {
    let mut c = Cluster::new(3, 5, 20);
    c.stop(3);
    std::fs::remove_dir_all(c.dir(3)).unwrap();
    c.wait_leader();
    for i in 0..70 {
        assert_eq!(c.propose(&register(&format!("w{i}"), i), true), Outcome::Applied);
    }
    assert!(c.dir(1).join("raft-snapshot").exists(), "the log was compacted");
    assert_eq!(c.net.stats().snapshots, 0);

    c.start(3); // empty data dir: the entries it needs are compacted away on the leader
    let state = c.wait_converged();
    assert_eq!(state.workers.len(), 70);
    assert!(c.net.stats().snapshots >= 1, "replica 3 should have been sent a snapshot");
    // and it keeps up by log afterwards, and restarts from its own disk
    assert_eq!(c.propose(&register("late", 99), true), Outcome::Applied);
    c.stop(3);
    c.start(3);
    assert_eq!(c.wait_converged().workers.len(), 71);
}

#[test]
fn a_torn_write_at_the_log_tail_is_dropped_on_restart() {
    let mut c = Cluster::new(1, 6, 1000);
    for i in 0..5 {
        assert_eq!(c.propose(&register(&format!("w{i}"), i), true), Outcome::Applied);
    }
    let before = c.state(1);
    c.stop(1);
    // a crash while appending the next entry: only part of its record reached the disk
    let mut record = Vec::new();
    super::record::encode(b"an entry that was being written when the power went", &mut record);
    let log = c.dir(1).join("raft-log");
    OpenOptions::new().append(true).open(&log).unwrap().write_all(&record[..record.len() / 2]).unwrap();

    c.start(1);
    assert!(wait_until(WAIT, || c.state(1).applied_index >= before.applied_index));
    assert_eq!(content(&c.state(1)), content(&before));
    assert_eq!(c.propose(&register("after", 9), true), Outcome::Applied);
    c.stop(1);
    c.start(1);
    assert!(
        wait_until(WAIT, || c.state(1).workers.contains_key("after")),
        "entries after the torn tail persist"
    );
}

#[test]
fn proposals_fail_fast_once_the_node_is_stopped() {
    let c = Cluster::new(1, 7, 1000);
    let node = c.node(1);
    node.shutdown();
    match block_on(node.propose(register("w", 0), Duration::from_secs(1))) {
        Err(ProposeError::Stopped(reason)) => assert!(reason.contains("stopped"), "{reason}"),
        other => panic!("expected Stopped, got {other:?}"),
    }
    let err = node.step(b"\xff\xff not protobuf").unwrap_err().to_string();
    assert!(err.contains("malformed raft message"), "{err}");
}

#[test]
fn a_late_commit_times_out_and_shutdown_fails_what_is_pending() {
    let c = Cluster::new(3, 8, 1000);
    let leader = c.wait_leader();
    assert_eq!(c.propose(&register("w0", 0), true), Outcome::Applied);
    // acknowledgements reach the leader 150 ms late: shorter than the election timeout
    // (250-500 ms), so it keeps leading (check-quorum still hears from everyone), but every
    // commit takes at least 150 ms
    let slow = LinkConfig {
        delay_min: Duration::from_millis(150),
        delay_max: Duration::from_millis(150),
        ..Default::default()
    };
    for id in c.ids().into_iter().filter(|&id| id != leader) {
        c.net.set_link(id, leader, slow);
    }
    let late = block_on(c.node(leader).propose(register("late", 1), Duration::from_millis(50)));
    assert_eq!(late, Err(ProposeError::Timeout(Duration::from_millis(50))));
    // a timed-out proposal is not withdrawn: it may still commit
    assert!(wait_until(WAIT, || c.state(leader).workers.contains_key("late")));

    let pending = c.node(leader).propose(register("pending", 2), Duration::from_secs(20));
    c.node(leader).shutdown();
    match block_on(pending) {
        Err(ProposeError::Stopped(reason)) => assert!(reason.contains("shutting down"), "{reason}"),
        other => panic!("shutdown must fail pending proposals, got {other:?}"),
    }
}
