//! Tabular end to end, as a user runs it: `cyclotron train` of an entity-embedding regression on a
//! small generated table of daily store sales (a date column split by time and expanded into
//! parts, a store seen only in the test months, missing temperatures), which must beat the
//! trivial baseline and save its preprocessing with each snapshot, and whose `predict` of the test
//! rows repeats the run's evaluation; the same table learned by a user's TorchScript module
//! (scripted at test time by the venv's torch), whose snapshots load back into PyTorch; a
//! classification on the same table; and the bad inputs the tabular path must name.

use std::path::Path;
use std::time::Duration;

use cyclotron_tests::{run, torchscript_fixtures};

/// Days from 2021-01-01 (a Friday) with their date text, for two years.
fn days() -> Vec<(String, u32, u32)> {
    let lens = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut out = vec![];
    for year in [2021, 2022] {
        for (m, &len) in lens.iter().enumerate() {
            for d in 1..=len {
                out.push((format!("{year}-{:02}-{d:02}", m + 1), m as u32 + 1, out.len() as u32));
            }
        }
    }
    out
}

/// sales = base(store) × weekday effect × season × (1 ± 4 % noise); a sixth store opens in
/// October 2022 (the test months only); every 9th temperature is missing.
fn write_sales(dir: &Path) {
    let mut csv = String::from("store,date,temperature,sales\n");
    let stores = [("north", 100.0), ("south", 250.0), ("east", 60.0), ("west", 400.0), ("mall", 180.0)];
    let mut seed = 7u64;
    let mut noise = || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) as f64 / (1u64 << 31) as f64) * 0.08 - 0.04
    };
    for (date, month, i) in days() {
        let weekday = (i + 4) % 7; // Monday 0; 2021-01-01 was a Friday
        let day_effect = match weekday {
            5 => 1.6,
            6 => 0.4,
            _ => 1.0,
        };
        let season = 1.0 + 0.3 * ((month as f64 - 1.0) / 12.0 * std::f64::consts::TAU).cos();
        let temperature = 20.0 - 10.0 * ((month as f64 - 1.0) / 12.0 * std::f64::consts::TAU).cos();
        let mut all = stores.to_vec();
        if date.as_str() >= "2022-10-01" {
            all.push(("airport", 150.0));
        }
        for (k, (store, base)) in all.iter().enumerate() {
            let sales = base * day_effect * season * (1.0 + noise());
            let t = if (i as usize + k).is_multiple_of(9) {
                "NA".to_string()
            } else {
                format!("{temperature:.1}")
            };
            csv.push_str(&format!("{store},{date},{t},{sales:.1}\n"));
        }
    }
    std::fs::write(dir.join("sales.csv"), csv).unwrap();
}

/// The test months' rows of `dir/sales.csv` (from 2022-10-01) written to `dir/test.csv`: the
/// header and those rows.
fn write_test_months(dir: &Path) -> (String, Vec<String>) {
    let all = std::fs::read_to_string(dir.join("sales.csv")).unwrap();
    let mut lines = all.lines();
    let header = lines.next().unwrap().to_string();
    let test: Vec<String> =
        lines.filter(|l| l.split(',').nth(1).unwrap() >= "2022-10-01").map(String::from).collect();
    std::fs::write(dir.join("test.csv"), format!("{header}\n{}\n", test.join("\n"))).unwrap();
    (header, test)
}

fn spec(extra_data: &str, stages: &str) -> String {
    format!(
        "name = \"tab\"\nseed = 3\noutput = \"file://runs\"\n[data]\nsource = \"tabular_csv\"\npath = \"sales.csv\"\nbatch_size = 64\n[data.tabular]\ntarget = \"sales\"\ncategorical = [\"store\"]\ncontinuous = [\"temperature\"]\ndates = [\"date\"]\ntime_column = \"date\"\nvalid_from = \"2022-07-01\"\ntest_from = \"2022-10-01\"\n{extra_data}[model]\narch = \"entity_embeddings\"\n[model.tabular]\nlayers = [64, 32]\ndropout = [0.0, 0.0]\nemb_dropout = 0.0\n[optimizer]\nkind = \"adamw\"\nweight_decay = 0.0\n{stages}[ensemble]\nmembers = 2\nselection = \"last\"\n[runtime]\nthreads = 1\n"
    )
}

const SGDR: &str =
    "[lr_find]\nstart = 1e-5\nend = 1.0\nsteps = 30\n[[stage]]\nlr = 1e-2\ncycles = 2\ncycle_len = 4\n";

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The baseline the log reports: `baseline_rmspe="0.1234"` (the training median per store).
fn logged_baseline(stderr: &str) -> f64 {
    let at = stderr.find("baseline_rmspe=").unwrap_or_else(|| panic!("no baseline in the log:\n{stderr}"));
    let rest = stderr[at + "baseline_rmspe=".len()..].trim_start_matches('"');
    rest[..rest.find(|c: char| c != '.' && !c.is_ascii_digit()).unwrap()].parse().unwrap()
}

#[test]
fn entity_embeddings_learn_daily_sales_and_keep_their_preprocessing() {
    let work = tempfile::tempdir().unwrap();
    write_sales(work.path());
    std::fs::write(work.path().join("tab.toml"), spec("", SGDR)).unwrap();
    let ran =
        run(&["train", "tab.toml", "--out", "out", "--run", "r1"], work.path(), Duration::from_secs(600));
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    let r = read_json(&work.path().join("out/results.json"));
    assert_eq!(r["eval_split"], "test");
    let snaps = r["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2, "a snapshot per SGDR cycle");
    // the weekday effect alone is ±60 %: a store's median is far off; the dates' parts explain it
    let baseline = logged_baseline(&ran.stderr);
    assert!(baseline > 0.3, "baseline {baseline}");
    let last = snaps[1]["rmspe"].as_f64().expect("each snapshot reports its RMSPE");
    assert!(last < 0.5 * baseline && last < 0.2, "test RMSPE {last} vs baseline {baseline}");
    assert!(snaps[1].get("accuracy").is_none(), "a regression has no accuracy: {}", snaps[1]);
    let epochs = r["epochs"].as_array().unwrap();
    let first = epochs[0]["valid"]["loss"].as_f64().unwrap();
    let end = epochs.last().unwrap()["valid"]["loss"].as_f64().unwrap();
    assert!(end < first, "validation loss {first} -> {end}");
    assert!(r["ensemble"]["rmspe"].as_f64().unwrap() < 0.2, "{}", r["ensemble"]);
    assert!(ran.stdout.contains("rmspe"), "{}", ran.stdout);
    // the airport store opened in the test months: its 92 days have an unseen level (index 0),
    // and nothing else of the test months is new (their months, weeks and days were in 2021)
    assert!(ran.stderr.contains("unseen_levels_test=92 "), "{}", ran.stderr);

    // the snapshot keeps the preprocessing fitted on the training months
    let snapshot = work.path().join("runs/tab/r1/snapshots/cycle-1");
    let manifest = read_json(&snapshot.join("MANIFEST.json"));
    let blobs: Vec<&str> =
        manifest["blobs"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert!(blobs.contains(&"tabular.json") && blobs.contains(&"model.safetensors"), "{blobs:?}");
    let prep = read_json(&snapshot.join("tabular.json"));
    let cats = prep["categorical"].as_array().unwrap();
    let store = &cats[0];
    assert_eq!(store["name"], "store");
    assert_eq!(store["levels"], serde_json::json!(["east", "mall", "north", "south", "west"]));
    let years = cats.iter().find(|c| c["name"] == "date_year").unwrap();
    assert_eq!(years["levels"], serde_json::json!(["2021", "2022"]));
    assert!(cats.iter().any(|c| c["name"] == "temperature_na"), "a flag for the missing temperatures");
    let temp = &prep["continuous"][0];
    assert!(temp["mean"].as_f64().unwrap() > 10.0 && temp["std"].as_f64().unwrap() > 1.0, "{temp}");

    // `predict` of the test months' rows repeats the run's evaluation: the same preprocessing
    // (from the snapshots), the same ensemble, the same RMSPE
    let (header, test) = write_test_months(work.path());
    let pred = run(&["predict", "out", "test.csv", "--json"], work.path(), Duration::from_secs(120));
    assert_eq!(pred.code, Some(0), "stdout:\n{}\nstderr:\n{}", pred.stdout, pred.stderr);
    let p: serde_json::Value = serde_json::from_str(&pred.stdout).unwrap();
    assert_eq!(p["members"].as_array().unwrap().len(), 2, "{}", p["members"]);
    assert_eq!(p["predictions"].as_array().unwrap().len(), test.len());
    assert_eq!(p["unseen_levels"], 92, "the airport's days");
    let (ours, theirs) = (p["rmspe"].as_f64().unwrap(), r["ensemble"]["rmspe"].as_f64().unwrap());
    assert!((ours - theirs).abs() < 1e-5, "predict RMSPE {ours} vs the run's {theirs}");
    // without the target column: predictions only, the same values; as CSV
    let features: Vec<String> = std::iter::once(header.as_str())
        .chain(test.iter().map(String::as_str))
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect();
    std::fs::write(work.path().join("new.csv"), features.join("\n") + "\n").unwrap();
    let csv = run(&["predict", "out", "new.csv", "--csv"], work.path(), Duration::from_secs(120));
    assert_eq!(csv.code, Some(0), "stdout:\n{}\nstderr:\n{}", csv.stdout, csv.stderr);
    let mut rows = csv.stdout.lines();
    assert_eq!(rows.next(), Some("input,sales"));
    let first: f64 = rows.next().unwrap().rsplit_once(',').unwrap().1.parse().unwrap();
    let want = p["predictions"][0]["value"].as_f64().unwrap();
    assert!((first - want).abs() < 1e-6 * want.abs().max(1.0), "{first} vs {want}");
    // a file without a column the model needs, and an image flag, are refused by name
    std::fs::write(work.path().join("bad.csv"), "store,sales\nnorth,10\n").unwrap();
    let bad = run(&["predict", "out", "bad.csv"], work.path(), Duration::from_secs(120));
    assert_ne!(bad.code, Some(0));
    assert!(bad.stderr.contains("\"date\"") && bad.stderr.contains("bad.csv"), "{}", bad.stderr);
    let flag = run(&["predict", "out", "test.csv", "--resize"], work.path(), Duration::from_secs(120));
    assert_ne!(flag.code, Some(0));
    assert!(flag.stderr.contains("--resize applies to image runs"), "{}", flag.stderr);
}

#[test]
fn a_users_torchscript_module_learns_the_table_and_loads_back_into_pytorch() {
    let work = tempfile::tempdir().unwrap();
    write_sales(work.path());
    let modules = work.path().join("modules");
    torchscript_fixtures(&["make", modules.to_str().unwrap()], work.path());
    let job = |file: &str| {
        spec("", SGDR).replace(
            "arch = \"entity_embeddings\"\n[model.tabular]\nlayers = [64, 32]\ndropout = [0.0, 0.0]\nemb_dropout = 0.0\n",
            &format!("arch = \"torchscript\"\ntorchscript = \"{}\"\n", modules.join(file).display()),
        )
    };
    assert!(job("m.pt").contains("arch = \"torchscript\""), "the spec's model section moved");
    std::fs::write(work.path().join("ts.toml"), job("tabular.pt")).unwrap();
    let ran =
        run(&["train", "ts.toml", "--out", "out", "--run", "r1"], work.path(), Duration::from_secs(600));
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    let r = read_json(&work.path().join("out/results.json"));
    let snaps = r["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2, "a snapshot per SGDR cycle");
    let baseline = logged_baseline(&ran.stderr);
    let last = snaps[1]["rmspe"].as_f64().unwrap();
    assert!(
        last < 0.5 * baseline,
        "test RMSPE {last} vs baseline {baseline}; {}\n{}",
        r["epochs"],
        ran.stderr
    );
    let epochs = r["epochs"].as_array().unwrap();
    let first = epochs[0]["valid"]["loss"].as_f64().unwrap();
    let end = epochs.last().unwrap()["valid"]["loss"].as_f64().unwrap();
    assert!(end < first, "validation loss {first} -> {end}");

    // the snapshot holds the module and its parameters under their PyTorch names: loaded into
    // the user's module with load_state_dict, it computes what the snapshot's model.pt computes
    let snapshot = work.path().join("runs/tab/r1/snapshots/cycle-1");
    let manifest = read_json(&snapshot.join("MANIFEST.json"));
    let blobs: Vec<&str> =
        manifest["blobs"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    for want in ["model.pt", "model.safetensors", "tabular.json"] {
        assert!(blobs.contains(&want), "{want} missing from {blobs:?}");
    }
    let module = modules.join("tabular.pt");
    let theirs = torchscript_fixtures(
        &["check_rows", module.to_str().unwrap(), snapshot.to_str().unwrap(), "8", "64", "1"],
        work.path(),
    );
    assert_eq!(theirs["missing"], serde_json::json!([]), "{theirs}");
    assert_eq!(theirs["unexpected"], serde_json::json!([]), "{theirs}");
    let (a, b) = (theirs["state_dict"].as_array().unwrap(), theirs["model_pt"].as_array().unwrap());
    assert_eq!(a.len(), 16);
    for (x, y) in a.iter().zip(b) {
        assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5, "{a:?} vs {b:?}");
    }
    // predict of the test months repeats the run's evaluation through the snapshots' modules
    write_test_months(work.path());
    let pred = run(&["predict", "out", "test.csv", "--json"], work.path(), Duration::from_secs(120));
    assert_eq!(pred.code, Some(0), "stdout:\n{}\nstderr:\n{}", pred.stdout, pred.stderr);
    let p: serde_json::Value = serde_json::from_str(&pred.stdout).unwrap();
    let (ours, run_s) = (p["rmspe"].as_f64().unwrap(), r["ensemble"]["rmspe"].as_f64().unwrap());
    assert!((ours - run_s).abs() < 1e-5, "predict RMSPE {ours} vs the run's {run_s}");

    // a module whose embeddings are too small for the table's levels is refused when loaded,
    // naming the columns and their levels
    std::fs::write(work.path().join("small.toml"), job("tabular_small.pt")).unwrap();
    let bad = run(&["train", "small.toml", "--out", "small"], work.path(), Duration::from_secs(120));
    assert_ne!(bad.code, Some(0));
    assert!(
        bad.stderr.contains(
            "model.torchscript: forward failed on cats [2, 8] (int64 level indices) and conts [2, 1]"
        ) && bad.stderr.contains("store 6")
            && bad.stderr.contains("date_year 3"),
        "{}",
        bad.stderr
    );
    // and [model.tabular] with a module is refused before anything runs
    let mixed = job("tabular.pt")
        .replace("[optimizer]", "[model.tabular]\nlayers = [8]\ndropout = [0.0]\n[optimizer]");
    std::fs::write(work.path().join("mixed.toml"), mixed).unwrap();
    let ran = run(&["check", "mixed.toml"], work.path(), Duration::from_secs(60));
    assert_ne!(ran.code, Some(0));
    assert!(ran.stderr.contains("model.tabular: not with model.torchscript"), "{}", ran.stderr);
}

#[test]
fn a_classifier_of_the_same_table() {
    let work = tempfile::tempdir().unwrap();
    write_sales(work.path());
    // busy days: sales above 200
    let s = spec("", "[[stage]]\nlr = 1e-2\ncycles = 1\ncycle_len = 6\n")
        .replace("target = \"sales\"", "target = \"sales\"\nkind = \"classification\"\nthreshold = 200.0");
    std::fs::write(work.path().join("c.toml"), s).unwrap();
    let ran = run(&["train", "c.toml", "--out", "out"], work.path(), Duration::from_secs(600));
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    let r = read_json(&work.path().join("out/results.json"));
    let acc = r["final"]["accuracy"].as_f64().unwrap();
    assert!(acc > 0.85, "accuracy {acc}");
}

#[test]
fn bad_tabular_inputs_are_named() {
    let work = tempfile::tempdir().unwrap();
    write_sales(work.path());
    let train = |name: &str, toml: String| {
        std::fs::write(work.path().join(format!("{name}.toml")), toml).unwrap();
        run(
            &["train", &format!("{name}.toml"), "--out", &format!("{name}-out")],
            work.path(),
            Duration::from_secs(300),
        )
    };
    // a column the CSV lacks
    let ran = train("m", spec("", SGDR).replace("continuous = [\"temperature\"]", "continuous = [\"rain\"]"));
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr.contains("no column \"rain\"") && ran.stderr.contains("\"temperature\""),
        "{}",
        ran.stderr
    );
    // a target with a non-number
    let text = std::fs::read_to_string(work.path().join("sales.csv")).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[5] = "north,2021-01-02,3.0,plenty".into();
    std::fs::write(work.path().join("nan.csv"), lines.join("\n")).unwrap();
    let ran = train("n", spec("", SGDR).replace("sales.csv", "nan.csv"));
    assert_ne!(ran.code, Some(0));
    assert!(ran.stderr.contains("line 6, column \"sales\": \"plenty\" is not a number"), "{}", ran.stderr);
    // a ragged row
    lines[5] = "north,2021-01-02,3.0".into();
    std::fs::write(work.path().join("ragged.csv"), lines.join("\n")).unwrap();
    let ran = train("r", spec("", SGDR).replace("sales.csv", "ragged.csv"));
    assert_ne!(ran.code, Some(0));
    assert!(ran.stderr.contains("line 6: 3 fields, but the header has 4"), "{}", ran.stderr);
    // a spec with a column in two roles and image settings is refused before anything runs
    let mixed = spec("", SGDR)
        .replace("categorical = [\"store\"]", "categorical = [\"store\", \"temperature\"]")
        .replace("[optimizer]", "[data.augment]\npreset = \"side_on\"\n[optimizer]")
        .replace("batch_size = 64", "batch_size = 1");
    std::fs::write(work.path().join("x.toml"), mixed).unwrap();
    let ran = run(&["check", "x.toml"], work.path(), Duration::from_secs(60));
    assert_ne!(ran.code, Some(0));
    assert!(ran.stderr.contains("data.augment: not for a tabular model"), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("column \"temperature\" is already the categorical list's"),
        "{}",
        ran.stderr
    );
}

#[test]
fn check_accepts_the_tabular_examples() {
    let dir = tempfile::tempdir().unwrap();
    for ex in ["tabular_sales.toml", "tabular_superstore.toml", "tabular_torchscript.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(ex);
        let ran = run(&["check", path.to_str().unwrap()], dir.path(), Duration::from_secs(60));
        assert_eq!(ran.code, Some(0), "{ex}: {}", ran.stderr);
    }
}
