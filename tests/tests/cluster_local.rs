//! `cyclotron local`: a coordinator and two worker processes on this machine run a small
//! data-parallel job to the end (the model learns), write what `cyclotron train` writes, and leave no process
//! behind — after success and after ctrl-c in the middle of training (where each worker's run
//! is also scraped for its Prometheus metrics).

use std::io::{Read, Write};

use std::time::Duration;

use cyclotron_tests::{
    fashion_mnist_present, new_tag, read, run_tagged, signal, spawn_logged, tagged_processes, tiny_job,
    wait_until,
};

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every tagged process is gone (they had a few seconds to be reaped).
fn assert_none_left(tag: &str) {
    let mut left = tagged_processes(tag);
    for _ in 0..30 {
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = tagged_processes(tag);
    }
    let described: Vec<String> = left
        .iter()
        .map(|p| {
            format!("{p}: {}", read(std::path::Path::new(&format!("/proc/{p}/cmdline"))).replace('\0', " "))
        })
        .collect();
    panic!("processes survived the local cluster:\n{}", described.join("\n"));
}

#[test]
fn local_cluster_of_two_workers_trains_the_job_and_cleans_up() {
    if !fashion_mnist_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // small_resnet: the tiny job's small_cnn stays near chance in 2 epochs of 1,024 images
    // (11.5% test accuracy), which could not tell a cluster that trains from one that does not
    std::fs::write(
        dir.path().join("job.toml"),
        tiny_job("local2", 1024, 2).replace("small_cnn", "small_resnet"),
    )
    .unwrap();
    let tag = new_tag();
    let ran = run_tagged(
        &["local", "--workers", "2", "job.toml", "--out", "out"],
        dir.path(),
        Duration::from_secs(240),
        &tag,
    );
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    assert_none_left(&tag);

    // what `cyclotron train` writes and prints
    let out = dir.path().join("out");
    let results = read_json(&out.join("results.json"));
    assert_eq!(results["job"], "local2");
    assert_eq!(results["epochs"].as_array().map(Vec::len), Some(2), "{results}");
    assert_eq!(results["snapshots"].as_array().map(Vec::len), Some(1));
    // it learned: 10 classes, chance is 10% and a loss of ln 10 = 2.30 (this job, deterministic
    // on the CPU, reaches 41% and 1.97)
    let (accuracy, loss) =
        (results["final"]["accuracy"].as_f64().unwrap(), results["final"]["loss"].as_f64().unwrap());
    assert!(accuracy >= 0.3 && loss < 2.15, "accuracy {accuracy}, loss {loss}: {results}");
    let losses: Vec<f64> =
        results["epochs"].as_array().unwrap().iter().map(|e| e["train_loss"].as_f64().unwrap()).collect();
    assert!(losses[1] < losses[0], "the training loss fell: {losses:?}");
    assert!(read_json(&out.join("lr_find.json"))["lrs"].as_array().is_some_and(|l| !l.is_empty()));
    for png in ["lr_find.png", "training.png"] {
        assert!(out.join(png).exists(), "{png} missing");
    }
    assert!(
        ran.stdout.contains("ensemble") && ran.stdout.contains("final"),
        "no results table:\n{}",
        ran.stdout
    );
    // progress as it happened, and the two ranks trained together
    assert!(ran.stderr.contains("stage 1 epoch 2:"), "no epoch lines:\n{}", ran.stderr);
    assert!(ran.stderr.contains("task 0 started on local-0, local-1"), "{}", ran.stderr);
    assert!(read(&out.join("logs/worker-1.log")).contains("joined the data-parallel group"));
    // the run's checkpoints went to the spec's store under the job id
    let job_id = ran.stderr.split("job ").nth(1).and_then(|r| r.split(':').next()).expect("job id");
    assert!(dir.path().join("store/local2").join(job_id).exists(), "{job_id}");
}

/// The body of GET http://127.0.0.1:PORT/metrics (empty when nothing answers).
fn scrape(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

#[test]
fn ctrl_c_stops_every_process_of_the_local_cluster() {
    if !fashion_mnist_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // long enough to be interrupted mid-training
    std::fs::write(dir.path().join("job.toml"), tiny_job("interrupted", 2048, 200)).unwrap();
    let tag = new_tag();
    let log = dir.path().join("local.log");
    let port = cyclotron_tests::consecutive_free_ports(2);
    let base = port.to_string();
    let args = ["local", "--workers", "2", "job.toml", "--out", "out", "--metrics-base-port", &base];
    let mut local = spawn_logged(&args, dir.path(), &log, &tag);
    wait_until(
        "an epoch to finish",
        Duration::from_secs(180),
        || read(&log).contains("stage 1 epoch 1:"),
        || read(&log),
    );
    assert!(tagged_processes(&tag).len() >= 6, "local, coordinator, 2 workers and 2 training children run");
    // each worker's run serves its metrics on its own port
    for (rank, p) in [(0, port), (1, port + 1)] {
        let text = scrape(p);
        let steps = format!("cyclotron_steps_total{{job=\"interrupted\",rank=\"{rank}\"}}");
        assert!(text.lines().any(|l| l.starts_with(&steps)), "no {steps} on port {p}:\n{text}");
    }
    signal(local.pid(), "INT");
    let code = local.wait(Duration::from_secs(60), "cyclotron local after ctrl-c");
    assert_ne!(code, Some(0), "an interrupted job is not a success:\n{}", read(&log));
    assert!(read(&log).contains("interrupted"), "{}", read(&log));
    assert_none_left(&tag);
}
