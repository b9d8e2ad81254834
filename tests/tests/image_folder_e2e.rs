//! Training from an image folder laid out like the seed's PATH, with unreadable files mixed in:
//! they are skipped and counted with one warning, and training goes on.

use std::path::Path;
use std::time::Duration;

use cyclotron_tests::run;

/// Two classes that differ in colour, so a tiny model learns them in one epoch.
fn write_folder(root: &Path) {
    for (split, n) in [("train", 48), ("valid", 16)] {
        for (class, rgb) in [("red", [200u8, 30, 30]), ("blue", [30, 30, 200])] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(20, 20, |x, y| {
                    let noise = ((x * 7 + y * 13 + i * 31) % 40) as u8;
                    image::Rgb([
                        rgb[0].saturating_add(noise),
                        rgb[1].saturating_add(noise),
                        rgb[2].saturating_add(noise),
                    ])
                });
                let ext = if i % 2 == 0 { "png" } else { "jpg" };
                img.save(dir.join(format!("{i}.{ext}"))).unwrap();
            }
        }
    }
    let bad = root.join("train/red");
    std::fs::write(bad.join("notes.png"), "this is text, not a PNG").unwrap();
    std::fs::write(bad.join("README"), "no extension").unwrap();
    std::fs::write(bad.join("empty.jpg"), "").unwrap();
}

#[test]
fn image_folder_with_junk_trains_and_warns_once() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(&dir.path().join("data"));
    let spec = r#"
name = "folder"
[data]
source = "image_folder"
path = "data"
size = 16
batch_size = 16
[model]
arch = "small_resnet"
width = 4
[[stage]]
lr = 0.05
cycles = 2
cycle_len = 1
[ensemble]
members = 2
"#;
    std::fs::write(dir.path().join("job.toml"), spec).unwrap();
    let ran = run(&["train", "job.toml", "--out", "out"], dir.path(), Duration::from_secs(300));
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    let warnings: Vec<&str> =
        ran.stderr.lines().filter(|l| l.contains("WARN") && l.contains("skipped")).collect();
    assert_eq!(warnings.len(), 1, "exactly one warning for the skipped files:\n{}", ran.stderr);
    // it counts the 3 bad files of data/train and names each (a warning names up to 3)
    let w = warnings[0];
    assert!(w.contains("skipped 3 files in data/train"), "the warning counts the 3 bad files: {w}");
    for bad in ["notes.png", "README", "empty.jpg"] {
        assert!(w.contains(&format!("data/train/red/{bad} (")), "the warning names {bad}: {w}");
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/results.json")).unwrap()).unwrap();
    assert_eq!(results["eval_split"], "valid");
    assert_eq!(results["snapshots"].as_array().unwrap().len(), 2);
}

#[test]
fn image_folder_without_train_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data/valid/a")).unwrap();
    let spec = "name = \"f\"\n[data]\nsource = \"image_folder\"\npath = \"data\"\n[model]\narch = \"small_resnet\"\n[[stage]]\nlr = 0.1\nepochs = 1\n";
    std::fs::write(dir.path().join("job.toml"), spec).unwrap();
    let ran = run(&["train", "job.toml", "--out", "out"], dir.path(), Duration::from_secs(120));
    assert_ne!(ran.code, Some(0));
    assert!(ran.stderr.contains("data/train"), "{}", ran.stderr);
    assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);
}
