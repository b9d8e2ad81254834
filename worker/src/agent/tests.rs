//! The agent against a scripted coordinator: a real gRPC WorkerService on 127.0.0.1:0 whose
//! answers the test controls, and a shell script standing in for `cyclotron train` (it prints an
//! event, records its pid and arguments, then either writes results.json or hangs).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cyclotron_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use cyclotron_proto::v1::*;
use tonic::{Request, Response, Status};

use super::*;

#[derive(Default)]
struct Fake {
    registrations: u32,
    protocol_seen: u32,
    refuse_protocol: bool,
    /// Answer the next heartbeat with NOT_FOUND (the lease expired).
    forget_worker: bool,
    assignment: Option<Assignment>,
    progress: Vec<String>,
    results: Vec<ResultReport>,
}

#[derive(Clone, Default)]
struct FakeCoordinator(Arc<Mutex<Fake>>);

#[tonic::async_trait]
impl WorkerService for FakeCoordinator {
    async fn register(&self, r: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let mut f = self.0.lock().unwrap();
        f.protocol_seen = r.get_ref().protocol_version;
        if f.refuse_protocol {
            return Err(Status::failed_precondition("worker speaks protocol 1; this coordinator speaks 2"));
        }
        f.registrations += 1;
        Ok(Response::new(RegisterResponse { lease_ms: 900, session: "s".repeat(64) }))
    }
    async fn heartbeat(&self, _: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let mut f = self.0.lock().unwrap();
        if std::mem::take(&mut f.forget_worker) {
            return Err(Status::not_found("unknown worker w-1"));
        }
        Ok(Response::new(HeartbeatResponse { lease_ms: 900, assignment: f.assignment.clone() }))
    }
    async fn report_progress(&self, r: Request<ProgressReport>) -> Result<Response<Ack>, Status> {
        self.0.lock().unwrap().progress.push(r.into_inner().progress_json);
        Ok(Response::new(Ack {}))
    }
    async fn report_result(&self, r: Request<ResultReport>) -> Result<Response<Ack>, Status> {
        self.0.lock().unwrap().results.push(r.into_inner());
        Ok(Response::new(Ack {}))
    }
    async fn rendezvous(
        &self,
        _: Request<RendezvousRequest>,
    ) -> Result<Response<RendezvousResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

async fn serve(fake: FakeCoordinator) -> String {
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(fake))
            .serve_with_incoming(incoming),
    );
    addr.to_string()
}

/// A stand-in for `cyclotron train`: records its arguments and pid in `dir`, prints an event,
/// then hangs when the spec says so, else writes results.json into `--out`.
fn fake_train(dir: &Path) -> PathBuf {
    let script = format!(
        r#"#!/bin/sh
echo "$@" > {dir}/args
echo $$ > {dir}/pid
out=""; spec=""; prev=""
for a in "$@"; do
  [ "$prev" = "--out" ] && out="$a"
  [ "$prev" = "train" ] && spec="$a"
  prev="$a"
done
echo '{{"type":"epoch","stage":0,"epoch":1,"step":5,"train_loss":1.0,"valid_loss":1.1,"valid_accuracy":0.5,"seconds":0.1}}'
if grep -q hang "$spec"; then sleep 300; fi
mkdir -p "$out" && echo '{{"job":"fake"}}' > "$out/results.json"
"#,
        dir = dir.display()
    );
    let path = dir.join("fake-train.sh");
    std::fs::write(&path, script).unwrap();
    let mut perm = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&path, perm).unwrap();
    path
}

/// A valid spec named `name` (the fake child hangs when the spec holds "hang").
fn spec(name: &str) -> String {
    format!(
        "name = \"{name}\"\n[data]\nsource = \"fashion_mnist\"\n[model]\narch = \"small_cnn\"\n[[stage]]\nlr = 0.1\nepochs = 1\n"
    )
}

fn assignment(name: &str, generation: u64) -> Assignment {
    Assignment {
        job_id: "j-1".into(),
        task: 0,
        generation,
        rank: 0,
        world_size: 1,
        spec_toml: spec(name),
        order: None,
        resume_from: String::new(),
    }
}

async fn until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z ") && !s.contains(") X "))
        .unwrap_or(false)
}

fn config(addr: &str, dir: &Path) -> AgentConfig {
    let mut cfg = AgentConfig::new(vec![addr.into()], "w-1".into(), fake_train(dir));
    cfg.rpc_timeout = Duration::from_secs(2);
    cfg.stop_grace = Duration::from_secs(2);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_runs_the_child_and_reports_progress_then_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeCoordinator::default();
    fake.0.lock().unwrap().assignment = Some(assignment("ok", 0));
    let addr = serve(fake.clone()).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run_agent(config(&addr, dir.path()), async {
        let _ = stopped.await;
    }));
    let f = fake.0.clone();
    until("the result", Duration::from_secs(20), || !f.lock().unwrap().results.is_empty()).await;
    {
        let f = f.lock().unwrap();
        assert_eq!(f.protocol_seen, cyclotron_proto::PROTOCOL_VERSION);
        assert_eq!(f.results.len(), 1);
        let r = &f.results[0];
        assert!(r.ok, "{r:?}");
        assert_eq!(r.result_json.trim(), r#"{"job":"fake"}"#);
        assert_eq!((r.job_id.as_str(), r.generation, r.worker_id.as_str()), ("j-1", 0, "w-1"));
        assert_eq!(f.progress.len(), 1, "{:?}", f.progress);
        assert!(f.progress[0].contains(r#""type":"epoch""#));
    }
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    assert!(
        args.contains("train ") && args.contains("--run j-1 --resume --one-run --events-jsonl -"),
        "{args}"
    );
    // the same assignment in later heartbeats does not start the run again
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(fake.0.lock().unwrap().results.len(), 1);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), agent).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_assignment_kills_the_child_and_a_forgotten_worker_registers_again() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeCoordinator::default();
    fake.0.lock().unwrap().assignment = Some(assignment("hang", 0));
    let addr = serve(fake.clone()).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run_agent(config(&addr, dir.path()), async {
        let _ = stopped.await;
    }));
    let pid_file = dir.path().join("pid");
    let f = fake.0.clone();
    until("the child to start", Duration::from_secs(20), || {
        pid_file.exists() && !f.lock().unwrap().progress.is_empty()
    })
    .await;
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(alive(pid));
    // the coordinator gives the run away: the child goes, no result is reported
    fake.0.lock().unwrap().assignment = None;
    until("the child to be stopped", Duration::from_secs(10), || !alive(pid)).await;
    assert!(fake.0.lock().unwrap().results.is_empty(), "a stopped run reports nothing");

    // a new generation starts a new child; NOT_FOUND to a heartbeat stops it and re-registers
    std::fs::remove_file(&pid_file).unwrap();
    fake.0.lock().unwrap().assignment = Some(assignment("hang", 1));
    until("the new child", Duration::from_secs(20), || pid_file.exists()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid2: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert_ne!(pid, pid2);
    {
        let mut f = fake.0.lock().unwrap();
        f.forget_worker = true;
        f.assignment = None;
    }
    until("registering again", Duration::from_secs(10), || f.lock().unwrap().registrations == 2).await;
    until("the second child to be stopped", Duration::from_secs(10), || !alive(pid2)).await;

    // shutdown with a run in progress stops the child too
    std::fs::remove_file(&pid_file).unwrap();
    fake.0.lock().unwrap().assignment = Some(assignment("hang", 2));
    until("the third child", Duration::from_secs(20), || pid_file.exists()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid3: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), agent).await.unwrap().unwrap().unwrap();
    until("the third child to be stopped", Duration::from_secs(5), || !alive(pid3)).await;
}

/// Run the agent against `fake` with `cfg` until it reported one result, and return it.
async fn first_result(fake: &FakeCoordinator, cfg: AgentConfig) -> ResultReport {
    let addr = serve(fake.clone()).await;
    let mut cfg = cfg;
    cfg.coordinators = vec![addr];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run_agent(cfg, async {
        let _ = stopped.await;
    }));
    let f = fake.0.clone();
    until("a result", Duration::from_secs(30), || !f.lock().unwrap().results.is_empty()).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), agent).await.unwrap().unwrap().unwrap();
    let r = fake.0.lock().unwrap().results[0].clone();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_reaching_outside_the_sandbox_fails_for_good_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeCoordinator::default();
    let mut a = assignment("ok", 0);
    a.spec_toml =
        a.spec_toml.replace("[data]\n", "output = \"file:///etc/cyclotron\"\n[data]\npath = \"/root\"\n");
    fake.0.lock().unwrap().assignment = Some(a);
    let r = first_result(&fake, config("", dir.path())).await;
    assert!(!r.ok && r.permanent, "{r:?}");
    assert!(
        r.error.contains("output \"/etc/cyclotron\"") && r.error.contains("--output-root"),
        "{}",
        r.error
    );
    assert!(r.error.contains("data.path \"/root\"") && r.error.contains("--data-root"), "{}", r.error);
    assert!(!dir.path().join("pid").exists(), "the child never started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_folder_cannot_be_made_is_reported_failed_not_left_running() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeCoordinator::default();
    fake.0.lock().unwrap().assignment = Some(assignment("ok", 0));
    let mut cfg = config("", dir.path());
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, "x").unwrap();
    cfg.work_dir = Some(blocker);
    let r = first_result(&fake, cfg).await;
    assert!(!r.ok && !r.permanent, "{r:?}");
    assert!(r.error.contains("the worker cannot start this run: creating"), "{}", r.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_child_is_stopped_and_reported_as_a_transient_failure() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeCoordinator::default();
    fake.0.lock().unwrap().assignment = Some(assignment("hang", 0));
    let mut cfg = config("", dir.path());
    cfg.stall_timeout = Duration::from_millis(1500);
    let r = first_result(&fake, cfg).await;
    assert!(!r.ok && !r.permanent, "restarted like a crash: {r:?}");
    assert!(r.error.contains("training stuck: no event and no CPU time for 1.5s"), "{}", r.error);
    let pid: u32 = std::fs::read_to_string(dir.path().join("pid")).unwrap().trim().parse().unwrap();
    assert!(!alive(pid), "the stuck child was stopped");
}

#[tokio::test]
async fn another_protocol_version_is_refused_with_the_coordinators_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeCoordinator::default();
    fake.0.lock().unwrap().refuse_protocol = true;
    let addr = serve(fake.clone()).await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        run_agent(config(&addr, dir.path()), std::future::pending()),
    )
    .await
    .unwrap();
    let e = r.unwrap_err().to_string();
    assert!(e.contains("refused this worker") && e.contains("protocol"), "{e}");
}

#[tokio::test]
async fn an_unreachable_coordinator_is_named_with_what_to_do() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let c = Coordinators::new(
        &[format!("127.0.0.1:{port}")],
        Deadlines::new(Duration::from_millis(500), Duration::from_secs(1)),
    )
    .unwrap();
    let started = Instant::now();
    let r = c
        .call(|ch| async move {
            WorkerServiceClient::new(ch)
                .heartbeat(HeartbeatRequest { worker_id: "w".into(), session: String::new() })
                .await
        })
        .await;
    assert!(started.elapsed() < Duration::from_secs(5), "the call outlived its deadline");
    let e = r.unwrap_err().to_string();
    assert!(e.contains(&format!("127.0.0.1:{port}")) && e.contains("cyclotron coordinator"), "{e}");
}

#[tokio::test]
async fn a_follower_redirects_to_the_leader() {
    #[derive(Clone)]
    struct Follower(String);
    #[tonic::async_trait]
    impl WorkerService for Follower {
        async fn register(&self, _: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
            let mut s = Status::unavailable("not the leader");
            s.metadata_mut().insert(client::LEADER_METADATA, self.0.parse().unwrap());
            Err(s)
        }
        async fn heartbeat(
            &self,
            _: Request<HeartbeatRequest>,
        ) -> Result<Response<HeartbeatResponse>, Status> {
            Err(Status::unavailable("election in progress"))
        }
        async fn report_progress(&self, _: Request<ProgressReport>) -> Result<Response<Ack>, Status> {
            Err(Status::unavailable(""))
        }
        async fn report_result(&self, _: Request<ResultReport>) -> Result<Response<Ack>, Status> {
            Err(Status::unavailable(""))
        }
        async fn rendezvous(
            &self,
            _: Request<RendezvousRequest>,
        ) -> Result<Response<RendezvousResponse>, Status> {
            Err(Status::unavailable(""))
        }
    }
    let leader = FakeCoordinator::default();
    let leader_addr = serve(leader.clone()).await;
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let follower_addr = incoming.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(Follower(leader_addr.clone())))
            .serve_with_incoming(incoming),
    );
    // the leader is not in the list: it is learnt from the redirect
    let c =
        Coordinators::new(&[follower_addr], Deadlines::new(Duration::from_secs(2), Duration::from_secs(5)))
            .unwrap();
    let msg = RegisterRequest {
        worker_id: "w".into(),
        data_addr: "127.0.0.1:0".into(),
        protocol_version: cyclotron_proto::PROTOCOL_VERSION,
        gpus: 0,
        session: String::new(),
    };
    let (_, answered) = c
        .call_as(c.current(), |ch| {
            let m = msg.clone();
            async move { WorkerServiceClient::new(ch).register(m).await }
        })
        .await
        .unwrap();
    assert_eq!(client::host(&answered), leader_addr);
    assert_eq!(leader.0.lock().unwrap().registrations, 1);
    assert_eq!(client::host(&c.current()), leader_addr, "later calls go to the leader first");
}

#[test]
fn data_addresses_are_checked() {
    assert_eq!(split_addr("127.0.0.1:0").unwrap(), ("127.0.0.1".into(), 0));
    assert!(split_addr("127.0.0.1").unwrap_err().to_string().contains("host:port"));
    assert!(split_addr(":7").unwrap_err().to_string().contains("host is empty"));
    assert!(split_addr("h:x").unwrap_err().to_string().contains("port"));
    assert!(default_worker_id().ends_with(&std::process::id().to_string()));
}
