//! Coordinator failover with real processes: three coordinator replicas (raft) and two workers;
//! a job is submitted, the raft leader is killed with SIGKILL mid-job, a new leader is elected,
//! and the job finishes with its results. Nothing committed is lost: every event a client had
//! seen before the kill is still in the job's log, at the same index, afterwards; and `watch`
//! rides through the failover.

use std::time::Duration;

use cyclotron_tests::{
    fashion_mnist_present, free_ports, new_tag, read, run_tagged, signal, spawn_logged, status_json,
    tiny_job, wait_until, watch_json, Coordinator, Worker,
};

fn events_of(text: &str) -> Vec<serde_json::Value> {
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn killing_the_raft_leader_mid_job_loses_nothing_and_the_job_finishes() {
    if !fashion_mnist_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tag = new_tag();
    let addrs: Vec<String> = free_ports(3).iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let peers = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
    let mut coordinators: Vec<Coordinator> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let id = (i + 1).to_string();
            Coordinator::start(dir.path(), &format!("c{id}"), a, &["--id", &id, "--peers", &peers], &tag)
        })
        .collect();
    let all = addrs.join(",");
    let logs = |ws: &[Worker], cs: &[Coordinator]| -> String {
        let mut s = String::new();
        for c in cs {
            s += &format!("--- coordinator {}\n{}\n", c.addr, read(&c.log));
        }
        for w in ws {
            s += &format!("--- {}\n{}\n", w.id, read(&w.log));
        }
        s
    };
    let workers: Vec<Worker> =
        (0..2).map(|i| Worker::start(dir.path(), &all, &format!("w{i}"), &tag)).collect();

    std::fs::write(dir.path().join("job.toml"), tiny_job("failover", 16384, 10)).unwrap();
    let ran = run_tagged(
        &["submit", "job.toml", "--coordinator", &all, "--workers-per-run", "2"],
        dir.path(),
        Duration::from_secs(60),
        &tag,
    );
    assert_eq!(ran.code, Some(0), "submit failed:\n{}\n{}", ran.stderr, logs(&workers, &coordinators));
    let job = ran.stdout.trim().to_string();

    // the leader, as `status --json` reports it
    let status = status_json(&job, &all, dir.path(), &tag);
    let leader =
        status["cluster"]["leader"].as_str().unwrap_or_else(|| panic!("no leader in {status}")).to_string();
    assert!(addrs.contains(&leader), "{leader} is not one of {addrs:?}");
    let roles: Vec<&str> = status["cluster"]["coordinators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles.iter().filter(|r| **r == "follower").count(), 2, "{status}");

    // a watcher on the leader first: it must ride through the failover
    let watch_log = dir.path().join("watch.out");
    let others: Vec<&String> = addrs.iter().filter(|a| **a != leader).collect();
    let order = format!("{leader},{},{}", others[0], others[1]);
    let mut watcher =
        spawn_logged(&["watch", &job, "--json", "--coordinator", &order], dir.path(), &watch_log, &tag);

    wait_until(
        "two epochs before the kill",
        Duration::from_secs(180),
        || events_of(&read(&watch_log)).iter().filter(|e| e["type"] == "epoch").count() >= 2,
        || format!("{}\n{}", read(&watch_log), logs(&workers, &coordinators)),
    );
    let seen_before = events_of(&read(&watch_log));
    assert!(
        !seen_before.iter().any(|e| e["type"] == "ended"),
        "the job ended before the kill: {seen_before:?}"
    );
    let leader_at = coordinators.iter().position(|c| c.addr == leader).expect("leader process");
    signal(coordinators[leader_at].proc.pid(), "KILL");
    coordinators[leader_at].proc.wait(Duration::from_secs(10), "the killed leader");
    let survivors: Vec<String> = others.iter().map(|a| a.to_string()).collect();
    let survivors = survivors.join(",");

    // the watcher follows the job to its end through the new leader
    let code = watcher.wait(Duration::from_secs(300), "watch across the failover");
    let watched = events_of(&read(&watch_log));
    assert_eq!(code, Some(0), "watch failed:\n{}\n{}", read(&watch_log), logs(&workers, &coordinators));
    assert_eq!(watched.last().map(|e| e["status"].clone()), Some("succeeded".into()), "{watched:?}");

    // a new leader, among the survivors
    let status = status_json(&job, &survivors, dir.path(), &tag);
    let new_leader =
        status["cluster"]["leader"].as_str().unwrap_or_else(|| panic!("no new leader: {status}"));
    assert_ne!(new_leader, leader);
    assert_eq!(status["status"], "succeeded", "{status}");
    let epochs: Vec<u64> = status["results"]["epochs"]
        .as_array()
        .expect("results")
        .iter()
        .map(|e| e["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, (1..=10).collect::<Vec<_>>(), "{status}");

    // nothing committed lost: the log replayed from the new leader starts with what was seen before
    let (code, replay, stderr) = watch_json(&job, &survivors, dir.path(), Duration::from_secs(60), &tag);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(replay.len() >= seen_before.len());
    assert_eq!(&replay[..seen_before.len()], &seen_before[..], "events seen before the kill changed");
    let indices: Vec<u64> = replay.iter().map(|e| e["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, (0..replay.len() as u64).collect::<Vec<_>>(), "gaps in the job's log");
    for epoch in 1..=10u64 {
        assert!(
            replay.iter().any(|e| e["type"] == "epoch" && e["epoch"] == epoch),
            "epoch {epoch} is missing from the job's events"
        );
    }
    // the results are stored where `cyclotron train` puts them
    assert!(dir.path().join(format!("store/failover/{job}/results.json")).exists());
}

/// A raft replica whose storage fails must not go on answering from stale state: the
/// `coordinator` process exits non-zero and says why (issue 14).
#[test]
fn a_coordinator_whose_raft_storage_fails_exits_non_zero_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let tag = new_tag();
    let mut c = Coordinator::start(dir.path(), "c", "127.0.0.1:0", &["--snapshot-every", "3"], &tag);
    // the next compaction cannot write its snapshot (even root cannot open a folder as a file)
    std::fs::create_dir(dir.path().join("c").join("raft-snapshot.tmp")).unwrap();
    std::fs::write(dir.path().join("job.toml"), tiny_job("dies", 64, 1)).unwrap();
    // every submission is a commit; the third applied entry or so triggers the snapshot
    for _ in 0..8 {
        if c.proc.exited().is_some() {
            break;
        }
        let _ = run_tagged(
            &["submit", "job.toml", "--coordinator", &c.addr, "--timeout", "3"],
            dir.path(),
            Duration::from_secs(30),
            &tag,
        );
    }
    let code = c.proc.wait(Duration::from_secs(20), "the coordinator to exit");
    assert!(matches!(code, Some(n) if n != 0), "exit {code:?}:\n{}", read(&c.log));
    let log = read(&c.log);
    assert!(log.contains("the raft replica stopped") && log.contains("raft-snapshot"), "{log}");
}
