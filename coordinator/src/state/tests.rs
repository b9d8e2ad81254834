//! State-machine tests: whole job lifecycles driven by the scheduler's decisions, worker loss and
//! restarts, stale reports, bad input, and determinism of replay.

use cyclotron_core::spec::JobSpec;
use serde_json::json;

use super::*;
use crate::leases::Leases;
use crate::plan::Task;
use crate::scheduler::decide;

fn spec(stages: usize) -> Box<JobSpec> {
    let mut text =
        String::from("name = \"j\"\n[data]\nsource = \"fashion_mnist\"\n[model]\narch = \"small_resnet\"\n");
    for _ in 0..stages {
        text.push_str("[[stage]]\nlr = 0.1\ncycles = 2\ncycle_len = 1\n");
    }
    Box::new(JobSpec::from_toml_str(&text, "<t>").unwrap())
}

/// A log and the state it builds: every command that applied is kept, like committed entries.
struct Sim {
    state: ClusterState,
    log: Vec<Command>,
    /// The leader's in-memory leases.
    leases: Leases,
}

impl Sim {
    fn new() -> Self {
        Sim { state: ClusterState::default(), log: vec![], leases: Leases::default() }
    }
    fn apply(&mut self, cmd: Command) -> Outcome {
        let out = self.state.apply(self.log.len() as u64 + 1, &cmd);
        if out == Outcome::Applied {
            self.log.push(cmd);
        }
        out
    }
    fn tick(&mut self, now_ms: u64) -> Vec<Command> {
        self.leases.sync(&self.state, now_ms);
        let cmds = decide(&self.state, &self.leases, now_ms);
        for c in &cmds {
            assert_eq!(self.apply(c.clone()), Outcome::Applied, "scheduler proposed {c:?}");
        }
        cmds
    }
    fn register(&mut self, w: &str, now_ms: u64) {
        let cmd = Command::RegisterWorker {
            gpus: 0,
            worker: w.into(),
            addr: format!("{w}:1"),
            protocol: cyclotron_proto::PROTOCOL_VERSION,
            lease_ms: 10_000,
            now_ms,
            session_hash: String::new(),
            replaces: None,
        };
        assert_eq!(self.apply(cmd), Outcome::Applied);
        self.leases.renew(w, now_ms, 10_000);
    }
    fn submit(&mut self, job: &str, wpr: usize) {
        let cmd = Command::SubmitJob {
            request_id: String::new(),
            job: job.into(),
            spec: spec(1),
            spec_toml: String::new(),
            workers_per_run: wpr,
            max_restarts: 2,
            now_ms: 0,
        };
        assert_eq!(self.apply(cmd), Outcome::Applied);
    }
    /// Submit `spec` as `job`, one worker per run.
    fn submit_spec(&mut self, job: &str, spec: Box<JobSpec>, max_restarts: u32) {
        let cmd = Command::SubmitJob {
            request_id: String::new(),
            job: job.into(),
            spec,
            spec_toml: String::new(),
            workers_per_run: 1,
            max_restarts,
            now_ms: 0,
        };
        assert_eq!(self.apply(cmd), Outcome::Applied);
    }
    fn running(&self, job: &str) -> (usize, Vec<String>, u64) {
        let j = &self.state.jobs[job];
        let i = j.tasks.iter().position(|t| matches!(t.status, TaskStatus::Running { .. })).unwrap();
        match &j.tasks[i].status {
            TaskStatus::Running { workers, generation } => (i, workers.clone(), *generation),
            s => panic!("task {i} is {s:?}"),
        }
    }
}

#[test]
fn a_job_runs_its_tasks_in_order_and_succeeds() {
    let mut sim = Sim::new();
    sim.register("w1", 0);
    sim.register("w2", 0);
    sim.submit("j", 2);
    // one Run task covers every stage
    assert_eq!(sim.state.jobs["j"].tasks.len(), 1);
    for expected_task in 0..1 {
        sim.tick(100);
        let (task, workers, generation) = sim.running("j");
        assert_eq!((task, workers.len(), generation), (expected_task, 2, 0));
        assert!(sim.state.idle_workers().is_empty());
        let event = JobEvent::Snapshot { index: 0, stage: 0, cycle: 0, manifest_url: "m".into(), from: None };
        let progress = Command::TaskProgress { job: "j".into(), task, generation, event: event.clone() };
        assert_eq!(sim.apply(progress), Outcome::Applied);
        assert_eq!(sim.state.jobs["j"].tasks[task].progress, Some(event));
        let done = Command::TaskDone { job: "j".into(), task, generation, result: json!({"ok": task}) };
        assert_eq!(sim.apply(done), Outcome::Applied);
        assert_eq!(sim.state.idle_workers().len(), 2);
    }
    let j = &sim.state.jobs["j"];
    assert_eq!(j.status, JobStatus::Succeeded);
    assert_eq!(j.results(), Some(json!({"ok": 0})));
    assert!(
        matches!(&j.events[..], [
        JobEvent::TaskStarted { task: 0, generation: 0, .. },
        JobEvent::Snapshot { .. },
        JobEvent::Ended { status, .. },
    ] if status == "succeeded"),
        "{:?}",
        j.events
    );
    assert!(sim.tick(200).is_empty(), "nothing left to do");
}

#[test]
fn a_job_asking_for_more_workers_than_exist_waits_with_a_reason_and_can_be_cancelled() {
    let mut sim = Sim::new();
    sim.register("w1", 0);
    sim.submit("big", 3);
    sim.tick(10);
    assert_eq!(
        sim.state.jobs["big"].status,
        JobStatus::Pending { reason: "needs 3 workers, 1 registered".into() }
    );
    assert!(sim.tick(20).is_empty(), "the same reason is not proposed twice");
    let cancel = Command::CancelJob { job: "big".into(), reason: "user".into() };
    assert_eq!(sim.apply(cancel.clone()), Outcome::Applied);
    assert!(matches!(sim.state.jobs["big"].status, JobStatus::Cancelled { .. }));
    assert!(matches!(sim.apply(cancel), Outcome::Rejected { .. }));
}

#[test]
fn a_dead_worker_restarts_the_run_on_the_remaining_workers() {
    let mut sim = Sim::new();
    for w in ["w1", "w2", "w3"] {
        sim.register(w, 0);
    }
    sim.submit("j", 2);
    sim.tick(100);
    let (task, workers, generation) = sim.running("j");
    assert_eq!(workers, vec!["w1", "w2"]);
    // w1 and w3 keep heartbeating, w2 stalls (SIGSTOP): its lease runs out at 10 s
    for now in [5_000, 9_000, 12_000] {
        for w in ["w1", "w3"] {
            sim.leases.renew(w, now, 10_000);
        }
    }
    let cmds = sim.tick(12_500);
    assert!(matches!(&cmds[..], [Command::ExpireWorkers { workers, .. }] if workers == &["w2"]), "{cmds:?}");
    assert_eq!(sim.state.workers["w2"].status, WorkerStatus::Dead);
    assert!(
        matches!(&sim.state.jobs["j"].status, JobStatus::Pending { reason } if reason.contains("w2 lost"))
    );
    // a late report from the broken group is stale
    let late = Command::TaskDone { job: "j".into(), task, generation, result: json!({}) };
    assert!(matches!(sim.apply(late), Outcome::Rejected { .. }));
    // the next decision restarts the task on w1 and w3 with a new generation
    sim.tick(12_600);
    let (task2, workers2, generation2) = sim.running("j");
    assert_eq!((task2, workers2, generation2), (task, vec!["w1".to_string(), "w3".to_string()], 1));
    assert!(matches!(
        &sim.state.jobs["j"].events[..],
        [JobEvent::TaskStarted { .. }, JobEvent::TaskRestarted { generation: 0, reason, .. }, JobEvent::TaskStarted { generation: 1, .. }]
            if reason.contains("w2 lost")
    ));
    // expiring it again changes nothing; it must register again to come back
    let again = Command::ExpireWorkers { workers: vec!["w2".into()], now_ms: 13_000 };
    assert!(matches!(sim.apply(again), Outcome::Rejected { .. }));
    sim.register("w2", 13_000);
    assert_eq!(sim.state.workers["w2"].status, WorkerStatus::Idle);
}

#[test]
fn a_cancelled_or_failed_job_shows_no_task_running_or_waiting() {
    let mut sim = Sim::new();
    sim.register("w1", 0);
    sim.submit("running", 1);
    sim.submit("waiting", 1);
    sim.tick(10);
    assert_eq!(sim.running("running").0, 0);
    for job in ["running", "waiting"] {
        let was = sim.state.jobs[job].tasks[0].status.name();
        assert_eq!(
            sim.apply(Command::CancelJob { job: job.into(), reason: "user".into() }),
            Outcome::Applied
        );
        assert_eq!(sim.state.jobs[job].tasks[0].status, TaskStatus::Stopped { was: was.into() }, "{job}");
        assert_eq!(sim.state.jobs[job].tasks[0].status.name(), "stopped");
    }
    assert_eq!(sim.state.idle_workers(), vec!["w1"]);
    // a sweep whose conclusion fails the job stops the runs that wait for it
    let mut sim = Sim::new();
    sim.register("w1", 0);
    sim.submit_spec("s", sweep_spec("[lr_find]\n[ensemble]\nruns = 2\n"), 0);
    sim.tick(10);
    let (task, _, generation) = sim.running("s");
    let bad = Command::TaskFailed { job: "s".into(), task, generation, reason: "bad data".into() };
    assert_eq!(sim.apply(bad), Outcome::Applied);
    let j = &sim.state.jobs["s"];
    assert!(matches!(j.status, JobStatus::Failed { .. }));
    assert!(j.tasks.iter().all(|t| t.status.name() == "stopped"), "{:?}", j.tasks);
    assert!(sim.tick(20).is_empty(), "nothing of a failed job is started again");
}

#[test]
fn the_job_fails_with_the_reason_after_max_restarts() {
    let mut sim = Sim::new();
    sim.register("w1", 0);
    sim.submit("j", 1);
    for round in 0..3u64 {
        sim.tick(round * 100);
        let (task, _, generation) = sim.running("j");
        assert_eq!(generation, round);
        let restart =
            Command::RestartTask { job: "j".into(), task, generation, reason: "rank 0 stalled".into() };
        assert_eq!(sim.apply(restart), Outcome::Applied);
    }
    match &sim.state.jobs["j"].status {
        JobStatus::Failed { reason } => {
            assert!(reason.contains("rank 0 stalled") && reason.contains("2 restarts"), "{reason}")
        }
        s => panic!("{s:?}"),
    }
    assert!(
        matches!(sim.state.jobs["j"].events.last(), Some(JobEvent::Ended { status, .. }) if status == "failed")
    );
    assert_eq!(sim.state.idle_workers(), vec!["w1"]);
    assert_eq!(sim.state.jobs["j"].tasks[0].status.name(), "stopped", "not left waiting");
}

#[test]
fn bad_input_is_rejected_without_changing_anything() {
    let mut sim = Sim::new();
    sim.register("w1", 0);
    sim.submit("j", 1);
    let before = sim.state.clone();
    let mut bad_spec = spec(1);
    bad_spec.stages[0].cycle_mult = 0;
    let cases = [
        (
            Command::SubmitJob {
                request_id: String::new(),
                job: "k".into(),
                spec: bad_spec,
                spec_toml: String::new(),
                workers_per_run: 1,
                max_restarts: 0,
                now_ms: 0,
            },
            "cycle_mult must be ≥ 1",
        ),
        (
            Command::SubmitJob {
                request_id: String::new(),
                job: "j".into(),
                spec: spec(1),
                spec_toml: String::new(),
                workers_per_run: 1,
                max_restarts: 0,
                now_ms: 0,
            },
            "already exists",
        ),
        (Command::CancelJob { job: "nope".into(), reason: "x".into() }, "unknown job nope"),
        (
            Command::RegisterWorker {
                gpus: 0,
                worker: "old".into(),
                addr: "a".into(),
                protocol: 99,
                lease_ms: 1,
                now_ms: 0,
                session_hash: String::new(),
                replaces: None,
            },
            "speaks protocol 99",
        ),
        (
            Command::ExpireWorkers { workers: vec!["ghost".into()], now_ms: 0 },
            "none of these workers is alive",
        ),
        (
            Command::TaskProgress {
                job: "j".into(),
                task: 0,
                generation: 0,
                event: JobEvent::Ended { status: "succeeded".into(), reason: String::new() },
            },
            "workers cannot report",
        ),
        (
            Command::StartTask { job: "j".into(), task: 1, workers: vec!["w1".into()], generation: 0 },
            "is not waiting, or waits for another task",
        ),
        (
            Command::StartTask { job: "j".into(), task: 0, workers: vec!["ghost".into()], generation: 0 },
            "worker ghost is not idle",
        ),
        (Command::TaskDone { job: "j".into(), task: 0, generation: 0, result: json!(null) }, "stale report"),
    ];
    for (cmd, needle) in cases {
        match sim.state.apply(99, &cmd) {
            Outcome::Rejected { reason } => assert!(reason.contains(needle), "{cmd:?}: {reason}"),
            Outcome::Applied => panic!("{cmd:?} applied"),
        }
    }
    let mut after = sim.state.clone();
    after.applied_index = before.applied_index;
    assert_eq!(after, before);
}

#[test]
fn replaying_the_log_rebuilds_the_same_state_and_snapshots_round_trip() {
    let mut sim = Sim::new();
    sim.register("w1", 0);
    sim.register("w2", 0);
    sim.submit("a", 1);
    sim.submit("b", 1);
    sim.tick(10);
    let (task, _, generation) = sim.running("a");
    sim.apply(Command::TaskDone { job: "a".into(), task, generation, result: json!({"loss": 0.3}) });
    sim.tick(20);
    let mut replica = ClusterState::default();
    for (i, c) in sim.log.iter().enumerate() {
        assert_eq!(replica.apply(i as u64 + 1, c), Outcome::Applied);
    }
    assert_eq!(replica, sim.state);
    assert_eq!(ClusterState::from_bytes(&sim.state.to_bytes()).unwrap(), sim.state);
    // commands survive serialisation (they travel in raft entries)
    for c in &sim.log {
        let back: Command = serde_json::from_str(&serde_json::to_string(c).unwrap()).unwrap();
        assert_eq!(&back, c);
    }
}

#[test]
fn a_retried_submission_with_the_same_key_creates_one_job() {
    let mut sim = Sim::new();
    let submit = |job: &str, key: &str| Command::SubmitJob {
        request_id: key.into(),
        job: job.into(),
        spec: spec(1),
        spec_toml: String::new(),
        workers_per_run: 1,
        max_restarts: 2,
        now_ms: 0,
    };
    assert_eq!(sim.apply(submit("j-1", "k1")), Outcome::Applied);
    // the retry picked another id (the first answer was lost): rejected, nothing created
    let again = sim.apply(submit("j-2", "k1"));
    assert_eq!(again, Outcome::Rejected { reason: "duplicate submission k1: job j-1".into() });
    assert_eq!(sim.state.jobs.keys().collect::<Vec<_>>(), vec!["j-1"]);
    assert_eq!(sim.state.submissions.get("k1").map(String::as_str), Some("j-1"));
    // no key: every submission is a new job
    assert_eq!(sim.apply(submit("j-3", "")), Outcome::Applied);
    assert_eq!(sim.apply(submit("j-4", "")), Outcome::Applied);
    assert_eq!(sim.state.jobs.len(), 3);
}

fn sweep_spec(extra: &str) -> Box<JobSpec> {
    let text = format!(
        "name = \"s\"\n[data]\nsource = \"fashion_mnist\"\n[model]\narch = \"small_resnet\"\n[[stage]]\nlr = \"auto\"\ncycles = 2\ncycle_len = 1\n{extra}"
    );
    let s = JobSpec::from_toml_str(&text, "<t>").unwrap();
    s.validate().unwrap();
    Box::new(s)
}

/// A grid point's report: a U-shaped curve with its best LR at 0.1 (candidate 1 is better).
fn grid_report(lr: f64, candidate: usize) -> serde_json::Value {
    let d = (lr / 0.1).log10();
    let end = 0.5 + 0.2 * d * d - 0.1 * candidate as f64;
    let point = cyclotron_core::sweep::GridPoint::from_losses(lr, &[2.3, (2.3 + end) / 2.0, end], false);
    serde_json::to_value(cyclotron_core::sweep::PointReport::Grid { point }).unwrap()
}

fn running_tasks(s: &ClusterState, job: &str) -> Vec<(usize, Vec<String>, u64)> {
    s.jobs[job]
        .tasks
        .iter()
        .enumerate()
        .filter_map(|(i, t)| match &t.status {
            TaskStatus::Running { workers, generation } => Some((i, workers.clone(), *generation)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_sweep_runs_in_parallel_then_the_runs_with_its_choice_then_the_evaluation() {
    let mut sim = Sim::new();
    for w in ["w1", "w2", "w3"] {
        sim.register(w, 0);
    }
    let spec = sweep_spec(
        "[lr_find]\nstart = 1e-3\nend = 10.0\ngrid = 9\n[lr_find.candidates]\nbatch_size = [32, 64]\n[ensemble]\nruns = 2\n",
    );
    sim.submit_spec("s", spec, 1);
    assert_eq!(sim.state.jobs["s"].tasks.len(), 18 + 2 + 1);
    let lrs = cyclotron_core::sweep::grid_lrs(sim.state.jobs["s"].spec.lr_find.as_ref().unwrap());
    let mut done_sweeps = 0;
    let mut t = 100;
    while done_sweeps < 18 {
        sim.tick(t);
        t += 100;
        let running = running_tasks(&sim.state, "s");
        // three idle workers: three points at once, never a run before the sweep ends
        assert_eq!(running.len(), 3.min(18 - done_sweeps), "at {done_sweeps} points done");
        assert!(running.iter().all(|(i, _, _)| *i < 18), "{running:?}");
        for (i, _, generation) in running {
            let Task::Sweep { candidate, probe: cyclotron_core::sweep::Probe::Grid { lr, .. }, .. } =
                sim.state.jobs["s"].tasks[i].task.clone()
            else {
                panic!("task {i} is not a grid point")
            };
            assert!(lrs.iter().any(|l| (l - lr).abs() < 1e-12));
            let done = Command::TaskDone {
                job: "s".into(),
                task: i,
                generation,
                result: grid_report(lr, candidate),
            };
            assert_eq!(sim.apply(done), Outcome::Applied);
            done_sweeps += 1;
        }
    }
    let j = &sim.state.jobs["s"];
    let sweep = j.sweep.as_ref().expect("concluded when the last point was done");
    assert_eq!(sweep.chosen, 1, "batch 64 reached the lower loss");
    let lr = sweep.chosen().lr.unwrap();
    assert!((lr / 0.1 - 1.0).abs() < 1e-6, "the curve bottoms out at 0.1: {lr}");
    assert!(j
        .events
        .iter()
        .any(|e| matches!(e, JobEvent::SweepConcluded { chosen, .. } if chosen == "batch_size=64")));
    use cyclotron_proto::v1::task_order::Kind;
    for i in 18..21 {
        let sent = j.task_order(i).and_then(|o| o.kind).unwrap();
        let choice = match &sent {
            Kind::Run(r) => r.sweep.clone(),
            Kind::Evaluate(e) => e.sweep.clone(),
            Kind::Sweep(_) => panic!("task {i} is not a sweep point: {sent:?}"),
        }
        .unwrap_or_else(|| panic!("task {i} did not get the sweep's choice: {sent:?}"));
        assert_eq!(choice.candidate.and_then(|c| c.batch_size), Some(64), "task {i}");
        assert_eq!(choice.report.map(|r| r.lrs.len()), Some(9), "task {i}");
    }
    // a sweep point is sent its own candidate and probe, not the outcome
    let Some(Kind::Sweep(point)) = j.task_order(0).and_then(|o| o.kind) else {
        panic!("task 0 is a sweep point")
    };
    assert!(point.overrides.is_some() && point.probe.is_some(), "{point:?}");
    // both runs at once; the evaluation waits for both
    sim.tick(t);
    let running = running_tasks(&sim.state, "s");
    assert_eq!(running.iter().map(|r| r.0).collect::<Vec<_>>(), vec![18, 19]);
    assert_eq!(sim.state.jobs["s"].status, JobStatus::Running);
    let (_, _, g) = running[0].clone();
    // their progress is told apart in the event log
    let epoch = JobEvent::Epoch {
        stage: 0,
        epoch: 1,
        step: 10,
        train_loss: 0.5,
        valid_loss: 0.5,
        valid_accuracy: 0.8,
        seconds: 1.0,
        from: None,
    };
    let progress = Command::TaskProgress { job: "s".into(), task: 19, generation: 0, event: epoch };
    assert_eq!(sim.apply(progress), Outcome::Applied);
    assert_eq!(sim.state.jobs["s"].events.last().and_then(|e| e.from()), Some("run 1"));
    assert_eq!(
        sim.apply(Command::TaskDone { job: "s".into(), task: 18, generation: g, result: json!({"run": 0}) }),
        Outcome::Applied
    );
    sim.tick(t + 100);
    assert_eq!(running_tasks(&sim.state, "s").len(), 1, "the evaluation waits for run 1");
    assert_eq!(sim.state.jobs["s"].status, JobStatus::Running);
    assert_eq!(
        sim.apply(Command::TaskDone { job: "s".into(), task: 19, generation: 0, result: json!({"run": 1}) }),
        Outcome::Applied
    );
    sim.tick(t + 200);
    assert_eq!(running_tasks(&sim.state, "s").iter().map(|r| r.0).collect::<Vec<_>>(), vec![20]);
    let done = Command::TaskDone { job: "s".into(), task: 20, generation: 0, result: json!({"job": "s"}) };
    assert_eq!(sim.apply(done), Outcome::Applied);
    let j = &sim.state.jobs["s"];
    assert_eq!(j.status, JobStatus::Succeeded);
    let results = j.results().unwrap();
    assert_eq!(results["job"], "s");
    assert_eq!(results["sweep"]["chosen"], 1, "the job's results carry the sweep");
    // a replica replaying the log reaches the same state
    let mut replay = ClusterState::default();
    for (i, c) in sim.log.iter().enumerate() {
        replay.apply(i as u64 + 1, c);
    }
    assert_eq!(replay.to_bytes(), sim.state.to_bytes());
}

#[test]
fn a_sweep_whose_every_curve_diverged_fails_the_job_with_what_to_change() {
    let mut sim = Sim::new();
    sim.register("w1", 0);
    sim.submit_spec("d", sweep_spec("[lr_find]\ngrid = 3\n"), 1);
    for k in 0..3 {
        sim.tick(100 + k);
        let (i, _, g) = running_tasks(&sim.state, "d")[0].clone();
        let point = cyclotron_core::sweep::GridPoint::from_losses(1.0, &[2.3, f64::NAN], true);
        let result = serde_json::to_value(cyclotron_core::sweep::PointReport::Grid { point }).unwrap();
        assert_eq!(
            sim.apply(Command::TaskDone { job: "d".into(), task: i, generation: g, result }),
            Outcome::Applied
        );
    }
    let JobStatus::Failed { reason } = &sim.state.jobs["d"].status else {
        panic!("{:?}", sim.state.jobs["d"].status)
    };
    assert!(reason.contains("LR sweep: no LR sweep gave a usable curve"), "{reason}");
    assert_eq!(sim.state.idle_workers().len(), 1);
}

#[test]
fn a_lost_sweep_point_runs_again_while_the_others_go_on() {
    let mut sim = Sim::new();
    sim.register("w1", 0);
    sim.register("w2", 0);
    sim.submit_spec("p", sweep_spec("[lr_find]\ngrid = 3\n"), 2);
    sim.tick(100);
    let running: Vec<usize> = running_tasks(&sim.state, "p").iter().map(|r| r.0).collect();
    assert_eq!(running, vec![0, 1]);
    let restart =
        Command::RestartTask { job: "p".into(), task: 0, generation: 0, reason: "worker w1 lost".into() };
    assert_eq!(sim.apply(restart), Outcome::Applied);
    let j = &sim.state.jobs["p"];
    assert_eq!(j.status, JobStatus::Running, "point 1 still runs");
    assert_eq!((j.tasks[0].status.clone(), j.tasks[0].restarts), (TaskStatus::Waiting, 1));
    // the freed worker takes the lost point again (plan order), under a new generation
    sim.tick(200);
    let again = running_tasks(&sim.state, "p");
    assert!(again.iter().any(|(i, _, g)| *i == 0 && *g == 1), "{again:?}");
    assert!(again.iter().any(|(i, _, g)| *i == 1 && *g == 0), "{again:?}");
    // a late report from the lost generation changes nothing
    let point = cyclotron_core::sweep::GridPoint::from_losses(0.1, &[2.3, 1.0], false);
    let stale = Command::TaskDone {
        job: "p".into(),
        task: 0,
        generation: 0,
        result: serde_json::to_value(cyclotron_core::sweep::PointReport::Grid { point }).unwrap(),
    };
    assert!(matches!(sim.apply(stale), Outcome::Rejected { reason } if reason.contains("stale report")));
}
