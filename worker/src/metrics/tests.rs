//! Worker metrics: events, a real fit, two real ranks' all-reduces, real uploads and failures.

use cyclotron_core::results::{EpochRecord, Metrics};
use cyclotron_core::schedule::Constant;
use cyclotron_core::spec::OptimizerSpec;
use tch::Device;

use super::*;
use crate::event::Quiet;
use crate::learner::Learner;
use crate::task::image::{ImageClassification, ImageData};

fn exposition(m: &WorkerMetrics) -> String {
    cyclotron_core::metrics::encode_text(m.registry()).unwrap()
}

fn sample(text: &str, prefix: &str) -> f64 {
    line(text, prefix).rsplit(' ').next().unwrap().parse().unwrap()
}

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

#[test]
fn events_land_in_labelled_series() {
    let m = WorkerMetrics::new();
    let j = m.job("mnist", 1);
    let step = |loss: f64| Event::Step {
        stage: 0,
        step: 1,
        loss,
        lr: 0.3,
        lrs: vec![0.1, 0.2, 0.3],
        samples: 32,
        seconds: 0.02,
        data_seconds: 0.005,
        comm_seconds: 0.0,
    };
    j.record(&step(2.5));
    j.record(&step(1.5));
    j.record(&Event::LrFindStart { steps: 100 });
    j.record(&Event::LrFindStep { i: 41, lr: 0.01, loss: 1.0 });
    let valid = Metrics::classification(0.7, 0.75);
    let record = EpochRecord { stage: 0, epoch: 1, step: 2, train_loss: 2.0, valid, seconds: 1.0 };
    j.record(&Event::EpochEnd { record });
    j.comm.record(Duration::from_millis(250), 4096);
    j.checkpoint.committed(1000, Duration::from_millis(30));
    j.checkpoint.failed();

    let t = exposition(&m);
    let labels = r#"{job="mnist",rank="1"}"#;
    for (name, value) in [
        (names::TRAIN_LOSS, "1.5"),
        (names::STEPS, "2"),
        (names::SAMPLES, "64"),
        (names::DATA_WAIT_SECONDS, "0.01"),
        (names::EPOCHS, "1"),
        (names::VALID_LOSS, "0.7"),
        (names::VALID_ACCURACY, "0.75"),
        (names::LR_FIND_STEPS_DONE, "42"),
        (names::LR_FIND_STEPS_PLANNED, "100"),
        (names::ALLREDUCE_SECONDS, "0.25"),
        (names::ALLREDUCE_BYTES, "4096"),
        (names::CHECKPOINT_BYTES, "1000"),
        (names::CHECKPOINTS, "1"),
        (names::CHECKPOINT_FAILURES, "1"),
    ] {
        assert_eq!(line(&t, &format!("{name}{labels} ")), format!("{name}{labels} {value}"));
    }
    assert_eq!(line(&t, "cyclotron_step_seconds_count{"), format!("cyclotron_step_seconds_count{labels} 2"));
    assert_eq!(
        line(&t, "cyclotron_checkpoint_seconds_count{"),
        format!("cyclotron_checkpoint_seconds_count{labels} 1")
    );
    for (group, lr) in [("body_early", "0.1"), ("body_late", "0.2"), ("head", "0.3")] {
        let want = format!(r#"cyclotron_learning_rate{{group="{group}",job="mnist",rank="1"}} {lr}"#);
        assert!(t.lines().any(|l| l == want), "{want} missing from\n{t}");
    }
    assert!(!t.contains("step=\""), "never a step label");
}

#[test]
fn a_real_fit_counts_every_step_and_sample() {
    tch::manual_seed(0);
    let train = synthetic(96, 1, 12, 1);
    let valid = synthetic(16, 1, 12, 2);
    let net = crate::models::build("small_cnn", 4, 1, 10, Device::Cpu).unwrap();
    let task = ImageClassification::new(net, ImageData::new(train, valid, 16, 2), 3, None);
    let mut l = Learner::new(Box::new(task), &OptimizerSpec::default(), 3);
    let m = WorkerMetrics::new();
    let (mut q1, mut q2) = (Quiet, Quiet);
    let mut metered = Metered::new(Some(m.job("toy", 0)), &mut q1);
    let sched = Constant { lr: 0.02, steps_per_epoch: 6, epochs: 2 };
    l.fit(0, &sched, &[0.02 / 9.0, 0.02 / 3.0, 0.02], &mut metered, &mut |_, _| Ok(())).unwrap();
    let t = exposition(&m);
    let labels = r#"{job="toy",rank="0"}"#;
    assert_eq!(line(&t, "cyclotron_steps_total{"), format!("cyclotron_steps_total{labels} 12"));
    assert_eq!(line(&t, "cyclotron_samples_total{"), format!("cyclotron_samples_total{labels} 192"));
    assert_eq!(line(&t, "cyclotron_epochs_total{"), format!("cyclotron_epochs_total{labels} 2"));
    assert_eq!(line(&t, "cyclotron_step_seconds_count{"), format!("cyclotron_step_seconds_count{labels} 12"));
    let loss: f64 = line(&t, "cyclotron_train_loss{").rsplit(' ').next().unwrap().parse().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
    let head = line(&t, r#"cyclotron_learning_rate{group="head""#);
    assert!(head.ends_with(" 0.02"), "{head}");
    // with no metrics, the wrapper only forwards
    let mut quiet = Metered::new(None, &mut q2);
    l.fit(0, &sched, &[0.02; 3], &mut quiet, &mut |_, _| Ok(())).unwrap();
    assert_eq!(line(&exposition(&m), "cyclotron_steps_total{"), format!("cyclotron_steps_total{labels} 12"));
}

#[test]
fn every_worker_metric_name_is_registered() {
    let m = WorkerMetrics::new();
    let _j = m.job("j", 0);
    let families: Vec<String> = m.registry().gather().iter().map(|f| f.name().to_string()).collect();
    for name in names::WORKER_METRICS {
        assert!(families.iter().any(|f| f == name), "{name} not registered: {families:?}");
    }
}

#[test]
fn two_ranks_record_the_bytes_and_time_of_their_all_reduces() {
    use crate::collective::ring::local_rings;
    use crate::distributed::{GradAverage, HostRing};
    use crate::task::Batch;

    let m = WorkerMetrics::new();
    let handles: Vec<_> = local_rings(2)
        .into_iter()
        .enumerate()
        .map(|(rank, ring)| {
            let comm = m.job("dp", rank).comm;
            std::thread::spawn(move || {
                let grads = HostRing::new(Box::new(ring), Duration::from_secs(20)).unwrap();
                grads.set_metrics(comm);
                let items = synthetic(1, 1, 12, 0);
                let mut l = crate::bench::bench_learner("small_cnn", 4, 3, (items, 1), Device::Cpu).unwrap();
                // the broadcast is not an all-reduce: not counted
                l.join(Box::new(grads)).unwrap();
                let x = tch::Tensor::randn([4, 1, 12, 12], (tch::Kind::Float, Device::Cpu));
                let y = tch::Tensor::randint(3, [4], (tch::Kind::Int64, Device::Cpu));
                let batch = Batch::of(x, y);
                for _ in 0..2 {
                    l.step(&batch, &[0.1; 3]).unwrap();
                }
                l.model().parameters().iter().map(|(_, _, t)| t.numel() as u64).sum::<u64>()
            })
        })
        .collect();
    let params: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let t = exposition(&m);
    for (rank, n) in params.iter().enumerate() {
        let labels = format!(r#"{{job="dp",rank="{rank}"}}"#);
        // two steps of every gradient plus the loss, as fp32
        let want = 2 * 4 * (n + 1);
        assert_eq!(sample(&t, &format!("cyclotron_allreduce_bytes_total{labels}")), want as f64, "{t}");
        assert!(sample(&t, &format!("cyclotron_allreduce_seconds_total{labels}")) > 0.0, "{t}");
    }
}

#[test]
fn the_uploader_records_commits_and_failures() {
    use cyclotron_core::checkpoint::{Blob, CheckpointKind, CheckpointStore, RunLocation, StoreOptions};

    use crate::checkpoint::{Pending, Uploader};

    let pending = |run: &RunLocation, step: u64| Pending {
        dir: run.checkpoint_dir(step),
        kind: CheckpointKind::Checkpoint,
        position: (step, 0, step as u32, None),
        tensors: vec![],
        raw: vec![Blob { name: "state.json".into(), data: bytes::Bytes::from(vec![7u8; 1000]) }],
        state: serde_json::Value::Null,
        retention: None,
    };
    let m = WorkerMetrics::new();
    let run = RunLocation::new("ck", "r");
    let store = CheckpointStore::open("memory://").unwrap();
    let up = Uploader::start_with_metrics(store, 2, Some(m.job("ck", 0).checkpoint)).unwrap();
    up.submit(pending(&run, 1)).unwrap();
    up.submit(pending(&run, 2)).unwrap();
    up.finish(Duration::from_secs(30)).unwrap();

    // a store whose folder is a file: every put fails
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("runs");
    let options = StoreOptions { attempts: 1, ..Default::default() };
    let bad = CheckpointStore::open_with(&format!("file://{}", root.display()), &options).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::write(&root, b"not a folder").unwrap();
    let up = Uploader::start_with_metrics(bad, 1, Some(m.job("ck", 1).checkpoint)).unwrap();
    up.submit(pending(&run, 1)).unwrap();
    assert!(up.finish(Duration::from_secs(30)).is_err());

    let t = exposition(&m);
    let ok = r#"{job="ck",rank="0"}"#;
    assert_eq!(sample(&t, &format!("cyclotron_checkpoints_total{ok}")), 2.0, "{t}");
    assert_eq!(sample(&t, &format!("cyclotron_checkpoint_bytes_total{ok}")), 2000.0, "{t}");
    assert_eq!(sample(&t, &format!("cyclotron_checkpoint_seconds_count{ok}")), 2.0, "{t}");
    assert_eq!(sample(&t, &format!("cyclotron_checkpoint_failures_total{ok}")), 0.0, "{t}");
    let failed = r#"{job="ck",rank="1"}"#;
    assert_eq!(sample(&t, &format!("cyclotron_checkpoint_failures_total{failed}")), 1.0, "{t}");
    assert_eq!(sample(&t, &format!("cyclotron_checkpoints_total{failed}")), 0.0, "{t}");
}
