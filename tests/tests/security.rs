//! Only the cluster's own members get in: real coordinator, worker and client processes on
//! loopback, each refusal checked for its message and for changing nothing.
//!
//! - no cluster token → refused; a wrong one → refused (users' commands and workers alike), and
//!   a coordinator without a token refuses to listen beyond loopback;
//! - a second `worker --id w1` while w1's lease is live → refused, the first keeps its work;
//! - a forged result report (another worker's id without its session, or for a task the caller
//!   does not hold) → refused, the job unchanged;
//! - a raft message from a non-member, or without the peer credential → refused;
//! - a ring impostor squatting rank 1's address → gets nothing but the handshake from a real
//!   `cyclotron train` rank 0, which names the failure;
//! - TLS: the CLI works with the CA and fails clearly without it; mutual TLS wants a client
//!   certificate.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use cyclotron_proto::auth::{AttachToken, Token};
use cyclotron_proto::v1 as pb;
use cyclotron_tests::{
    fashion_mnist_present, new_tag, read, run_tagged, spawn_logged, tiny_job, wait_until, Coordinator, Proc,
};
use protobuf::Message as _;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

const SHORT: Duration = Duration::from_secs(60);

fn write_token(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn channel(addr: &str, token: Option<&str>) -> InterceptedService<Channel, AttachToken> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    let token = token.map(|t| Token::new(t, "cluster token", "test").unwrap());
    InterceptedService::new(ch, AttachToken::new(token.as_ref()))
}

#[test]
fn without_the_cluster_token_users_and_workers_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let tag = new_tag();
    let token = write_token(dir.path(), "token", "cluster-token-for-this-test-0001");
    let wrong = write_token(dir.path(), "wrong", "some-other-cluster-token-00002");

    // without a token, only loopback: 0.0.0.0 is refused at start with what to do
    let ran = run_tagged(
        &["coordinator", "--listen", "0.0.0.0:0", "--data-dir", dir.path().join("open").to_str().unwrap()],
        dir.path(),
        SHORT,
        &tag,
    );
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr.contains("no cluster token is set") && ran.stderr.contains("--token-file"),
        "{}",
        ran.stderr
    );

    let c = Coordinator::start(dir.path(), "coordinator", "127.0.0.1:0", &["--token-file", &token], &tag);
    let at = ["--coordinator", c.addr.as_str()];
    std::fs::write(dir.path().join("job.toml"), tiny_job("sec", 256, 1)).unwrap();

    let ran =
        run_tagged(&[&["submit", "job.toml", "--timeout", "5"][..], &at].concat(), dir.path(), SHORT, &tag);
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr.contains("missing cluster token") && ran.stderr.contains("--token-file"),
        "{}",
        ran.stderr
    );
    let ran = run_tagged(
        &[&["submit", "job.toml", "--token-file", &wrong][..], &at].concat(),
        dir.path(),
        SHORT,
        &tag,
    );
    assert_ne!(ran.code, Some(0));
    assert!(ran.stderr.contains("wrong cluster token"), "{}", ran.stderr);
    // the token through the environment, wrong: refused too
    let ran = std::process::Command::new(cyclotron_tests::cyclotron_bin())
        .args(["status", "--coordinator", &c.addr])
        .env("CYCLOTRON_TOKEN", "some-other-cluster-token-00002")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!ran.status.success());
    assert!(String::from_utf8_lossy(&ran.stderr).contains("wrong cluster token"));

    // a worker without it is refused and exits, saying why
    let log = dir.path().join("tokenless.log");
    let mut w =
        spawn_logged(&["worker", "--coordinator", &c.addr, "--id", "tokenless"], dir.path(), &log, &tag);
    assert_ne!(w.wait(SHORT, "a worker without the token"), Some(0));
    assert!(
        read(&log).contains("refused this worker") && read(&log).contains("missing cluster token"),
        "{}",
        read(&log)
    );

    // nothing was submitted or registered; with the token, both work
    let ran = run_tagged(
        &[&["status", "--json", "--token-file", &token][..], &at].concat(),
        dir.path(),
        SHORT,
        &tag,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(v["jobs"].as_array().map(Vec::len), Some(0), "{v}");
    let ran = run_tagged(
        &[&["submit", "job.toml", "--token-file", &token][..], &at].concat(),
        dir.path(),
        SHORT,
        &tag,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(read(&c.log).contains("clients and workers must present the cluster token"), "{}", read(&c.log));
}

#[test]
fn a_coordinator_without_credentials_says_it_serves_loopback_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let tag = new_tag();
    let c = Coordinator::start(dir.path(), "coordinator", "127.0.0.1:0", &[], &tag);
    wait_until("the warning", SHORT, || read(&c.log).contains("WITHOUT authentication"), || read(&c.log));
    assert!(read(&c.log).contains("loopback only"), "{}", read(&c.log));
}

#[test]
fn a_second_worker_with_a_live_id_is_refused_and_forged_reports_change_nothing() {
    if !fashion_mnist_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tag = new_tag();
    let c = Coordinator::start(dir.path(), "coordinator", "127.0.0.1:0", &[], &tag);
    let w1_log = dir.path().join("w1.log");
    let _w1 = spawn_logged(&["worker", "--coordinator", &c.addr, "--id", "w1"], dir.path(), &w1_log, &tag);
    wait_until("w1 registered", SHORT, || read(&w1_log).contains("registered"), || read(&w1_log));

    // the same id again: refused with the reason, not a silent takeover
    let twin_log = dir.path().join("twin.log");
    let mut twin =
        spawn_logged(&["worker", "--coordinator", &c.addr, "--id", "w1"], dir.path(), &twin_log, &tag);
    assert_ne!(twin.wait(SHORT, "the second w1"), Some(0));
    let said = read(&twin_log);
    assert!(said.contains("worker id w1 is taken") && said.contains("another --id"), "{said}");

    // w1 trains a job (long enough to forge reports meanwhile)
    std::fs::write(dir.path().join("job.toml"), tiny_job("forged", 8192, 20)).unwrap();
    let ran = run_tagged(&["submit", "job.toml", "--coordinator", &c.addr], dir.path(), SHORT, &tag);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let job = ran.stdout.trim().to_string();
    wait_until("w1 trains", SHORT, || read(&w1_log).contains("training started"), || read(&w1_log));

    let rt = runtime();
    rt.block_on(async {
        let mut client = pb::worker_service_client::WorkerServiceClient::new(channel(&c.addr, None));
        let forged = |worker: &str, session: &str| pb::ResultReport {
            worker_id: worker.into(),
            job_id: job.clone(),
            task: 0,
            generation: 0,
            ok: true,
            result_json: "{\"forged\":true}".into(),
            error: String::new(),
            permanent: false,
            session: session.into(),
        };
        // as w1, without w1's session
        let e = client.report_result(forged("w1", "")).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        // as an impostor registered under its own id, for w1's task
        let reg = pb::RegisterRequest {
            worker_id: "evil".into(),
            data_addr: "127.0.0.1:1".into(),
            protocol_version: cyclotron_proto::PROTOCOL_VERSION,
            gpus: 0,
            session: String::new(),
        };
        let session = client.register(reg).await.unwrap().into_inner().session;
        let e = client.report_result(forged("evil", &session)).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("worker evil is not in the group"), "{}", e.message());
        let e = client
            .rendezvous(pb::RendezvousRequest {
                job_id: job.clone(),
                task: 0,
                generation: 0,
                rank: 0,
                data_addr: "127.0.0.1:1".into(),
                nccl_unique_id: vec![],
                worker_id: "evil".into(),
                session,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    });
    let ran = run_tagged(&["status", &job, "--json", "--coordinator", &c.addr], dir.path(), SHORT, &tag);
    let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(v["status"], "running", "the forged reports changed nothing: {v}");
    assert_eq!(v["tasks"][0]["workers"][0], "w1", "{v}");
    let ran = run_tagged(&["cancel", &job, "--coordinator", &c.addr], dir.path(), SHORT, &tag);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
}

#[test]
fn raft_messages_need_the_peer_credential_and_a_member_sender() {
    let dir = tempfile::tempdir().unwrap();
    let tag = new_tag();
    let token = write_token(dir.path(), "token", "cluster-token-for-this-test-0001");
    let peer = write_token(dir.path(), "peer", "peer-credential-for-this-test-01");
    let c = Coordinator::start(
        dir.path(),
        "coordinator",
        "127.0.0.1:0",
        &["--token-file", &token, "--peer-token-file", &peer],
        &tag,
    );
    let vote = |from: u64| {
        let mut m = cyclotron_coordinator::raft::RaftMessage { from, to: 1, term: 99, ..Default::default() };
        m.set_msg_type(raft_proto::eraftpb::MessageType::MsgRequestVote);
        pb::RaftMessage { message: m.write_to_bytes().unwrap() }
    };
    runtime().block_on(async {
        let raft = |t: Option<&str>| pb::raft_service_client::RaftServiceClient::new(channel(&c.addr, t));
        let e = raft(None).send(vote(2)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().starts_with("missing peer credential"), "{}", e.message());
        // the cluster token is not a peer credential
        let e = raft(Some("cluster-token-for-this-test-0001")).send(vote(2)).await.unwrap_err();
        assert!(e.message().starts_with("wrong peer credential"), "{}", e.message());
        // with the credential, a sender outside the membership is still refused
        let e = raft(Some("peer-credential-for-this-test-01")).send(vote(7)).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e.message().contains("non-members are refused"), "{}", e.message());
    });
    // the single replica still leads in its term: nothing reached raft
    let ran =
        run_tagged(&["status", "--token-file", &token, "--coordinator", &c.addr], dir.path(), SHORT, &tag);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stdout.contains("(leader)"), "{}", ran.stdout);
}

#[test]
fn a_ring_impostor_gets_no_bytes_from_a_real_rank() {
    if !fashion_mnist_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tag = new_tag();
    let ports = cyclotron_tests::free_ports(2);
    let peers = format!("127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]);
    // the impostor squats rank 1's address before rank 0 starts
    let squat = std::net::TcpListener::bind(("127.0.0.1", ports[1])).unwrap();
    std::fs::write(dir.path().join("job.toml"), tiny_job("ring", 256, 1)).unwrap();
    let log = dir.path().join("rank0.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(cyclotron_tests::cyclotron_bin())
        .args(["train", "job.toml", "--out", "out", "--rank", "0", "--world-size", "2", "--peers", &peers])
        .args(["--collective-timeout", "8"])
        .env(cyclotron_tests::TAG_VAR, &tag)
        .env("CYCLOTRON_RING_SECRET", "5eed5eed5eed5eed5eed5eed5eed5eed")
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let mut rank0 = Proc(Some(child));
    squat.set_nonblocking(false).unwrap();
    // rank 0 connects to "rank 1" (us) and says HELLO
    let (mut as_next, _) = squat.accept().unwrap();
    as_next.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut hello = [0u8; 40];
    as_next.read_exact(&mut hello).unwrap();
    // we connect to rank 0 as its previous rank, as rank 1 would, and get its answer
    let mut as_prev = std::net::TcpStream::connect(("127.0.0.1", ports[0])).unwrap_or_else(|_| {
        // rank 0 may not listen yet: retry within the deadline
        let started = std::time::Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", ports[0])) {
                break s;
            }
            assert!(started.elapsed() < SHORT, "rank 0 never listened");
        }
    });
    as_prev.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut ours = hello;
    ours[8..12].copy_from_slice(&1u32.to_le_bytes()); // "rank 1"
    ours[24..40].copy_from_slice(&[7; 16]);
    as_prev.write_all(&ours).unwrap();
    let mut answer = [0u8; 72];
    as_prev.read_exact(&mut answer).unwrap();
    // without the secret, the proofs we owe are guesses
    let mut reply = ours.to_vec();
    reply.extend_from_slice(&[0xab; 32]);
    as_next.write_all(&reply).unwrap();
    let _ = as_prev.write_all(&[0xcd; 32]);
    for (what, s) in [("next", &mut as_next), ("prev", &mut as_prev)] {
        let mut more = vec![];
        let _ = s.read_to_end(&mut more);
        assert!(
            more.is_empty(),
            "rank 0 sent {} bytes to the impostor (as {what}) after the handshake",
            more.len()
        );
    }
    let code = rank0.wait(SHORT, "rank 0");
    assert_ne!(code, Some(0));
    let said = read(&log);
    assert!(said.contains("cannot prove this generation's ring secret"), "{said}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn certificates(dir: &Path) -> [String; 5] {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "cyclotron test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issue = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca_cert, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = issue(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client, client_key) = issue(vec!["cyclotron-client".into()]);
    let files = [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server),
        ("server.key", server_key),
        ("client.pem", client),
        ("client.key", client_key),
    ];
    files.map(|(name, text)| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    })
}

#[test]
fn with_tls_the_cli_works_with_the_ca_and_fails_clearly_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let tag = new_tag();
    let [ca, cert, key, client, client_key] = certificates(dir.path());
    let c =
        Coordinator::start(dir.path(), "tls", "127.0.0.1:0", &["--tls-cert", &cert, "--tls-key", &key], &tag);
    let at = ["--coordinator", c.addr.as_str(), "--timeout", "5"];
    let ran = run_tagged(&[&["status", "--tls-ca", &ca][..], &at].concat(), dir.path(), SHORT, &tag);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stdout.contains("(leader)"), "{}", ran.stdout);
    let ran = run_tagged(&[&["status"][..], &at].concat(), dir.path(), SHORT, &tag);
    assert_ne!(ran.code, Some(0), "{}", ran.stdout);
    assert!(ran.stderr.contains("--tls-ca"), "{}", ran.stderr);
    // a worker over TLS registers
    let log = dir.path().join("w.log");
    let _w = spawn_logged(
        &["worker", "--coordinator", &c.addr, "--id", "tw", "--tls-ca", &ca],
        dir.path(),
        &log,
        &tag,
    );
    wait_until("the TLS worker registered", SHORT, || read(&log).contains("registered"), || read(&log));

    // mutual TLS: a client without a certificate is refused, one with it works
    let m = Coordinator::start(
        dir.path(),
        "mtls",
        "127.0.0.1:0",
        &["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca],
        &tag,
    );
    let at = ["--coordinator", m.addr.as_str(), "--timeout", "5", "--tls-ca", ca.as_str()];
    let ran = run_tagged(&[&["status"][..], &at].concat(), dir.path(), SHORT, &tag);
    assert_ne!(ran.code, Some(0), "{}", ran.stdout);
    assert!(ran.stderr.contains("--tls-cert"), "{}", ran.stderr);
    let ran = run_tagged(
        &[&["status", "--tls-cert", &client, "--tls-key", &client_key][..], &at].concat(),
        dir.path(),
        SHORT,
        &tag,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
}
