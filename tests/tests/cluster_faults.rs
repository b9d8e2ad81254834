//! Worker faults on a real cluster (one coordinator, three worker processes, runs of two): a
//! worker killed with SIGKILL mid-training, and a worker stalled with SIGSTOP (found by lease
//! expiry). In both the run restarts from its last committed checkpoint on the workers left and
//! the job finishes with every epoch once. And a worker killed during a parallel LR sweep: its
//! sweep point runs again elsewhere while the others go on, and the job's runs still start.

use std::path::Path;
use std::time::Duration;

use cyclotron_tests::{
    fashion_mnist_present, last_training_pid, new_tag, pid_alive, read, run_tagged, signal, status_json,
    tiny_job, wait_until, watch_json, Coordinator, Worker,
};

const EPOCHS: u32 = 10;

struct Cluster {
    dir: tempfile::TempDir,
    tag: String,
    coordinator: Coordinator,
    workers: Vec<Worker>,
}

impl Cluster {
    fn start(lease_ms: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let tag = new_tag();
        let coordinator =
            Coordinator::start(dir.path(), "coordinator", "127.0.0.1:0", &["--lease-ms", lease_ms], &tag);
        let workers =
            (0..3).map(|i| Worker::start(dir.path(), &coordinator.addr, &format!("w{i}"), &tag)).collect();
        Cluster { dir, tag, coordinator, workers }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn logs(&self) -> String {
        let mut s = format!("--- coordinator\n{}", read(&self.coordinator.log));
        for w in &self.workers {
            s += &format!("\n--- {}\n{}", w.id, read(&w.log));
        }
        s
    }

    /// Submit a job of EPOCHS epochs run by two workers; its id.
    fn submit(&self, name: &str) -> String {
        self.submit_text(&tiny_job(name, 16384, EPOCHS), "2")
    }

    /// Submit the spec `text` with `per_run` workers per run; its id.
    fn submit_text(&self, text: &str, per_run: &str) -> String {
        std::fs::write(self.path().join("job.toml"), text).unwrap();
        let ran = run_tagged(
            &["submit", "job.toml", "--coordinator", &self.coordinator.addr, "--workers-per-run", per_run],
            self.path(),
            Duration::from_secs(60),
            &self.tag,
        );
        assert_eq!(ran.code, Some(0), "submit failed:\n{}", ran.stderr);
        ran.stdout.trim().to_string()
    }

    /// Once two epochs are done (their checkpoints handed off), the workers of the run in rank order.
    fn group_after_two_epochs(&self, job: &str) -> Vec<String> {
        wait_until(
            "two epochs",
            Duration::from_secs(180),
            || self.workers.iter().any(|w| read(&w.log).contains("stage 1 epoch 2:")),
            || self.logs(),
        );
        let s = status_json(job, &self.coordinator.addr, self.path(), &self.tag);
        let workers: Vec<String> = s["tasks"][0]["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .map(|w| w.as_str().unwrap().to_string())
            .collect();
        assert_eq!(workers.len(), 2, "{s}");
        workers
    }

    fn worker(&mut self, id: &str) -> &mut Worker {
        self.workers.iter_mut().find(|w| w.id == id).expect("worker")
    }

    /// The job succeeds; its events (watched from the start) and results.
    fn finishes(&self, job: &str) -> (Vec<serde_json::Value>, serde_json::Value) {
        let (code, events, stderr) =
            watch_json(job, &self.coordinator.addr, self.path(), Duration::from_secs(300), &self.tag);
        assert_eq!(code, Some(0), "the job did not succeed: {stderr}\n{}", self.logs());
        let s = status_json(job, &self.coordinator.addr, self.path(), &self.tag);
        assert_eq!(s["status"], "succeeded", "{s}");
        (events, s["results"].clone())
    }
}

/// Every epoch of the job exactly once, in order, in the results.
fn assert_every_epoch_once(results: &serde_json::Value) {
    let epochs: Vec<u64> =
        results["epochs"].as_array().expect("epochs").iter().map(|e| e["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, (1..=u64::from(EPOCHS)).collect::<Vec<_>>(), "{results}");
    assert_eq!(results["snapshots"].as_array().map(Vec::len), Some(1));
}

/// The restarted run continued from a checkpoint after epoch ≥ 2 (the agent logs the child's
/// `resumed` event: "resumed from checkpoint ... (stage 1, epoch N, ...").
fn resumed_epoch(c: &Cluster) -> u64 {
    let logs = c.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("resumed from checkpoint"))
        .unwrap_or_else(|| panic!("no run resumed from a checkpoint:\n{logs}"));
    line.split("epoch ").nth(1).and_then(|r| r.split(',').next()).and_then(|n| n.parse().ok()).expect(line)
}

#[test]
fn killed_worker_restarts_the_run_from_its_last_checkpoint() {
    if !fashion_mnist_present() {
        return;
    }
    let mut c = Cluster::start("2000");
    let job = c.submit("kill9");
    let group = c.group_after_two_epochs(&job);
    // kill -9 rank 0, the writer of checkpoints and results
    let victim = c.worker(&group[0]);
    let child = last_training_pid(&victim.log).expect("the victim's training child");
    signal(victim.proc.pid(), "KILL");
    victim.proc.wait(Duration::from_secs(10), "the killed worker");

    let (events, results) = c.finishes(&job);
    let restarted: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["type"] == "task_restarted").collect();
    assert!(!restarted.is_empty(), "no restart event: {events:?}");
    let second =
        events.iter().find(|e| e["type"] == "task_started" && e["generation"] == 1).expect("generation 1");
    assert!(
        !second["workers"].as_array().unwrap().iter().any(|w| w == group[0].as_str()),
        "the dead worker was given the restarted run: {second}"
    );
    assert!(resumed_epoch(&c) >= 2, "the restart did not continue from the checkpoint after epoch 2");
    assert_every_epoch_once(&results);
    // the killed agent's child noticed its parent is gone (stdin closed) and exited
    wait_until("the orphaned child to exit", Duration::from_secs(10), || !pid_alive(child), || c.logs());
}

#[test]
fn stalled_worker_is_found_by_lease_expiry_and_its_run_restarts() {
    if !fashion_mnist_present() {
        return;
    }
    let mut c = Cluster::start("1500");
    let job = c.submit("sigstop");
    let group = c.group_after_two_epochs(&job);
    let stalled_pid = c.worker(&group[1]).proc.pid();
    signal(stalled_pid, "STOP");
    let (events, results) = c.finishes(&job);
    let reasons: Vec<String> = events
        .iter()
        .filter(|e| e["type"] == "task_restarted")
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    let expected = format!("worker {} lost (lease expired)", group[1]);
    assert!(reasons.iter().any(|r| r.contains(&expected)), "restart reasons {reasons:?} lack {expected:?}");
    assert!(resumed_epoch(&c) >= 2, "the restart did not continue from the checkpoint after epoch 2");
    assert_every_epoch_once(&results);
    // woken up, the stalled worker finds its lease gone and registers again
    signal(stalled_pid, "CONT");
    let log = c.worker(&group[1]).log.clone();
    wait_until(
        "the stalled worker to register again",
        Duration::from_secs(30),
        || read(&log).contains("registering again"),
        || read(&log),
    );
}

#[test]
fn a_worker_killed_during_the_lr_sweep_loses_only_its_point() {
    if !fashion_mnist_present() {
        return;
    }
    let mut c = Cluster::start("2000");
    // 3 grid points of 1,000 steps (several seconds each), then 2 runs of 2 epochs on 1 worker each
    let spec = tiny_job("sweepkill", 2048, 2)
        .replace("lr = 0.05", "lr = \"auto\"")
        .replace("steps = 10\n", "steps = 10\ngrid = 3\ngrid_steps = 1000\n")
        .replace("members = 1\n", "members = 1\nruns = 2\n");
    let job = c.submit_text(&spec, "1");
    // kill a worker once it trains a sweep point (tasks 0..3)
    let mut victim = None;
    wait_until(
        "a sweep point to start",
        Duration::from_secs(120),
        || {
            victim = c.workers.iter().find(|w| {
                let log = read(&w.log);
                (0..3).any(|t| log.contains(&format!("task {t} generation 0 rank=0 world=1 pid=")))
            });
            victim.is_some()
        },
        || c.logs(),
    );
    let id = victim.map(|w| w.id.clone()).unwrap();
    let v = c.worker(&id);
    signal(v.proc.pid(), "KILL");
    v.proc.wait(Duration::from_secs(10), "the killed worker");

    let (events, results) = c.finishes(&job);
    let task = |e: &serde_json::Value| e["task"].as_u64().unwrap_or(u64::MAX);
    let restarted: Vec<u64> =
        events.iter().filter(|e| e["type"] == "task_restarted" && task(e) < 3).map(task).collect();
    assert_eq!(restarted.len(), 1, "exactly one sweep point restarted: {events:?}");
    let lost = restarted[0];
    // the lost point is the one the killed worker was training: its last sweep start before the restart
    let at = events.iter().position(|e| e["type"] == "task_restarted" && task(e) == lost).unwrap();
    let on_victim = |e: &&serde_json::Value| e["workers"] == serde_json::json!([id]);
    let victims: Vec<u64> = events[..at]
        .iter()
        .filter(|e| e["type"] == "task_started" && task(e) < 3)
        .filter(on_victim)
        .map(task)
        .collect();
    assert_eq!(victims.last(), Some(&lost), "{id} was training point {lost} when killed: {events:?}");
    // every other point ran once (generation 0); the lost one twice, the second time elsewhere
    for t in 0..3 {
        let starts: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["type"] == "task_started" && task(e) == t).collect();
        let generations: Vec<u64> = starts.iter().map(|e| e["generation"].as_u64().unwrap()).collect();
        if t == lost {
            assert_eq!(generations, vec![0, 1], "point {t}: {events:?}");
            assert!(!on_victim(&starts[1]), "point {t} restarted on the killed worker: {events:?}");
        } else {
            assert_eq!(generations, vec![0], "point {t} ran again though its worker lived: {events:?}");
        }
    }
    let concluded = events.iter().filter(|e| e["type"] == "sweep_concluded").count();
    assert_eq!(concluded, 1, "the sweep concluded once: {events:?}");
    assert_eq!(results["sweep"]["candidates"][0]["report"]["lrs"].as_array().map(Vec::len), Some(3));
    assert_eq!(results["runs"].as_array().map(Vec::len), Some(2), "{results}");
    assert_eq!(results["snapshots"].as_array().map(Vec::len), Some(2), "one snapshot per run");
}
