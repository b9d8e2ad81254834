//! The coordinator's Prometheus registry: cluster state (workers, jobs and tasks by state), raft
//! health (term, leader, commit and applied index) and gRPC latency by method.
//!
//! One registry per process, owned by [`CoordinatorMetrics`]; serve it with
//! `cyclotron_core::metrics::serve_metrics(addr, metrics.registry().clone())`. The state gauges
//! are recomputed from the whole [`ClusterState`] by [`CoordinatorMetrics::observe_state`] (call it
//! on every published state, e.g. from the replica's `watch` receiver): every known state is set,
//! to 0 when empty, so a state that empties drops to 0 instead of keeping its last value. The gRPC
//! services time each call with [`CoordinatorMetrics::timer`].

use cyclotron_core::metrics::names::{self, LABEL_KIND, LABEL_METHOD, LABEL_STATE};
use prometheus::{HistogramOpts, HistogramTimer, HistogramVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::plan::Task;
use crate::replica::ReplicaStatus;
use crate::state::{ClusterState, JobStatus, TaskStatus, WorkerStatus};

/// Worker states, as the `state` label spells them.
pub const WORKER_STATES: [&str; 3] = ["idle", "busy", "dead"];
/// Job states.
pub const JOB_STATES: [&str; 5] = ["pending", "running", "succeeded", "failed", "cancelled"];
/// Task kinds (one `run` task per job covers every stage).
pub const TASK_KINDS: [&str; 3] = ["sweep", "run", "evaluate"];
/// Task states.
pub const TASK_STATES: [&str; 4] = ["waiting", "running", "done", "stopped"];

/// Latency buckets of gRPC calls, seconds: 0.5 ms (a status read) to 30 s (a proposal in an election).
const RPC_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

fn worker_state(s: WorkerStatus) -> usize {
    match s {
        WorkerStatus::Idle => 0,
        WorkerStatus::Busy => 1,
        WorkerStatus::Dead => 2,
    }
}

fn job_state(s: &JobStatus) -> usize {
    match s {
        JobStatus::Pending { .. } => 0,
        JobStatus::Running => 1,
        JobStatus::Succeeded => 2,
        JobStatus::Failed { .. } => 3,
        JobStatus::Cancelled { .. } => 4,
    }
}

fn task_kind(t: &Task) -> usize {
    match t {
        Task::Sweep { .. } => 0,
        Task::Run { .. } => 1,
        Task::Evaluate { .. } => 2,
    }
}

fn task_state(s: &TaskStatus) -> usize {
    match s {
        TaskStatus::Waiting => 0,
        TaskStatus::Running { .. } => 1,
        TaskStatus::Done => 2,
        TaskStatus::Stopped { .. } => 3,
    }
}

/// The coordinator's metrics and the registry that holds them.
#[derive(Clone)]
pub struct CoordinatorMetrics {
    registry: Registry,
    workers: IntGaugeVec,
    jobs: IntGaugeVec,
    tasks: IntGaugeVec,
    stragglers: IntGauge,
    straggler_rank: IntGaugeVec,
    raft_term: IntGauge,
    raft_is_leader: IntGauge,
    raft_commit_index: IntGauge,
    raft_applied_index: IntGauge,
    rpc_seconds: HistogramVec,
}

impl std::fmt::Debug for CoordinatorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorMetrics").finish_non_exhaustive()
    }
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `c` in `r`. The registry is fresh and every name is a distinct constant, so a
/// failure is a programming error (a duplicated or malformed name), caught by the unit tests.
fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone())).expect("metric names are distinct constants");
    c
}

impl CoordinatorMetrics {
    /// A new registry with every coordinator metric (state gauges at 0).
    pub fn new() -> Self {
        let r = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(&r, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let gauge = |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid metric"));
        let m = CoordinatorMetrics {
            workers: gauge_vec(names::WORKERS, "Registered workers by state.", &[LABEL_STATE]),
            jobs: gauge_vec(names::JOBS, "Jobs by state.", &[LABEL_STATE]),
            stragglers: gauge(names::STRAGGLERS, "Running groups in which the straggler rule names a rank."),
            straggler_rank: gauge_vec(
                names::STRAGGLER_RANK,
                "The rank the straggler rule names (series only while named), by job, task and bound.",
                &[names::LABEL_JOB, "task", "bound"],
            ),
            tasks: gauge_vec(
                names::TASKS,
                "Tasks of all jobs by kind and state.",
                &[LABEL_KIND, LABEL_STATE],
            ),
            raft_term: gauge(names::RAFT_TERM, "Raft term of this coordinator replica."),
            raft_is_leader: gauge(names::RAFT_IS_LEADER, "1 when this replica is the raft leader, else 0."),
            raft_commit_index: gauge(names::RAFT_COMMIT_INDEX, "Raft commit index of this replica."),
            raft_applied_index: gauge(
                names::RAFT_APPLIED_INDEX,
                "Index of the last raft entry applied to the state machine.",
            ),
            rpc_seconds: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(names::RPC_SECONDS, "gRPC request latency by method, seconds.")
                        .buckets(RPC_BUCKETS.to_vec()),
                    &[LABEL_METHOD],
                )
                .expect("valid metric"),
            ),
            registry: r,
        };
        m.observe_state(&ClusterState::default(), &ReplicaStatus::default());
        m
    }

    /// The registry to serve.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Recompute the cluster gauges from `state` and the raft gauges from `replica`.
    pub fn observe_state(&self, state: &ClusterState, replica: &ReplicaStatus) {
        let mut workers = [0i64; WORKER_STATES.len()];
        for w in state.workers.values() {
            workers[worker_state(w.status)] += 1;
        }
        let mut jobs = [0i64; JOB_STATES.len()];
        let mut tasks = [[0i64; TASK_STATES.len()]; TASK_KINDS.len()];
        for j in state.jobs.values() {
            jobs[job_state(&j.status)] += 1;
            for t in &j.tasks {
                tasks[task_kind(&t.task)][task_state(&t.status)] += 1;
            }
        }
        for (label, n) in WORKER_STATES.iter().zip(workers) {
            self.workers.with_label_values(&[*label]).set(n);
        }
        for (label, n) in JOB_STATES.iter().zip(jobs) {
            self.jobs.with_label_values(&[*label]).set(n);
        }
        for (kind, row) in TASK_KINDS.iter().zip(tasks) {
            for (st, n) in TASK_STATES.iter().zip(row) {
                self.tasks.with_label_values(&[*kind, *st]).set(n);
            }
        }
        // named stragglers of running groups; the series of groups no longer slow disappear
        self.straggler_rank.reset();
        let mut stragglers = 0;
        for (id, j) in &state.jobs {
            for (i, t) in j.tasks.iter().enumerate() {
                if let (
                    TaskStatus::Running { .. },
                    Some(crate::state::JobEvent::Straggler { rank: Some(r), bound, .. }),
                ) = (&t.status, &t.straggler)
                {
                    stragglers += 1;
                    self.straggler_rank
                        .with_label_values(&[id.as_str(), &i.to_string(), bound])
                        .set(i64::from(*r));
                }
            }
        }
        self.stragglers.set(stragglers);
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.raft_term.set(as_i64(replica.term));
        self.raft_is_leader.set(i64::from(replica.is_leader));
        self.raft_commit_index.set(as_i64(replica.commit_index));
        // the state machine's own index is the truth of what is applied; the replica's may lag it
        self.raft_applied_index.set(as_i64(replica.applied_index.max(state.applied_index)));
    }

    /// Times one gRPC call of `method` (e.g. `"Submit"`): the latency is recorded when the guard
    /// drops (or on `observe_duration()`); `stop_and_discard()` records nothing.
    /// Keep the metrics of `replica` current: every applied state (and once a second, for the raft
    /// view alone) until the replica's state channel closes. Run it as a task.
    pub async fn follow(self, replica: std::sync::Arc<dyn crate::replica::Replica>) {
        let mut rx = replica.state();
        loop {
            let state = rx.borrow_and_update().clone();
            self.observe_state(&state, &replica.status());
            // a closed channel ends the task; a timeout refreshes the raft view
            if let Ok(Err(_)) = tokio::time::timeout(std::time::Duration::from_secs(1), rx.changed()).await {
                return;
            }
        }
    }

    pub fn timer(&self, method: &str) -> HistogramTimer {
        self.rpc_seconds.with_label_values(&[method]).start_timer()
    }
}

/// The server reports every RPC (and leader-loop round) here: latency by method.
impl crate::server::RpcObserver for CoordinatorMetrics {
    fn observe(&self, method: &'static str, seconds: f64, _code: tonic::Code) {
        self.rpc_seconds.with_label_values(&[method]).observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use cyclotron_core::spec::JobSpec;

    use super::*;
    use crate::state::{Command, JobEvent, Outcome};

    fn spec(lr_find: bool) -> Box<JobSpec> {
        let mut text = String::from(
            "name = \"j\"\n[data]\nsource = \"fashion_mnist\"\n[model]\narch = \"small_resnet\"\n",
        );
        if lr_find {
            text.push_str("[lr_find]\n");
        }
        text.push_str("[[stage]]\nlr = 0.1\ncycles = 2\ncycle_len = 1\n");
        Box::new(JobSpec::from_toml_str(&text, "<t>").unwrap())
    }

    /// A state after real commands: 3 workers (2 busy on job a, 1 dead), job a running, job b
    /// pending, job c cancelled.
    fn busy_state() -> ClusterState {
        let mut s = ClusterState::default();
        let mut index = 0;
        let mut apply = |s: &mut ClusterState, cmd: Command| {
            index += 1;
            assert_eq!(s.apply(index, &cmd), Outcome::Applied, "{cmd:?}");
        };
        for w in ["w1", "w2", "w3"] {
            let cmd = Command::RegisterWorker {
                gpus: 0,
                worker: w.into(),
                addr: format!("{w}:1"),
                protocol: cyclotron_proto::PROTOCOL_VERSION,
                lease_ms: 10_000,
                now_ms: 0,
                session_hash: String::new(),
                replaces: None,
            };
            apply(&mut s, cmd);
        }
        for (job, lr_find) in [("a", true), ("b", false), ("c", false)] {
            let cmd = Command::SubmitJob {
                request_id: String::new(),
                job: job.into(),
                spec: spec(lr_find),
                spec_toml: String::new(),
                workers_per_run: 2,
                max_restarts: 1,
                now_ms: 0,
            };
            apply(&mut s, cmd);
        }
        let start = Command::StartTask {
            job: "a".into(),
            task: 0,
            workers: vec!["w1".into(), "w2".into()],
            generation: 0,
        };
        apply(&mut s, start);
        let event = JobEvent::StageStarted { stage: 0, name: String::new(), epochs: 2, from: None };
        apply(&mut s, Command::TaskProgress { job: "a".into(), task: 0, generation: 0, event });
        apply(&mut s, Command::CancelJob { job: "c".into(), reason: "user".into() });
        apply(&mut s, Command::ExpireWorkers { workers: vec!["w3".into()], now_ms: 12_000 });
        s
    }

    #[test]
    fn observe_state_counts_workers_jobs_and_tasks_by_state() {
        let m = CoordinatorMetrics::new();
        let s = busy_state();
        let replica = ReplicaStatus {
            term: 3,
            is_leader: true,
            commit_index: 10,
            applied_index: 9,
            ..Default::default()
        };
        m.observe_state(&s, &replica);
        let w = |st: &str| m.workers.with_label_values(&[st]).get();
        assert_eq!((w("idle"), w("busy"), w("dead")), (0, 2, 1));
        let j = |st: &str| m.jobs.with_label_values(&[st]).get();
        assert_eq!(
            [j("pending"), j("running"), j("succeeded"), j("failed"), j("cancelled")],
            [1, 1, 0, 0, 1]
        );
        let t = |k: &str, st: &str| m.tasks.with_label_values(&[k, st]).get();
        // one run task per job: a's runs, b's waits, the cancelled job's is stopped
        assert_eq!((t("run", "running"), t("run", "waiting"), t("run", "done")), (1, 1, 0));
        assert_eq!(t("run", "stopped"), 1);
        assert_eq!(m.raft_term.get(), 3);
        assert_eq!(m.raft_is_leader.get(), 1);
        assert_eq!(m.raft_commit_index.get(), 10);
        // the state machine had applied 10 entries: its own index wins over a lagging replica view
        assert_eq!(s.applied_index, 10);
        assert_eq!(m.raft_applied_index.get(), 10);

        let text = cyclotron_core::metrics::encode_text(m.registry()).unwrap();
        for line in [
            "cyclotron_workers{state=\"busy\"} 2",
            "cyclotron_jobs{state=\"cancelled\"} 1",
            "cyclotron_tasks{kind=\"run\",state=\"running\"} 1",
            "cyclotron_raft_term 3",
            "cyclotron_raft_is_leader 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn a_named_straggler_is_a_series_while_named_and_gone_after() {
        let m = CoordinatorMetrics::new();
        let mut s = busy_state();
        let name = |rank: Option<u32>| Command::NameStraggler {
            job: "a".into(),
            task: 0,
            generation: 0,
            rank,
            worker: if rank.is_some() { "w2".into() } else { String::new() },
            bound: if rank.is_some() { "data".into() } else { String::new() },
            summary: "s".into(),
        };
        assert_eq!(s.apply(11, &name(Some(1))), crate::state::Outcome::Applied);
        m.observe_state(&s, &ReplicaStatus::default());
        let text = cyclotron_core::metrics::encode_text(m.registry()).unwrap();
        assert!(text.lines().any(|l| l == "cyclotron_stragglers 1"), "{text}");
        assert!(
            text.lines().any(|l| l == r#"cyclotron_straggler_rank{bound="data",job="a",task="0"} 1"#),
            "{text}"
        );
        // the same name again is not news; a rank outside the group is refused
        assert!(matches!(s.apply(12, &name(Some(1))), crate::state::Outcome::Rejected { .. }));
        let mut stranger = name(Some(1));
        if let Command::NameStraggler { worker, .. } = &mut stranger {
            *worker = "w9".into();
        }
        assert!(matches!(s.apply(13, &stranger), crate::state::Outcome::Rejected { .. }));
        assert_eq!(s.apply(14, &name(None)), crate::state::Outcome::Applied);
        m.observe_state(&s, &ReplicaStatus::default());
        let text = cyclotron_core::metrics::encode_text(m.registry()).unwrap();
        assert!(text.lines().any(|l| l == "cyclotron_stragglers 0"), "{text}");
        assert!(!text.contains("cyclotron_straggler_rank{"), "{text}");
    }

    #[test]
    fn a_state_that_empties_drops_to_zero() {
        let m = CoordinatorMetrics::new();
        m.observe_state(&busy_state(), &ReplicaStatus { is_leader: true, ..Default::default() });
        assert_eq!(m.jobs.with_label_values(&["running"]).get(), 1);
        // a follower that has seen nothing yet
        m.observe_state(&ClusterState::default(), &ReplicaStatus::default());
        assert_eq!(m.jobs.with_label_values(&["running"]).get(), 0);
        assert_eq!(m.workers.with_label_values(&["busy"]).get(), 0);
        assert_eq!(m.tasks.with_label_values(&["run", "running"]).get(), 0);
        assert_eq!(m.raft_is_leader.get(), 0);
    }

    #[test]
    fn timers_record_rpc_latency_by_method() {
        let m = CoordinatorMetrics::new();
        drop(m.timer("Submit"));
        m.timer("Submit").observe_duration();
        m.timer("Submit").stop_and_discard();
        {
            let _t = m.timer("Heartbeat");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let h = |method: &str| m.rpc_seconds.with_label_values(&[method]);
        assert_eq!(h("Submit").get_sample_count(), 2);
        assert_eq!(h("Heartbeat").get_sample_count(), 1);
        assert!(h("Heartbeat").get_sample_sum() >= 0.002);
        let text = cyclotron_core::metrics::encode_text(m.registry()).unwrap();
        assert!(text.contains("cyclotron_rpc_duration_seconds_count{method=\"Submit\"} 2"), "{text}");
    }

    #[test]
    fn every_coordinator_metric_name_is_exported() {
        let m = CoordinatorMetrics::new();
        m.timer("Status").observe_duration();
        let families: Vec<String> = m.registry().gather().iter().map(|f| f.name().to_string()).collect();
        for name in names::COORDINATOR_METRICS {
            assert!(families.iter().any(|f| f == name), "{name} not registered: {families:?}");
        }
    }
}
