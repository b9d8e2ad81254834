//! Security of the services on real tonic servers: credentials on every service, one live
//! session per worker id, reports and rendezvous only from the group's members, raft messages
//! only from members. Each refusal is checked for its code and for naming what is wrong, and for
//! changing nothing.

use std::time::Duration;

use cyclotron_proto::auth::{AttachToken, Token};
use cyclotron_proto::v1 as pb;
use pb::job_service_client::JobServiceClient;
use pb::raft_service_client::RaftServiceClient;
use pb::worker_service_client::WorkerServiceClient;
use protobuf::Message as _;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

use super::*;

const SPEC: &str = "name = \"sec\"\n[data]\nsource = \"fashion_mnist\"\n[model]\narch = \"small_cnn\"\n[[stage]]\nlr = 0.1\nepochs = 1\n";

fn token(t: &str) -> Token {
    Token::new(t, "cluster token", "test").unwrap()
}

struct Secured {
    handle: CoordinatorHandle,
    _dir: tempfile::TempDir,
}

async fn start(security: Security, lease_ms: u64) -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    config.lease_ms = lease_ms;
    config.schedule_every = Duration::from_millis(30);
    config.security = security;
    let handle = serve(config).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !handle.status().is_leader {
        assert!(std::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Secured { handle, _dir: dir }
}

async fn channel(addr: std::net::SocketAddr, t: Option<&Token>) -> InterceptedService<Channel, AttachToken> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    InterceptedService::new(ch, AttachToken::new(t))
}

fn register_req(id: &str, session: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        worker_id: id.into(),
        data_addr: "127.0.0.1:1".into(),
        protocol_version: cyclotron_proto::PROTOCOL_VERSION,
        gpus: 0,
        session: session.into(),
    }
}

#[tokio::test]
async fn every_service_demands_its_credential_and_names_the_one_missing_or_wrong() {
    let (cluster, peer) = (token("cluster-token-0123456789"), token("peer-credential-0123456789"));
    let s = start(
        Security {
            cluster_token: Some(cluster.clone()),
            peer_token: Some(peer.clone()),
            ..Default::default()
        },
        10_000,
    )
    .await;
    let addr = s.handle.addr();
    let submit = pb::SubmitJobRequest {
        spec_toml: SPEC.into(),
        workers_per_run: 1,
        max_restarts: 0,
        request_id: String::new(),
    };

    let e = JobServiceClient::new(channel(addr, None).await).submit_job(submit.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().starts_with("missing cluster token") && e.message().contains("--token-file"),
        "{}",
        e.message()
    );
    let wrong = token("not-the-cluster-token-000");
    let e = JobServiceClient::new(channel(addr, Some(&wrong)).await)
        .submit_job(submit.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().starts_with("wrong cluster token"), "{}", e.message());
    let e = WorkerServiceClient::new(channel(addr, None).await)
        .register(register_req("w1", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // nothing changed
    assert!(s.handle.replica().state().borrow().jobs.is_empty());
    assert!(s.handle.replica().state().borrow().workers.is_empty());

    // the raft service takes the peer credential, not the cluster token
    let msg = pb::RaftMessage { message: raft::eraftpb::Message::default().write_to_bytes().unwrap() };
    let e = RaftServiceClient::new(channel(addr, Some(&cluster)).await).send(msg.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().starts_with("wrong peer credential"), "{}", e.message());

    // with the right token it works
    let id = JobServiceClient::new(channel(addr, Some(&cluster)).await)
        .submit_job(submit)
        .await
        .unwrap()
        .into_inner()
        .job_id;
    assert!(id.starts_with("sec-"), "{id}");
    s.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_raft_message_from_a_non_member_is_refused() {
    let peer = token("peer-credential-0123456789");
    let s = start(
        Security {
            cluster_token: Some(token("cluster-token-0123456789")),
            peer_token: Some(peer.clone()),
            ..Default::default()
        },
        10_000,
    )
    .await;
    let mut raft = RaftServiceClient::new(channel(s.handle.addr(), Some(&peer)).await);
    let before = s.handle.status();
    // a vote request from replica 7 (this cluster has only replica 1) for a higher term
    let mut m = raft::eraftpb::Message { from: 7, to: 1, term: before.term + 5, ..Default::default() };
    m.set_msg_type(raft::eraftpb::MessageType::MsgRequestVote);
    let e = raft.send(pb::RaftMessage { message: m.write_to_bytes().unwrap() }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("from 7") && e.message().contains("non-members are refused"),
        "{}",
        e.message()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = s.handle.status();
    assert!(after.is_leader && after.term == before.term, "the vote request changed nothing: {after:?}");
    let e = raft.send(pb::RaftMessage { message: vec![0xff; 9] }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    s.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_second_worker_with_a_live_id_is_refused_and_reports_need_the_session_and_membership() {
    let s = start(Security::default(), 10_000).await;
    let ch = channel(s.handle.addr(), None).await;
    let mut w = WorkerServiceClient::new(ch.clone());
    let first = w.register(register_req("w1", "")).await.unwrap().into_inner().session;
    // a second process with the same id and no (or a wrong) session: refused, clearly
    for session in ["", "0000"] {
        let e = w.register(register_req("w1", session)).await.unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists);
        assert!(
            e.message().contains("worker id w1 is taken") && e.message().contains("another --id"),
            "{}",
            e.message()
        );
    }
    // the same worker (it holds the session) may register again, and gets a new session
    let second = w.register(register_req("w1", &first)).await.unwrap().into_inner().session;
    assert_ne!(first, second);
    let beat = |session: &str| pb::HeartbeatRequest { worker_id: "w1".into(), session: session.into() };
    let e = w.heartbeat(beat(&first)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "the old session is over: {e:?}");
    w.heartbeat(beat(&second)).await.unwrap();

    // w1 runs the job; w2 (registered, with its own session) forges w1's result
    let third = w.register(register_req("w2", "")).await.unwrap().into_inner().session;
    let id = JobServiceClient::new(ch.clone())
        .submit_job(pb::SubmitJobRequest {
            spec_toml: SPEC.into(),
            workers_per_run: 1,
            max_restarts: 0,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let (holder, holder_session, other, other_session) = loop {
        if let Some(a) = w.heartbeat(beat(&second)).await.unwrap().into_inner().assignment {
            assert_eq!(a.job_id, id);
            break ("w1", second.clone(), "w2", third.clone());
        }
        let b = pb::HeartbeatRequest { worker_id: "w2".into(), session: third.clone() };
        if w.heartbeat(b).await.unwrap().into_inner().assignment.is_some() {
            break ("w2", third.clone(), "w1", second.clone());
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    let result = |worker: &str, session: &str| pb::ResultReport {
        worker_id: worker.into(),
        job_id: id.clone(),
        task: 0,
        generation: 0,
        ok: true,
        result_json: "{\"forged\":true}".into(),
        error: String::new(),
        permanent: false,
        session: session.into(),
    };
    // claiming to be the holder without its session
    let e = w.report_result(result(holder, &other_session)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // as itself, for a task it does not hold
    let e = w.report_result(result(other, &other_session)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&format!("worker {other} is not in the group")), "{}", e.message());
    // and the rendezvous of a rank it does not hold
    let rdv = pb::RendezvousRequest {
        job_id: id.clone(),
        task: 0,
        generation: 0,
        rank: 0,
        data_addr: "10.6.6.6:1".into(),
        nccl_unique_id: vec![],
        worker_id: other.into(),
        session: other_session.clone(),
    };
    let e = w.rendezvous(rdv).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let state = s.handle.replica().state().borrow().clone();
    assert_eq!(state.jobs[&id].status.name(), "running", "the forged reports changed nothing");
    // the holder's own report completes it
    w.report_result(result(holder, &holder_session)).await.unwrap();
    assert_eq!(s.handle.replica().state().borrow().jobs[&id].status.name(), "succeeded");
    s.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_requests_are_refused_before_anything_is_stored() {
    let s = start(Security::default(), 10_000).await;
    let ch = channel(s.handle.addr(), None).await;
    let mut w = WorkerServiceClient::new(ch.clone());
    let e = w.register(register_req(&"w".repeat(300), "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("worker_id is 300 bytes; at most 256"), "{}", e.message());
    let e = w.register(register_req("w/../x", "")).await.unwrap_err();
    assert!(e.message().contains("must be 1 to 256 letters"), "{}", e.message());
    // a message over the gRPC limit is refused by tonic before it is decoded
    let huge = pb::SubmitJobRequest {
        spec_toml: "#".repeat(2 << 20),
        workers_per_run: 1,
        max_restarts: 0,
        request_id: String::new(),
    };
    let e = JobServiceClient::new(ch.clone()).submit_job(huge).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    // a spec under the gRPC limit but over the spec limit: named
    let big = pb::SubmitJobRequest {
        spec_toml: format!("{SPEC}#{}", "x".repeat(70_000)),
        workers_per_run: 1,
        max_restarts: 0,
        request_id: String::new(),
    };
    let e = JobServiceClient::new(ch).submit_job(big).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("at most 65536 are accepted"), "{}", e.message());
    // a worker report whose event is larger than any event: named, before the session is looked at
    let report = pb::ProgressReport {
        job_id: "j".into(),
        worker_id: "w".into(),
        progress_json: "x".repeat(cyclotron_proto::limits::MAX_PROGRESS_JSON + 1),
        ..Default::default()
    };
    let e = w.report_progress(report).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let want = format!(
        "progress_json is {} bytes; at most {}",
        cyclotron_proto::limits::MAX_PROGRESS_JSON + 1,
        cyclotron_proto::limits::MAX_PROGRESS_JSON
    );
    assert!(e.message().contains(&want), "{}", e.message());
    let result = pb::ResultReport {
        job_id: "j".into(),
        worker_id: "w".into(),
        ok: true,
        result_json: "x".repeat(cyclotron_proto::limits::MAX_RESULT_JSON + 1),
        ..Default::default()
    };
    let e = w.report_result(result).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("result_json is "), "{}", e.message());
    assert!(s.handle.replica().state().borrow().workers.is_empty());
    assert!(s.handle.replica().state().borrow().jobs.is_empty());
    s.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn workers_run_the_validated_spec_not_the_submitted_text() {
    let s = start(Security::default(), 10_000).await;
    let ch = channel(s.handle.addr(), None).await;
    let mut w = WorkerServiceClient::new(ch.clone());
    let session = w.register(register_req("w1", "")).await.unwrap().into_inner().session;
    // a peer could forward a SubmitJob whose text differs from the spec it validated
    let spec = cyclotron_core::spec::JobSpec::from_toml_str(SPEC, "t").unwrap();
    let cmd = Command::SubmitJob {
        request_id: String::new(),
        job: "sec-1".into(),
        spec: Box::new(spec.clone()),
        spec_toml: SPEC.replace("fashion_mnist\"", "fashion_mnist\"\npath = \"/etc\""),
        workers_per_run: 1,
        max_restarts: 0,
        now_ms: 0,
    };
    assert_eq!(s.handle.replica().propose(cmd, Duration::from_secs(5)).await.unwrap(), Outcome::Applied);
    let a = loop {
        let b = pb::HeartbeatRequest { worker_id: "w1".into(), session: session.clone() };
        if let Some(a) = w.heartbeat(b).await.unwrap().into_inner().assignment {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    assert!(!a.spec_toml.contains("/etc"), "{}", a.spec_toml);
    let sent = cyclotron_core::spec::JobSpec::from_toml_str(&a.spec_toml, "sent").unwrap();
    assert_eq!(sent, spec);
    s.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_turns_serving_once_a_leader_is_known() {
    let s = start(
        Security { cluster_token: Some(token("cluster-token-0123456789")), ..Default::default() },
        10_000,
    )
    .await;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let mut h = HealthClient::new(channel(s.handle.addr(), None).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // no credentials needed: it says only whether a leader is known
        let r = h.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
        if r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never serving: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r =
        h.check(HealthCheckRequest { service: "cyclotron.v1.JobService".into() }).await.unwrap().into_inner();
    assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    s.handle.shutdown().await.unwrap();
}
