//! One test suite for every backend (memory, file, S3 against an in-process `s3s-fs` server), and
//! the S3 failure cases: wrong credentials, missing bucket, the server stopped mid-upload.

use std::time::Duration;

use bytes::Bytes;

use super::test_server::S3TestServer;
use super::*;
use crate::error::Error;

const KEY: &str = "cyclotron-test-key";
const SECRET: &str = "cyclotron-test-secret-do-not-print";

/// Small parts and fast retries so the suite exercises multipart and stays quick.
fn fast_options() -> StoreOptions {
    StoreOptions {
        multipart_threshold: 6 << 20,
        part_size: 5 << 20,
        attempts: 2,
        backoff: Duration::from_millis(20),
        request_retries: 1,
        request_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

fn s3_store(server: &S3TestServer, bucket: &str, key: &str, secret: &str) -> CheckpointStore {
    let options = StoreOptions { s3: server.options(key, secret), ..fast_options() };
    CheckpointStore::open_with(&format!("s3://{bucket}/ckpts"), &options).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn blobs(tag: &str) -> Vec<Blob> {
    vec![
        Blob { name: "model.safetensors".into(), data: Bytes::from(format!("weights-{tag}")) },
        Blob { name: "state.json".into(), data: Bytes::from("{}") },
    ]
}

/// Commit a periodic checkpoint of `run` at `step` holding [`blobs`]`(tag)`.
async fn commit_checkpoint(store: &CheckpointStore, run: &RunLocation, step: u64, tag: &str) {
    store
        .commit(
            &run.checkpoint_dir(step),
            CheckpointKind::Checkpoint,
            (step, 0, 0, None),
            blobs(tag),
            serde_json::Value::Null,
        )
        .await
        .unwrap();
}

async fn suite(store: CheckpointStore) {
    let run = RunLocation::new("job", "run-1");
    assert!(store.latest(&run).await.unwrap().is_none());
    for step in [10u64, 30, 20] {
        store
            .commit(
                &run.checkpoint_dir(step),
                CheckpointKind::Checkpoint,
                (step, 0, 1, None),
                blobs(&step.to_string()),
                serde_json::json!({"step": step}),
            )
            .await
            .unwrap();
    }
    store
        .commit(
            &run.snapshot_dir(0),
            CheckpointKind::Snapshot,
            (15, 0, 1, Some(0)),
            blobs("s0"),
            serde_json::Value::Null,
        )
        .await
        .unwrap();
    store
        .commit(
            &run.snapshot_dir(1),
            CheckpointKind::Snapshot,
            (25, 0, 2, Some(1)),
            blobs("s1"),
            serde_json::Value::Null,
        )
        .await
        .unwrap();

    let (dir, latest) = store.latest(&run).await.unwrap().unwrap();
    assert_eq!(latest.step, 30);
    assert_eq!(dir, "job/run-1/ckpt-0000000030");
    assert_eq!(store.read_blob(&dir, &latest, "model.safetensors").await.unwrap(), Bytes::from("weights-30"));
    assert_eq!(latest.state["step"], 30);

    let snaps = store.snapshots(&run).await.unwrap();
    assert_eq!(snaps.iter().map(|(_, m)| m.cycle).collect::<Vec<_>>(), vec![Some(0), Some(1)]);
    assert_eq!(snaps[1].0, "job/run-1/snapshots/cycle-1");

    // blobs without a manifest do not make a checkpoint
    store.put_raw("job/run-1/ckpt-0000000099/model.safetensors", Bytes::from("partial")).await.unwrap();
    assert_eq!(store.latest(&run).await.unwrap().unwrap().1.step, 30);

    // a corrupted blob is detected
    store.put_raw(&format!("{dir}/model.safetensors"), Bytes::from("weights-3X")).await.unwrap();
    let err = store.read_blob(&dir, &latest, "model.safetensors").await.unwrap_err().to_string();
    assert!(err.contains("sha256 differs"), "{err}");

    // delete removes the manifest, so the previous one becomes latest
    store.delete(&dir).await.unwrap();
    assert_eq!(store.latest(&run).await.unwrap().unwrap().1.step, 20);

    large_blobs_and_retention(&store).await;
    corrupted_newest_falls_back_once(&store).await;
    unreadable_manifests_and_states_fall_back(&store).await;
}

/// An old manifest that does not parse does not stop retention (it is skipped and kept); a
/// checkpoint whose training state is missing or unparseable falls back like a bad blob; a
/// manifest naming a blob outside its folder is refused.
async fn unreadable_manifests_and_states_fall_back(store: &CheckpointStore) {
    let run = RunLocation::new("job", "unreadable");
    for step in [1u64, 2, 3] {
        commit_checkpoint(store, &run, step, &step.to_string()).await;
    }
    let garbled = format!("{}/MANIFEST.json", run.checkpoint_dir(1));
    store.put_raw(&garbled, Bytes::from("{ not json")).await.unwrap();
    commit_checkpoint(store, &run, 4, "4").await;
    let deleted = store.apply_retention(&run, 2).await.unwrap();
    assert_eq!(deleted, vec![run.checkpoint_dir(2)], "the unreadable one is skipped, the rest proceeds");
    // step 4's state does not parse: the state check refuses it and step 3 is used
    store.put_raw(&format!("{}/state.json", run.checkpoint_dir(4)), Bytes::from("{}")).await.unwrap();
    let state_ok = |_: &Manifest, blobs: &[(String, Bytes)]| -> Result<(), String> {
        let state = blobs.iter().find(|(n, _)| n == "state.json").ok_or("no state.json")?;
        serde_json::from_slice::<serde_json::Value>(&state.1)
            .ok()
            .filter(|v| v.get("step").is_some())
            .map(|_| ())
            .ok_or_else(|| "state.json has no step".to_string())
    };
    // (every checkpoint here holds `{}`: none passes, and each is named)
    let none = store.latest_valid_where(&run, state_ok).await.unwrap();
    assert!(none.is_none());
    let only_4 =
        |m: &Manifest, _: &[(String, Bytes)]| if m.step == 4 { Err("bad state".to_string()) } else { Ok(()) };
    let v = store.latest_valid_where(&run, only_4).await.unwrap().unwrap();
    assert_eq!(v.manifest.step, 3);
    assert!(
        v.skipped.iter().any(|(d, why)| d == &run.checkpoint_dir(4) && why.contains("bad state")),
        "{:?}",
        v.skipped
    );
    // a manifest whose blob name climbs out of its folder is refused, not followed
    let mut m = store.manifest(&run.checkpoint_dir(3)).await.unwrap();
    m.blobs[0].name = "../../other/model.safetensors".into();
    let evil = format!("{}/MANIFEST.json", run.checkpoint_dir(3));
    store.put_raw(&evil, Bytes::from(serde_json::to_vec(&m).unwrap())).await.unwrap();
    let e = store.manifest(&run.checkpoint_dir(3)).await.unwrap_err().to_string();
    assert!(e.contains("is not a plain file name"), "{e}");
}

/// A blob above the multipart threshold round-trips; retention keeps the newest k and snapshots.
async fn large_blobs_and_retention(store: &CheckpointStore) {
    let run = RunLocation::new("job", "big");
    let big: Vec<u8> = (0..(11u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    assert!(big.len() > store.options().multipart_threshold);
    for step in [1u64, 2, 3] {
        let mut data = big.clone();
        data[0] = step as u8;
        let blobs = vec![
            Blob { name: "model.safetensors".into(), data: Bytes::from(data) },
            Blob { name: "state.json".into(), data: Bytes::from(format!("{{\"step\":{step}}}")) },
        ];
        let dir = run.checkpoint_dir(step);
        store
            .commit(&dir, CheckpointKind::Checkpoint, (step, 0, 0, None), blobs, serde_json::Value::Null)
            .await
            .unwrap();
        store.apply_retention(&run, 2).await.unwrap();
    }
    store
        .commit(
            &run.snapshot_dir(0),
            CheckpointKind::Snapshot,
            (3, 0, 0, Some(0)),
            blobs("s"),
            serde_json::Value::Null,
        )
        .await
        .unwrap();
    let deleted = store.apply_retention(&run, 1).await.unwrap();
    assert_eq!(deleted, vec![run.checkpoint_dir(2)]);
    let left: Vec<String> = store.list(&run.prefix()).await.unwrap().into_iter().map(|(d, _)| d).collect();
    assert_eq!(left, vec![run.checkpoint_dir(3), run.snapshot_dir(0)]);
    let v = store.latest_valid(&run).await.unwrap().unwrap();
    assert_eq!(v.manifest.step, 3);
    assert!(v.skipped.is_empty());
    let model = v.blob("model.safetensors").unwrap();
    assert_eq!(model.len(), big.len());
    assert_eq!(model[0], 3);
    assert_eq!(&model[1..], &big[1..]);
}

/// A truncated or corrupted blob in the newest checkpoint: the previous one is restored, the bad
/// one is reported once.
async fn corrupted_newest_falls_back_once(store: &CheckpointStore) {
    let run = RunLocation::new("job", "corrupt");
    for step in [5u64, 6, 7] {
        commit_checkpoint(store, &run, step, &step.to_string()).await;
    }
    store
        .put_raw(&format!("{}/model.safetensors", run.checkpoint_dir(7)), Bytes::from("weights-X"))
        .await
        .unwrap();
    let v = store.latest_valid(&run).await.unwrap().unwrap();
    assert_eq!(v.manifest.step, 6);
    assert_eq!(v.blob("model.safetensors").unwrap(), &Bytes::from("weights-6"));
    assert_eq!(v.skipped.len(), 1, "{:?}", v.skipped);
    assert_eq!(v.skipped[0].0, run.checkpoint_dir(7));
    assert!(v.skipped[0].1.contains("sha256 differs"), "{}", v.skipped[0].1);
    // truncated (shorter) blob of step 6 too: falls back to 5, both named
    store.put_raw(&format!("{}/model.safetensors", run.checkpoint_dir(6)), Bytes::from("w")).await.unwrap();
    let v = store.latest_valid(&run).await.unwrap().unwrap();
    assert_eq!(v.manifest.step, 5);
    assert_eq!(
        v.skipped.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
        vec![run.checkpoint_dir(7), run.checkpoint_dir(6)]
    );
    assert!(store.latest_valid(&RunLocation::new("job", "nothing")).await.unwrap().is_none());
}

#[test]
fn memory_backend_passes_the_suite() {
    rt().block_on(suite(CheckpointStore::open_with("memory://", &fast_options()).unwrap()));
}

#[test]
fn s3_backend_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3TestServer::start(dir.path(), &["bucket"], KEY, SECRET).unwrap();
    let store = s3_store(&server, "bucket", KEY, SECRET);
    assert!(!format!("{store:?}").contains(SECRET));
    rt().block_on(async {
        store.check_access("job").await.unwrap();
        suite(store).await;
    });
    // the objects are where the URL says: bucket "bucket", prefix "ckpts"
    assert!(dir.path().join("bucket/ckpts/job/run-1/ckpt-0000000020/MANIFEST.json").exists());
}

#[test]
fn s3_wrong_credentials_and_missing_bucket_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3TestServer::start(dir.path(), &["bucket"], KEY, SECRET).unwrap();
    let wrong = s3_store(&server, "bucket", KEY, "not-the-secret-either");
    let e = rt().block_on(wrong.check_access("job")).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Access { .. }), "{text}");
    assert!(text.contains("access denied to bucket \"bucket\""), "{text}");
    assert!(!text.contains(SECRET) && !text.contains("not-the-secret-either"), "{text}");
    let missing = s3_store(&server, "no-such-bucket", KEY, SECRET);
    let text = rt().block_on(missing.check_access("job")).unwrap_err().to_string();
    assert!(text.contains("bucket \"no-such-bucket\" does not exist"), "{text}");
    let text = rt().block_on(missing.latest(&RunLocation::new("j", "r"))).unwrap_err().to_string();
    assert!(text.contains("does not exist"), "{text}");
}

#[test]
fn s3_server_stopped_mid_upload_fails_after_retries_without_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = S3TestServer::start(dir.path(), &["bucket"], KEY, SECRET).unwrap();
    let store = s3_store(&server, "bucket", KEY, SECRET);
    let run = RunLocation::new("job", "cut");
    let big = Bytes::from(vec![7u8; 16 << 20]);
    // a few parts of the multipart upload get through, then the server is gone
    server.stop_after_requests(3);
    let blobs = vec![
        Blob { name: "model.safetensors".into(), data: big },
        Blob { name: "state.json".into(), data: Bytes::from("{}") },
    ];
    let r = rt().block_on(async {
        let dir = run.checkpoint_dir(1);
        let commit =
            store.commit(&dir, CheckpointKind::Checkpoint, (1, 0, 0, None), blobs, serde_json::Value::Null);
        tokio::time::timeout(Duration::from_secs(60), commit).await
    });
    let e = r.expect("the commit gave up within its deadline").unwrap_err();
    let text = e.to_string();
    assert!(text.contains("failed after 2 attempts"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    server.stop();
    assert!(!dir.path().join("bucket/ckpts/job/cut/ckpt-0000000001/MANIFEST.json").exists());
}

#[test]
fn file_backend_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/runs", dir.path().display());
    rt().block_on(suite(CheckpointStore::open_with(&url, &fast_options()).unwrap()));
    assert!(dir.path().join("runs/job/run-1/ckpt-0000000020/MANIFEST.json").exists());
}

#[test]
fn retention_on_a_folder_leaves_no_empty_checkpoint_folders() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open_with(dir.path().to_str().unwrap(), &fast_options()).unwrap();
    let run = RunLocation::new("job", "r");
    rt().block_on(async {
        for step in 1..=3u64 {
            commit_checkpoint(&store, &run, step, "x").await;
            store.apply_retention(&run, 1).await.unwrap();
        }
    });
    let left: Vec<String> = std::fs::read_dir(dir.path().join(run.prefix()))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["ckpt-0000000003".to_string()], "deleted checkpoints leave no folders");
}

#[test]
fn retention_sweeps_blobs_of_checkpoints_never_committed() {
    let store = CheckpointStore::open_with("memory://", &fast_options()).unwrap();
    let run = RunLocation::new("job", "r");
    rt().block_on(async {
        commit_checkpoint(&store, &run, 1, "x").await;
        // a commit that failed after its first blob, and one still uploading past the newest
        let stray = format!("{}/model.safetensors", run.checkpoint_dir(2));
        store.put_raw(&stray, Bytes::from("half")).await.unwrap();
        let in_flight = format!("{}/model.safetensors", run.checkpoint_dir(9));
        store.put_raw(&in_flight, Bytes::from("soon")).await.unwrap();
        commit_checkpoint(&store, &run, 3, "x").await;
        let deleted = store.apply_retention(&run, 5).await.unwrap();
        assert_eq!(deleted, vec![run.checkpoint_dir(2)]);
        assert!(store.read_raw(&stray).await.is_err());
        assert_eq!(store.read_raw(&in_flight).await.unwrap(), Bytes::from("soon"));
        assert_eq!(run.step_of(&run.checkpoint_dir(42)), Some(42));
        assert_eq!(run.step_of("elsewhere/ckpt-1"), None);
    });
}

#[test]
fn unsupported_scheme_and_unwritable_folder_are_clear_errors() {
    let e = CheckpointStore::open("gopher://user:pw@x").unwrap_err().to_string();
    assert!(!e.contains("pw"), "{e}");
    assert!(e.contains("unsupported scheme"), "{e}");
    let e = CheckpointStore::open("file:///proc/cyclotron-cannot-be-here").unwrap_err().to_string();
    assert!(e.contains("cannot create or write the folder /proc/cyclotron-cannot-be-here"), "{e}");
}

#[test]
fn objects_outside_runs_are_read_by_url_from_s3() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3TestServer::start(dir.path(), &["bucket"], KEY, SECRET).unwrap();
    let store = s3_store(&server, "bucket", KEY, SECRET);
    let options = StoreOptions { s3: server.options(KEY, SECRET), ..fast_options() };
    rt().block_on(async {
        store.put_raw("weights/model.safetensors", Bytes::from("tensor bytes")).await.unwrap();
        let got =
            CheckpointStore::read_url("s3://bucket/ckpts/weights/model.safetensors", &options).await.unwrap();
        assert_eq!(got, Bytes::from("tensor bytes"));
        let e = CheckpointStore::read_url("s3://bucket/ckpts/weights/missing.safetensors", &options)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.safetensors"), "{e}");
        let e = CheckpointStore::read_url("s3://bucket", &options).await.unwrap_err().to_string();
        assert!(e.contains("name an object"), "{e}");
        let wrong = StoreOptions { s3: server.options(KEY, "wrong-secret"), ..fast_options() };
        let e = CheckpointStore::read_url("s3://bucket/ckpts/weights/model.safetensors", &wrong)
            .await
            .unwrap_err()
            .to_string();
        assert!(!e.contains("wrong-secret") && !e.contains(SECRET), "{e}");
    });
}
