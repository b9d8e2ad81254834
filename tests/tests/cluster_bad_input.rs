//! Bad input to a real cluster: each case fails (or waits) with a message that names the problem
//! and what to do, within its deadline. Malformed specs, unknown job ids, an unreachable
//! coordinator, a worker speaking another protocol version, and a job asking for more workers
//! than exist (it waits with a visible reason, and `cancel` works).

use std::time::Duration;

use cyclotron_tests::{
    free_ports, new_tag, read, run_tagged, status_json, wait_until, watch_json, Coordinator, Ran, Worker,
};

const SHORT: Duration = Duration::from_secs(60);

fn assert_clear_failure(ran: &Ran, needles: &[&str]) {
    assert_ne!(ran.code, Some(0), "expected a failure; stdout:\n{}", ran.stdout);
    for n in needles {
        assert!(ran.stderr.contains(n), "stderr does not mention {n:?}:\n{}", ran.stderr);
    }
    assert!(!ran.stderr.contains("panicked"), "panic instead of an error:\n{}", ran.stderr);
}

const SPEC: &str = r#"name = "waits"
[data]
source = "fashion_mnist"
limit_train = 512
[model]
arch = "small_cnn"
width = 8
[[stage]]
lr = 0.05
epochs = 1
"#;

#[test]
fn malformed_specs_unknown_jobs_and_other_protocols_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let tag = new_tag();
    let c = Coordinator::start(dir.path(), "coordinator", "127.0.0.1:0", &[], &tag);
    let at = ["--coordinator", c.addr.as_str()];

    // a spec that does not parse: the coordinator's message, as it said it
    std::fs::write(dir.path().join("broken.toml"), "name = \"x\"\n[data\nsource = 1\n").unwrap();
    let ran = run_tagged(&[&["submit", "broken.toml"][..], &at].concat(), dir.path(), SHORT, &tag);
    assert_clear_failure(
        &ran,
        &[
            "broken.toml: the coordinator rejected the spec",
            "cannot parse the job spec",
            "invalid table header",
        ],
    );

    // a spec that parses but is invalid: every problem listed
    let invalid = SPEC
        .replace("arch = \"small_cnn\"", "arch = \"nope\"")
        .replace("epochs = 1", "cycles = 1\ncycle_len = 0");
    std::fs::write(dir.path().join("invalid.toml"), invalid).unwrap();
    let ran = run_tagged(&[&["submit", "invalid.toml"][..], &at].concat(), dir.path(), SHORT, &tag);
    assert_clear_failure(
        &ran,
        &["model.arch: unknown model \"nope\"", "stage 1: cycle_len must be ≥ 1, got 0"],
    );

    // a spec file that is not there
    let ran = run_tagged(&[&["submit", "missing.toml"][..], &at].concat(), dir.path(), SHORT, &tag);
    assert_clear_failure(&ran, &["missing.toml: cannot read the job spec"]);

    // unknown job ids
    for cmd in ["status", "cancel", "watch"] {
        let ran = run_tagged(&[&[cmd, "nope-9"][..], &at].concat(), dir.path(), SHORT, &tag);
        assert_clear_failure(&ran, &["unknown job nope-9"]);
    }

    // a worker speaking another protocol version is refused and exits
    let log = dir.path().join("old-worker.log");
    let mut old = cyclotron_tests::spawn_logged(
        &["worker", "--coordinator", &c.addr, "--id", "old", "--protocol-version", "99"],
        dir.path(),
        &log,
        &tag,
    );
    let code = old.wait(SHORT, "a worker of another protocol version");
    assert_ne!(code, Some(0));
    assert!(
        read(&log).contains("refused this worker") && read(&log).contains("speaks protocol 99"),
        "{}",
        read(&log)
    );
}

#[test]
fn an_unreachable_coordinator_is_named_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let addr = format!("127.0.0.1:{port}");
    let ran =
        run_tagged(&["status", "--coordinator", &addr, "--timeout", "2"], dir.path(), SHORT, &new_tag());
    assert_clear_failure(&ran, &[&addr, "start one with `cyclotron coordinator"]);
    let ran = run_tagged(&["status", "--coordinator", "no-port-here"], dir.path(), SHORT, &new_tag());
    assert_clear_failure(&ran, &["coordinator address \"no-port-here\"", "host:port"]);
}

#[test]
fn a_job_wanting_more_workers_than_exist_waits_visibly_and_cancel_works() {
    let dir = tempfile::tempdir().unwrap();
    let tag = new_tag();
    let c = Coordinator::start(dir.path(), "coordinator", "127.0.0.1:0", &[], &tag);
    let _w = Worker::start(dir.path(), &c.addr, "only", &tag);
    std::fs::write(dir.path().join("job.toml"), SPEC).unwrap();
    let ran = run_tagged(
        &["submit", "job.toml", "--coordinator", &c.addr, "--workers-per-run", "3"],
        dir.path(),
        SHORT,
        &tag,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let job = ran.stdout.trim().to_string();

    let last = std::cell::RefCell::new(serde_json::Value::Null);
    wait_until(
        "the reason the job waits",
        SHORT,
        || {
            *last.borrow_mut() = status_json(&job, &c.addr, dir.path(), &tag);
            last.borrow()["reason"].as_str().is_some_and(|r| r.contains("needs 3 workers, 1 registered"))
        },
        || format!("{}\n{}", last.borrow(), read(&c.log)),
    );
    assert_eq!(last.borrow()["status"], "pending", "{}", last.borrow());
    // the human view shows it too
    let ran = run_tagged(&["status", &job, "--coordinator", &c.addr], dir.path(), SHORT, &tag);
    assert!(
        ran.stdout.contains("pending") && ran.stdout.contains("needs 3 workers, 1 registered"),
        "{}",
        ran.stdout
    );

    let ran = run_tagged(&["cancel", &job, "--coordinator", &c.addr], dir.path(), SHORT, &tag);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stdout.contains("cancelled"), "{}", ran.stdout);
    assert_eq!(status_json(&job, &c.addr, dir.path(), &tag)["status"], "cancelled");
    // watching a cancelled job replays its events and fails with the reason
    let (code, events, stderr) = watch_json(&job, &c.addr, dir.path(), SHORT, &tag);
    assert_ne!(code, Some(0));
    assert!(stderr.contains(&format!("job {job} cancelled")), "{stderr}");
    assert_eq!(events.last().map(|e| e["type"].clone()), Some("ended".into()), "{events:?}");
    // cancelling again says it already ended
    let ran = run_tagged(&["cancel", &job, "--coordinator", &c.addr], dir.path(), SHORT, &tag);
    assert_clear_failure(&ran, &["already ended"]);
}
