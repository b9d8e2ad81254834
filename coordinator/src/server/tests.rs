//! Service tests: real tonic servers on 127.0.0.1:0, real raft nodes (one replica, and a
//! three-replica cluster for redirects and failover) and gRPC clients. Every wait has a deadline
//! so a broken server fails the test instead of hanging it.

use std::future::Future;
use std::time::Duration;

use cyclotron_proto::v1 as pb;
use pb::job_event::Event;
use pb::job_service_client::JobServiceClient;
use pb::worker_service_client::WorkerServiceClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use super::*;

const SPEC: &str = r#"
name = "tiny"
[data]
source = "fashion_mnist"
[model]
arch = "small_resnet"
[[stage]]
lr = 0.1
cycles = 2
cycle_len = 1
"#;

struct Cluster {
    handle: CoordinatorHandle,
    jobs: JobServiceClient<Channel>,
    workers: WorkerServiceClient<Channel>,
    /// Each registered worker's session secret.
    sessions: Sessions,
    _dir: tempfile::TempDir,
}

type Sessions = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>;

fn session(sessions: &Sessions, id: &str) -> String {
    sessions.lock().unwrap().get(id).cloned().unwrap_or_default()
}

fn beat(sessions: &Sessions, id: &str) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest { worker_id: id.into(), session: session(sessions, id) }
}

fn config(listen: &str, dir: &std::path::Path, lease_ms: u64) -> CoordinatorConfig {
    let mut config = CoordinatorConfig::new(listen.parse().unwrap(), dir.to_path_buf());
    config.lease_ms = lease_ms;
    config.schedule_every = Duration::from_millis(30);
    config.rendezvous_timeout = Duration::from_secs(5);
    config
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// Remembers every observed call.
#[derive(Debug, Default)]
struct Calls(std::sync::Mutex<Vec<(&'static str, Code)>>);

impl RpcObserver for Calls {
    fn observe(&self, method: &'static str, seconds: f64, code: Code) {
        assert!(seconds >= 0.0);
        self.0.lock().unwrap().push((method, code));
    }
}

/// One coordinator (a one-replica raft cluster) on 127.0.0.1:0, once it leads.
async fn start(lease_ms: u64) -> Cluster {
    start_observed(lease_ms, None).await
}

async fn start_observed(lease_ms: u64, observer: Option<std::sync::Arc<dyn RpcObserver>>) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config("127.0.0.1:0", dir.path(), lease_ms);
    config.observer = observer;
    let handle = serve(config).await.unwrap();
    let replica = handle.replica();
    eventually("the single replica to lead", || {
        let replica = replica.clone();
        async move { replica.status().is_leader.then_some(()) }
    })
    .await;
    let channel = channel(&handle.addr().to_string()).await;
    Cluster {
        handle,
        jobs: JobServiceClient::new(channel.clone()),
        workers: WorkerServiceClient::new(channel),
        sessions: Default::default(),
        _dir: dir,
    }
}

/// Poll `f` until it returns `Some`, for at most 10 s.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn submit(c: &mut Cluster, workers_per_run: u32) -> String {
    let req = pb::SubmitJobRequest {
        request_id: String::new(),
        spec_toml: SPEC.into(),
        workers_per_run,
        max_restarts: 2,
    };
    c.jobs.submit_job(req).await.unwrap().into_inner().job_id
}

async fn register(c: &mut Cluster, id: &str) {
    let req = pb::RegisterRequest {
        worker_id: id.into(),
        data_addr: format!("{id}:9000"),
        protocol_version: cyclotron_proto::PROTOCOL_VERSION,
        gpus: 0,
        session: String::new(),
    };
    let session = c.workers.register(req).await.unwrap().into_inner().session;
    assert_eq!(session.len(), 64, "a 256-bit session secret, hex");
    c.sessions.lock().unwrap().insert(id.to_string(), session);
}

async fn heartbeat(c: &mut Cluster, id: &str) -> Result<Option<pb::Assignment>, tonic::Status> {
    let req = beat(&c.sessions, id);
    c.workers.heartbeat(req).await.map(|r| r.into_inner().assignment)
}

async fn assigned(c: &Cluster, id: &str) -> pb::Assignment {
    eventually(&format!("an assignment for {id}"), || {
        let mut w = c.workers.clone();
        let req = beat(&c.sessions, id);
        async move { w.heartbeat(req).await.ok()?.into_inner().assignment }
    })
    .await
}

async fn job(c: &mut Cluster, id: &str) -> pb::Job {
    c.jobs.get_job(pb::GetJobRequest { job_id: id.into() }).await.unwrap().into_inner()
}

fn rendezvous_req(c: &Cluster, worker: &str, a: &pb::Assignment, addr: &str) -> pb::RendezvousRequest {
    pb::RendezvousRequest {
        job_id: a.job_id.clone(),
        task: a.task,
        generation: a.generation,
        rank: a.rank,
        data_addr: addr.into(),
        nccl_unique_id: if a.rank == 0 { vec![1, 2, 3] } else { vec![] },
        worker_id: worker.into(),
        session: session(&c.sessions, worker),
    }
}

#[tokio::test]
async fn submit_get_list_cancel_and_watch_a_job() {
    let mut c = start(10_000).await;
    let id = submit(&mut c, 1).await;
    // `<name>-<UTC date>-<time>`, then `-2` for another in the same second
    let (name, stamp) = id.split_at(5);
    assert_eq!(name, "tiny-");
    assert!(stamp.len() == 15 && stamp.as_bytes()[8] == b'-', "{id}");
    let second = submit(&mut c, 1).await;
    assert_ne!(second, id);
    assert!(second.starts_with("tiny-"), "{second}");
    let j = job(&mut c, &id).await;
    assert_eq!((j.name.as_str(), j.status.as_str()), ("tiny", "pending"));
    assert_eq!(j.tasks.len(), 1);
    assert_eq!(j.tasks[0].kind, "run");
    // no workers: it waits with the reason the scheduler gives
    let j = eventually("the waiting reason", || {
        let mut jobs = c.jobs.clone();
        let id = id.clone();
        async move {
            let j = jobs.get_job(pb::GetJobRequest { job_id: id }).await.ok()?.into_inner();
            j.reason.contains("needs 1 workers, 0 registered").then_some(j)
        }
    })
    .await;
    assert_eq!(j.status, "pending");
    let list = c.jobs.list_jobs(pb::ListJobsRequest {}).await.unwrap().into_inner();
    let ids: Vec<_> = list.jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids, vec![id.as_str(), second.as_str()]);
    let mut watch = c
        .jobs
        .watch_job(pb::WatchJobRequest { job_id: id.clone(), from_index: 0 })
        .await
        .unwrap()
        .into_inner();
    let cancelled = c
        .jobs
        .cancel_job(pb::CancelJobRequest { job_id: id.clone(), reason: "not needed".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((cancelled.status.as_str(), cancelled.reason.as_str()), ("cancelled", "not needed"));
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap().unwrap();
    match first.event {
        Some(Event::Ended(e)) => {
            assert_eq!((e.status.as_str(), e.reason.as_str()), ("cancelled", "not needed"))
        }
        other => panic!("{other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().is_none(),
        "the stream ends after the job ended"
    );
    // cancelling twice is refused with the reason
    let again =
        c.jobs.cancel_job(pb::CancelJobRequest { job_id: id, reason: String::new() }).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    c.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_submission_retried_with_its_key_gets_the_same_job() {
    let mut c = start(10_000).await;
    let req = pb::SubmitJobRequest {
        request_id: "client-1".into(),
        spec_toml: SPEC.into(),
        workers_per_run: 1,
        max_restarts: 0,
    };
    let first = c.jobs.submit_job(req.clone()).await.unwrap().into_inner().job_id;
    let again = c.jobs.submit_job(req.clone()).await.unwrap().into_inner().job_id;
    assert_eq!(first, again);
    let other = pb::SubmitJobRequest { request_id: "client-2".into(), ..req };
    let second = c.jobs.submit_job(other).await.unwrap().into_inner().job_id;
    assert_ne!(first, second);
    let jobs = c.jobs.list_jobs(pb::ListJobsRequest {}).await.unwrap().into_inner().jobs;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    c.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_the_right_code_and_names_the_problem() {
    let calls = std::sync::Arc::new(Calls::default());
    let mut c = start_observed(10_000, Some(calls.clone())).await;
    let bad = pb::SubmitJobRequest {
        request_id: String::new(),
        spec_toml: SPEC.replace("cycle_len = 1", "cycle_len = 1\ncycle_mult = 0"),
        workers_per_run: 1,
        max_restarts: 0,
    };
    let e = c.jobs.submit_job(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("cycle_mult must be ≥ 1"), "{}", e.message());
    let garbage = pb::SubmitJobRequest {
        request_id: String::new(),
        spec_toml: "name = ".into(),
        workers_per_run: 1,
        max_restarts: 0,
    };
    let e = c.jobs.submit_job(garbage).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("cannot parse the job spec"), "{}", e.message());
    // a global batch that the job's workers cannot share evenly is refused at submission
    let global = |workers_per_run| pb::SubmitJobRequest {
        request_id: String::new(),
        spec_toml: SPEC
            .replace("source = \"fashion_mnist\"", "source = \"fashion_mnist\"\nglobal_batch_size = 128"),
        workers_per_run,
        max_restarts: 0,
    };
    let e = c.jobs.submit_job(global(3)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("128 does not split evenly over 3 workers"), "{}", e.message());
    assert!(c.jobs.list_jobs(pb::ListJobsRequest {}).await.unwrap().into_inner().jobs.is_empty());
    c.jobs.submit_job(global(2)).await.expect("128 splits over 2 workers");
    for e in [
        c.jobs.get_job(pb::GetJobRequest { job_id: "nope-1".into() }).await.unwrap_err(),
        c.jobs
            .cancel_job(pb::CancelJobRequest { job_id: "nope-1".into(), reason: String::new() })
            .await
            .unwrap_err(),
        c.jobs.watch_job(pb::WatchJobRequest { job_id: "nope-1".into(), from_index: 0 }).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("unknown job nope-1"), "{}", e.message());
    }
    let old = pb::RegisterRequest {
        worker_id: "old".into(),
        data_addr: "x:1".into(),
        protocol_version: 99,
        gpus: 0,
        session: String::new(),
    };
    let e = c.workers.register(old).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("speaks protocol 99"), "{}", e.message());
    let e = heartbeat(&mut c, "ghost").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("register first"), "{}", e.message());
    register(&mut c, "w1").await;
    let progress = pb::ProgressReport {
        worker_id: "w1".into(),
        job_id: "nope-1".into(),
        task: 0,
        generation: 0,
        progress_json: "{".into(),
        session: session(&c.sessions, "w1"),
    };
    assert_eq!(c.workers.report_progress(progress).await.unwrap_err().code(), Code::InvalidArgument);
    // the observer saw each call with its code
    let seen = calls.0.lock().unwrap().clone();
    for expected in [
        ("SubmitJob", Code::InvalidArgument),
        ("GetJob", Code::NotFound),
        ("Heartbeat", Code::NotFound),
        ("Register", Code::Ok),
    ] {
        assert!(seen.contains(&expected), "{expected:?} not in {seen:?}");
    }
    // the leader loop reports each round (every 200 ms): wait for one, boundedly
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !calls.0.lock().unwrap().iter().any(|(m, _)| *m == "LeaderLoop") {
        assert!(std::time::Instant::now() < deadline, "no leader-loop round observed in 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_workers_rendezvous_report_progress_and_the_job_succeeds() {
    let mut c = start(10_000).await;
    register(&mut c, "w1").await;
    register(&mut c, "w2").await;
    let id = submit(&mut c, 2).await;
    let a1 = assigned(&c, "w1").await;
    let a2 = assigned(&c, "w2").await;
    assert_eq!((a1.job_id.as_str(), a1.task, a1.generation, a1.world_size), (id.as_str(), 0, 0, 2));
    assert_eq!((a1.rank, a2.rank), (0, 1));
    assert!(a1.spec_toml.contains("name = \"tiny\""));
    let order = a1.order.clone().and_then(|o| o.kind);
    assert!(
        matches!(order, Some(pb::task_order::Kind::Run(ref r)) if r.stages == 1 && r.epochs == 2),
        "{order:?}"
    );
    // rank 1 waits in rendezvous until rank 0 publishes
    let mut w2 = c.workers.clone();
    let r2 = rendezvous_req(&c, "w2", &a2, "10.0.0.2:5000");
    let waiting = tokio::spawn(async move { w2.rendezvous(r2).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "rank 1 must wait for rank 0");
    let got1 =
        c.workers.rendezvous(rendezvous_req(&c, "w1", &a1, "10.0.0.1:5000")).await.unwrap().into_inner();
    let got2 =
        tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap().unwrap().into_inner();
    assert_eq!(got1.data_addrs, vec!["10.0.0.1:5000", "10.0.0.2:5000"]);
    assert_eq!(got1, got2);
    assert_eq!(got2.nccl_unique_id, vec![1, 2, 3]);
    assert_eq!(got2.ring_secret.len(), 32, "a fresh ring secret for the generation");
    let epoch = r#"{"type":"epoch","stage":0,"epoch":1,"step":100,"train_loss":0.5,"valid_loss":0.4,"valid_accuracy":0.8,"seconds":1.5}"#;
    let progress = pb::ProgressReport {
        worker_id: "w1".into(),
        job_id: id.clone(),
        task: 0,
        generation: 0,
        progress_json: epoch.into(),
        session: session(&c.sessions, "w1"),
    };
    c.workers.report_progress(progress).await.unwrap();
    // rank 1's ok is acknowledged; rank 0's completes the task
    let sessions = c.sessions.clone();
    let ok = |w: &str| pb::ResultReport {
        worker_id: w.into(),
        job_id: id.clone(),
        task: 0,
        generation: 0,
        ok: true,
        result_json: r#"{"valid_accuracy":0.8}"#.into(),
        error: String::new(),
        permanent: false,
        session: session(&sessions, w),
    };
    c.workers.report_result(ok("w2")).await.unwrap();
    assert_eq!(job(&mut c, &id).await.status, "running");
    c.workers.report_result(ok("w1")).await.unwrap();
    let j = job(&mut c, &id).await;
    assert_eq!(j.status, "succeeded");
    assert_eq!(j.results_json, r#"{"valid_accuracy":0.8}"#);
    assert_eq!(heartbeat(&mut c, "w1").await.unwrap(), None, "a finished run leaves no assignment");
    let events: Vec<_> = c
        .jobs
        .watch_job(pb::WatchJobRequest { job_id: id, from_index: 0 })
        .await
        .unwrap()
        .into_inner()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(events.iter().map(|e| e.index).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(matches!(&events[0].event, Some(Event::TaskStarted(t)) if t.workers == ["w1", "w2"]));
    assert!(matches!(&events[1].event, Some(Event::Epoch(e)) if e.step == 100 && e.valid_accuracy == 0.8));
    assert!(matches!(&events[2].event, Some(Event::Ended(e)) if e.status == "succeeded"));
    c.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_silent_worker_loses_its_lease_and_the_task_restarts_on_a_new_group() {
    let mut c = start(400).await;
    for w in ["w1", "w2", "w3"] {
        register(&mut c, w).await;
    }
    let id = submit(&mut c, 2).await;
    let a1 = assigned(&c, "w1").await;
    assert_eq!(a1.generation, 0);
    // w1 and w3 keep heartbeating; w2 goes silent
    let keep_alive = {
        let workers = c.workers.clone();
        let sessions = c.sessions.clone();
        tokio::spawn(async move {
            loop {
                for w in ["w1", "w3"] {
                    let _ = workers.clone().heartbeat(beat(&sessions, w)).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let a = eventually("generation 1", || {
        let mut w = c.workers.clone();
        let req = beat(&c.sessions, "w3");
        async move {
            let a = w.heartbeat(req).await.ok()?.into_inner().assignment?;
            (a.generation == 1).then_some(a)
        }
    })
    .await;
    assert_eq!((a.job_id.as_str(), a.rank, a.world_size), (id.as_str(), 1, 2));
    let again = heartbeat(&mut c, "w1").await.unwrap().unwrap();
    assert_eq!((again.generation, again.rank), (1, 0));
    // the old generation's calls are refused; the dead worker must register again
    let stale = c.workers.rendezvous(rendezvous_req(&c, "w1", &a1, "x:1")).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(stale.message().contains("generation 0 is over"), "{}", stale.message());
    let dead = heartbeat(&mut c, "w2").await.unwrap_err();
    assert_eq!(dead.code(), Code::NotFound);
    assert!(dead.message().contains("register again"), "{}", dead.message());
    let j = job(&mut c, &id).await;
    assert_eq!((j.tasks[0].restarts, j.tasks[0].generation), (1, 1));
    // a transient failure restarts again; a permanent one fails the job with the reason
    let fail = |generation, permanent| pb::ResultReport {
        worker_id: "w1".into(),
        job_id: id.clone(),
        task: 0,
        generation,
        ok: false,
        result_json: String::new(),
        error: "bad data: truncated file".into(),
        permanent,
        session: session(&c.sessions, "w1"),
    };
    c.workers.report_result(fail(1, true)).await.unwrap();
    let j = job(&mut c, &id).await;
    assert_eq!(j.status, "failed");
    assert!(j.reason.contains("bad data: truncated file"), "{}", j.reason);
    keep_alive.abort();
    c.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rendezvous_times_out_naming_the_missing_ranks() {
    let mut c = start(10_000).await;
    register(&mut c, "w1").await;
    register(&mut c, "w2").await;
    let _ = submit(&mut c, 2).await;
    let a1 = assigned(&c, "w1").await;
    let mut req = tonic::Request::new(rendezvous_req(&c, "w1", &a1, "a:1"));
    req.set_timeout(Duration::from_millis(400));
    let e = c.workers.rendezvous(req).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("ranks [1] did not publish"), "{}", e.message());
    assert_eq!(c.handle.rendezvous_rounds(), 1);
    c.handle.shutdown().await.unwrap();
}

/// Free loopback ports for a cluster whose peers must know each other's address up front.
fn free_ports(n: usize) -> Vec<String> {
    let listeners: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect()
}

#[tokio::test]
async fn three_replicas_redirect_to_the_leader_and_a_new_leader_keeps_the_jobs() {
    let addrs = free_ports(3);
    let peers: Vec<(u64, String)> =
        addrs.iter().enumerate().map(|(i, a)| (i as u64 + 1, a.clone())).collect();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = vec![];
    for (i, addr) in addrs.iter().enumerate() {
        let mut cfg = config(addr, dirs[i].path(), 10_000);
        cfg.id = i as u64 + 1;
        cfg.peers = peers.clone();
        nodes.push(Some(serve(cfg).await.unwrap()));
    }
    let leader_of = |nodes: &[Option<CoordinatorHandle>]| {
        nodes.iter().position(|n| n.as_ref().is_some_and(|n| n.status().is_leader))
    };
    let leader = eventually("a leader", || {
        let found = leader_of(&nodes);
        async move { found }
    })
    .await;
    let follower = (leader + 1) % 3;
    // a follower redirects writes to the leader, naming it
    let via_follower = JobServiceClient::new(channel(&addrs[follower]).await);
    let req = pb::SubmitJobRequest {
        request_id: String::new(),
        spec_toml: SPEC.into(),
        workers_per_run: 1,
        max_restarts: 1,
    };
    let e = eventually("a follower that knows the leader", || {
        let mut c = via_follower.clone();
        let req = req.clone();
        async move {
            let e = c.submit_job(req).await.unwrap_err();
            cyclotron_proto::leader_hint(&e).is_some().then_some(e)
        }
    })
    .await;
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(cyclotron_proto::leader_hint(&e).as_deref(), Some(addrs[leader].as_str()));
    let mut via_leader = JobServiceClient::new(channel(&addrs[leader]).await);
    let id = via_leader.submit_job(req.clone()).await.unwrap().into_inner().job_id;
    // the follower serves reads from its applied state
    eventually("the job on the follower", || {
        let mut c = via_follower.clone();
        let id = id.clone();
        async move { c.get_job(pb::GetJobRequest { job_id: id }).await.ok() }
    })
    .await;
    // the leader goes away: another replica takes over with the job and accepts new ones
    nodes[leader].take().unwrap().shutdown().await.unwrap();
    let new_leader = eventually("a new leader", || {
        let found = leader_of(&nodes);
        async move { found }
    })
    .await;
    assert_ne!(new_leader, leader);
    let mut c = JobServiceClient::new(channel(&addrs[new_leader]).await);
    let j = c.get_job(pb::GetJobRequest { job_id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(j.status, "pending");
    let second = eventually("a submission to the new leader", || {
        let mut c = c.clone();
        let req = req.clone();
        async move { c.submit_job(req).await.ok() }
    })
    .await;
    let second = second.into_inner().job_id;
    assert!(second.starts_with("tiny-") && second != id, "{second}");
    for n in nodes.into_iter().flatten() {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn shutdown_ends_open_watch_streams_instead_of_waiting_for_them() {
    let mut c = start(10_000).await;
    let id = submit(&mut c, 1).await;
    let mut watch =
        c.jobs.watch_job(pb::WatchJobRequest { job_id: id, from_index: 0 }).await.unwrap().into_inner();
    let shutdown = tokio::time::timeout(Duration::from_secs(10), c.handle.shutdown());
    shutdown.await.expect("shutdown waited on the open stream").unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap();
    match end {
        Some(Err(e)) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
        other => panic!("the stream should end with UNAVAILABLE, got {other:?}"),
    }
}

/// One rank's step summary as a worker sends it.
fn steps(
    c: &Cluster,
    worker: &str,
    a: &pb::Assignment,
    step: u64,
    step_s: f64,
    comm_s: f64,
) -> pb::ProgressReport {
    let json = serde_json::json!({
        "type": "steps", "stage": 0, "step": step, "steps": 4, "loss": 1.0 / step as f64, "lr": 0.1,
        "step_seconds": step_s, "data_seconds": 0.001, "comm_seconds": comm_s,
    });
    pb::ProgressReport {
        worker_id: worker.into(),
        job_id: a.job_id.clone(),
        task: a.task,
        generation: a.generation,
        progress_json: json.to_string(),
        session: session(&c.sessions, worker),
    }
}

/// `GET path` (raw HTTP/1.1, one request per connection): status line, headers and body.
async fn http(addr: std::net::SocketAddr, request: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![];
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("an answer in 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n")
}

#[tokio::test]
async fn a_slow_rank_is_named_in_status_events_and_the_web_view_and_unnamed_when_it_recovers() {
    let mut c = start(10_000).await;
    let web = c.handle.serve_web("127.0.0.1:0".parse().unwrap()).await.unwrap();
    register(&mut c, "w1").await;
    register(&mut c, "w2").await;
    let id = submit(&mut c, 2).await;
    let a1 = assigned(&c, "w1").await;
    let a2 = assigned(&c, "w2").await;
    // rank 1 (w2) computes 200 ms longer per step; rank 0 waits for it in gradient averaging
    for i in 1..=2 {
        c.workers.report_progress(steps(&c, "w1", &a1, 4 * i, 0.25, 0.2)).await.unwrap();
        c.workers.report_progress(steps(&c, "w2", &a2, 4 * i, 0.25, 0.001)).await.unwrap();
    }
    let j = job(&mut c, &id).await;
    assert!(j.tasks[0].straggler.is_none(), "two summaries are too few to name anyone");
    assert_eq!(j.tasks[0].ranks.len(), 2, "{:?}", j.tasks[0]);
    c.workers.report_progress(steps(&c, "w1", &a1, 12, 0.25, 0.2)).await.unwrap();
    c.workers.report_progress(steps(&c, "w2", &a2, 12, 0.25, 0.001)).await.unwrap();
    let j = job(&mut c, &id).await;
    let s = j.tasks[0].straggler.clone().expect("rank 1 named once every rank sent 3 summaries");
    assert_eq!((s.rank, s.worker.as_str(), s.bound.as_str()), (1, "w2", "compute"));
    assert!(s.summary.contains("rank 1 (w2)") && s.summary.contains("wait 200 ms"), "{}", s.summary);
    let r1 = &j.tasks[0].ranks[1];
    assert_eq!((r1.rank, r1.step), (1, 12));
    assert!(
        (r1.busy_ms - 250.0).abs() < 1.0 && (j.tasks[0].ranks[0].busy_ms - 51.0).abs() < 1.0,
        "{:?}",
        j.tasks[0].ranks
    );
    // the naming is committed: watch streams it, and only once while it holds
    c.workers.report_progress(steps(&c, "w2", &a2, 16, 0.25, 0.001)).await.unwrap();
    let named = |c: &Cluster| {
        let state = c.handle.replica().state().borrow().clone();
        state.jobs[&id]
            .events
            .iter()
            .filter_map(|e| match e {
                crate::state::JobEvent::Straggler { rank, .. } => Some(*rank),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(named(&c), vec![Some(1)]);
    // the web view names it on the cluster and job pages, and draws the live loss
    let (status, _, body) = http(web.addr, &get("/", "")).await;
    assert_eq!(status, 200);
    assert!(
        body.contains(&id) && body.contains("w1") && body.contains("rank 1 (w2) is the straggler"),
        "{body}"
    );
    let (status, _, body) = http(web.addr, &get(&format!("/jobs/{id}"), "")).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#"<tr class=slow><td>1</td><td>w2</td>"#), "{body}");
    assert!(body.contains(r#"<b id="step">16</b>"#) || body.contains(r#"<b id="step">12</b>"#), "{body}");
    assert!(body.contains(r#"data-series="run""#) || body.contains("<polyline"), "a live loss curve: {body}");
    let (status, _, json) = http(web.addr, &get(&format!("/api/jobs/{id}"), "")).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["tasks"][0]["straggler"]["rank"], 1, "{v}");
    assert_eq!(v["tasks"][0]["ranks"].as_array().map(Vec::len), Some(2), "{v}");
    // rank 1 recovers: after a window of even summaries nobody is named, and that is committed too
    for i in 0..crate::live::WINDOW as u64 {
        c.workers.report_progress(steps(&c, "w1", &a1, 20 + 4 * i, 0.05, 0.001)).await.unwrap();
        c.workers.report_progress(steps(&c, "w2", &a2, 20 + 4 * i, 0.05, 0.001)).await.unwrap();
    }
    assert!(job(&mut c, &id).await.tasks[0].straggler.is_none());
    assert_eq!(named(&c), vec![Some(1), None]);
    // nonsense summaries are refused by name, and a stranger's by its session
    let mut bad = steps(&c, "w1", &a1, 99, -1.0, 0.0);
    assert_eq!(c.workers.report_progress(bad.clone()).await.unwrap_err().code(), Code::InvalidArgument);
    bad.progress_json = r#"{"type":"steps","stage":0}"#.into();
    let e = c.workers.report_progress(bad).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("step summary"), "{e:?}");
    let mut stranger = steps(&c, "w1", &a1, 99, 0.1, 0.0);
    stranger.session = "0".repeat(64);
    assert_eq!(c.workers.report_progress(stranger).await.unwrap_err().code(), Code::PermissionDenied);
    // unknown pages are 404s that say so
    let (status, _, body) = http(web.addr, &get("/jobs/nope", "")).await;
    assert!(status == 404 && body.contains("No job nope"), "{status} {body}");
}

#[tokio::test]
async fn the_web_view_streams_updates_live_and_ends_the_stream_with_the_job() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut c = start(10_000).await;
    let web = c.handle.serve_web("127.0.0.1:0".parse().unwrap()).await.unwrap();
    register(&mut c, "w1").await;
    let id = submit(&mut c, 1).await;
    let a = assigned(&c, "w1").await;
    let mut s = tokio::net::TcpStream::connect(web.addr).await.unwrap();
    s.write_all(get(&format!("/jobs/{id}/live"), "").as_bytes()).await.unwrap();
    let mut lines = tokio::io::BufReader::new(s).lines();
    async fn next_data(lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::net::TcpStream>>) -> String {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("an event in 10 s");
            let line = line.unwrap().expect("the stream is open");
            if let Some(d) = line.strip_prefix("data: ") {
                return d.to_string();
            }
        }
    }
    let first: serde_json::Value = serde_json::from_str(&next_data(&mut lines).await).unwrap();
    assert!(first["sections"]["summary"].as_str().unwrap().contains(r#"<b id="step">0</b>"#), "{first}");
    c.workers.report_progress(steps(&c, "w1", &a, 40, 0.1, 0.0)).await.unwrap();
    let moved: serde_json::Value = serde_json::from_str(&next_data(&mut lines).await).unwrap();
    assert!(moved["sections"]["summary"].as_str().unwrap().contains(r#"<b id="step">40</b>"#), "{moved}");
    assert_eq!(c.handle.live().lock().unwrap().len(), 1, "the running task's summaries are kept");
    c.jobs.cancel_job(pb::CancelJobRequest { job_id: id.clone(), reason: "enough".into() }).await.unwrap();
    let live = c.handle.live();
    eventually("the ended job's live summaries to be dropped", || {
        let live = live.clone();
        async move { live.lock().unwrap().is_empty().then_some(()) }
    })
    .await;
    let last: serde_json::Value = serde_json::from_str(&next_data(&mut lines).await).unwrap();
    assert!(last["sections"]["summary"].as_str().unwrap().contains("s-cancelled"), "{last}");
    assert_eq!(next_data(&mut lines).await, "ended", "the stream says the job ended");
}

#[tokio::test]
async fn with_a_token_the_web_view_asks_for_it_and_the_login_link_sets_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config("127.0.0.1:0", dir.path(), 10_000);
    let token =
        cyclotron_proto::auth::Token::new("s3cret-token-of-the-cluster", "cluster token", "test").unwrap();
    config.security.cluster_token = Some(token);
    let handle = serve(config).await.unwrap();
    let web = handle.serve_web("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (status, head, _) = http(web.addr, &get("/", "")).await;
    assert_eq!(status, 401);
    assert!(head.to_ascii_lowercase().contains("www-authenticate: basic"), "{head}");
    assert_eq!(http(web.addr, &get("/", "Authorization: Bearer wrong\r\n")).await.0, 401);
    assert_eq!(
        http(web.addr, &get("/", "Authorization: Bearer s3cret-token-of-the-cluster\r\n")).await.0,
        200
    );
    // basic auth: any user, the token as password (base64 of "me:s3cret-token-of-the-cluster")
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("me:s3cret-token-of-the-cluster");
    assert_eq!(http(web.addr, &get("/", &format!("Authorization: Basic {basic}\r\n"))).await.0, 200);
    assert_eq!(http(web.addr, &get("/login?token=wrong", "")).await.0, 401);
    let (status, head, _) =
        http(web.addr, &get("/login?token=s3cret-token-of-the-cluster&next=//evil.example/", "")).await;
    assert_eq!(status, 303, "{head}");
    assert!(
        head.contains("location: /\r") || head.contains("location: /\n") || head.ends_with("location: /"),
        "no open redirect: {head}"
    );
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();
    assert!(head.contains("HttpOnly") && head.contains("SameSite=Strict"), "{head}");
    assert_eq!(http(web.addr, &get("/", &format!("Cookie: {cookie}\r\n"))).await.0, 200);
    assert_eq!(http(web.addr, &get("/", "Cookie: cyclotron_session=forged\r\n")).await.0, 401);
    // cancelling needs the page's form secret, even when logged in
    let post = format!(
        "POST /jobs/x/cancel HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nCookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 12\r\n\r\nsecret=guess"
    );
    assert_eq!(http(web.addr, &post).await.0, 403);
    // a token-less cluster serves its web view on loopback only
    drop(web);
    handle.shutdown().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let open = serve(config_open(dir.path())).await.unwrap();
    let e = open.serve_web("0.0.0.0:0".parse().unwrap()).await.unwrap_err();
    assert!(e.to_string().contains("loopback only"), "{e}");
    open.shutdown().await.unwrap();
}

fn config_open(dir: &std::path::Path) -> CoordinatorConfig {
    config("127.0.0.1:0", dir, 10_000)
}

fn form_value(html: &str, name: &str) -> String {
    let marker = format!(r#"name={name} value=""#);
    let rest = html.split(&marker).nth(1).unwrap_or_else(|| panic!("no {name} in {html}"));
    rest.split('"').next().unwrap().to_string()
}

fn post(path: &str, fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect::<String>()
    };
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
    let body = body.join("&");
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn the_cluster_page_submits_once_per_form_and_the_job_page_cancels() {
    let mut c = start(10_000).await;
    let web = c.handle.serve_web("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (_, _, page) = http(web.addr, &get("/", "")).await;
    let (secret, request) = (form_value(&page, "secret"), form_value(&page, "request"));
    let fields = [
        ("secret", secret.as_str()),
        ("request", request.as_str()),
        ("spec", SPEC),
        ("workers_per_run", "1"),
    ];
    let (status, head, _) = http(web.addr, &post("/submit", &fields)).await;
    assert_eq!(status, 303, "{head}");
    let location =
        head.lines().find_map(|l| l.strip_prefix("location: ")).expect("a redirect").trim().to_string();
    let id = location.strip_prefix("/jobs/").unwrap().to_string();
    assert!(id.starts_with("tiny-"), "{location}");
    // the same form posted twice (a double click) is one job
    let (_, head, _) = http(web.addr, &post("/submit", &fields)).await;
    assert!(head.contains(&location), "{head}");
    assert_eq!(c.jobs.list_jobs(pb::ListJobsRequest {}).await.unwrap().into_inner().jobs.len(), 1);
    // a bad spec is refused with what is wrong; a forged form is refused
    let bad = [
        ("secret", secret.as_str()),
        ("request", "r2"),
        ("spec", "name = \"x\"\n[model]\narch = \"nope\"\n"),
        ("workers_per_run", "1"),
    ];
    let (status, _, body) = http(web.addr, &post("/submit", &bad)).await;
    assert!(status == 400 && body.contains("not submitted"), "{status} {body}");
    let forged = [("secret", "guess"), ("request", "r3"), ("spec", SPEC), ("workers_per_run", "1")];
    assert_eq!(http(web.addr, &post("/submit", &forged)).await.0, 403);
    assert_eq!(c.jobs.list_jobs(pb::ListJobsRequest {}).await.unwrap().into_inner().jobs.len(), 1);
    // cancel from the job page's form
    let (_, _, page) = http(web.addr, &get(&location, "")).await;
    let secret = form_value(&page, "secret");
    let (status, _, _) = http(web.addr, &post(&format!("{location}/cancel"), &[("secret", &secret)])).await;
    assert_eq!(status, 303);
    assert_eq!(job(&mut c, &id).await.status, "cancelled");
    let (_, _, page) = http(web.addr, &get(&location, "")).await;
    assert!(page.contains("cancelled from the web view") && !page.contains("Cancel job"), "{page}");
}

/// Leases run on the monotonic clock: a wall clock stepped an hour ahead, then two hours back,
/// neither expires a worker that keeps heartbeating nor keeps alive one that went silent.
#[tokio::test]
async fn leases_ignore_a_stepped_wall_clock() {
    use std::sync::atomic::Ordering;
    let mut c = start(1_000).await;
    register(&mut c, "alive").await;
    register(&mut c, "silent").await;
    let beat_for = |c: &Cluster, ms: u64| {
        let (mut w, req) = (c.workers.clone(), beat(&c.sessions, "alive"));
        async move {
            let until = tokio::time::Instant::now() + Duration::from_millis(ms);
            while tokio::time::Instant::now() < until {
                w.heartbeat(req.clone()).await.expect("the live worker's heartbeat");
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    };
    super::WALL_STEP_MS.store(3_600_000, Ordering::Relaxed);
    beat_for(&c, 1_500).await;
    super::WALL_STEP_MS.store(-3_600_000, Ordering::Relaxed);
    beat_for(&c, 1_500).await;
    let state = c.handle.replica().state().borrow().clone();
    assert_eq!(state.workers["alive"].status, crate::state::WorkerStatus::Idle, "{:?}", state.workers);
    assert_eq!(
        state.workers["silent"].status,
        crate::state::WorkerStatus::Dead,
        "a silent worker expires after its lease, whatever the wall clock says: {:?}",
        state.workers
    );
    assert!(heartbeat(&mut c, "alive").await.is_ok());
}
