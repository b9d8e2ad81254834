//! Text end to end, as a user runs it: `cyclotron train` of a language model (truncated BPTT,
//! SGDR snapshots, perplexity) on a small generated corpus, then a sentiment classifier whose
//! encoder and tokenizer come from that model's run; and the bad inputs the text path must name.

use std::path::Path;
use std::time::Duration;

use cyclotron_tests::{run, run_fed};

/// A small corpus with structure a model can learn: sentences of "good"/"bad" words.
fn write_corpus(dir: &Path) {
    std::fs::create_dir_all(dir.join("corpus/sub")).unwrap();
    let good = ["a fine warm film", "great acting and a lovely story", "funny smart and moving"];
    let bad = ["a dull cold film", "awful acting and a boring story", "silly flat and tedious"];
    let mut lines = vec![];
    for i in 0..600 {
        let g = good[i % 3];
        let b = bad[(i / 3) % 3];
        lines.push(format!("the critic said {g} . then the critic said {b} ."));
    }
    std::fs::write(dir.join("corpus/a.txt"), lines[..300].join("\n")).unwrap();
    std::fs::write(dir.join("corpus/sub/b.txt"), lines[300..].join("\n")).unwrap();
    std::fs::write(dir.join("corpus/notes.md"), "not text for the model").unwrap();
    let mut csv = String::from("text,label\n");
    for i in 0..400 {
        let (t, l) = if i % 2 == 0 { (good[i % 3], "fresh") } else { (bad[i % 3], "rotten") };
        csv.push_str(&format!("\"{t}, really {i}\",{l}\n"));
    }
    csv.push_str("\"a plot summary, not a review\",plot\n");
    std::fs::write(dir.join("reviews.csv"), csv).unwrap();
}

const LSTM: &str =
    "[model]\narch = \"awd_lstm\"\n[model.lstm]\nemb_size = 16\nhidden_size = 24\nlayers = 2\n";

fn lm_spec() -> String {
    format!(
        "name = \"lm\"\nseed = 3\noutput = \"file://runs\"\n[data]\nsource = \"text_corpus\"\npath = \"corpus\"\nbatch_size = 8\nvalid_pct = 0.1\n[data.text]\nbptt = 16\nvocab_size = 80\n{LSTM}[optimizer]\nkind = \"adamw\"\nweight_decay = 0.01\nclip = 0.25\n[lr_find]\nstart = 1e-4\nend = 1.0\nsteps = 20\n[[stage]]\nlr = 3e-2\ncycles = 2\ncycle_len = 3\n[ensemble]\nmembers = 2\nselection = \"last\"\n[runtime]\nthreads = 1\n"
    )
}

/// The classifier: a frozen epoch, then two 4-epoch cycles at 3e-2 (converged on every seed tried;
/// two 2-epoch cycles at 1e-1 stopped at 84 % on an AVX2-only CPU with seed 3, 100 % elsewhere).
fn clf_spec(encoder: Option<&str>, lstm: &str) -> String {
    let enc = encoder.map_or(String::new(), |e| format!("encoder = \"{e}\"\n"));
    let model = lstm.replace("[model.lstm]", &format!("{enc}[model.lstm]"));
    format!(
        "name = \"clf\"\nseed = 3\noutput = \"file://runs\"\n[data]\nsource = \"text_csv\"\npath = \"reviews.csv\"\nbatch_size = 16\nvalid_pct = 0.2\ntest_pct = 0.2\n[data.text]\nlabels = [\"rotten\", \"fresh\"]\nvocab_size = 80\n{model}[optimizer]\nkind = \"adamw\"\nweight_decay = 0.01\n[[stage]]\nfreeze = true\nlr = 3e-2\nepochs = 1\n[[stage]]\nlr = 3e-2\ncycles = 2\ncycle_len = 4\n[runtime]\nthreads = 1\n"
    )
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_language_model_trains_and_its_encoder_starts_a_classifier() {
    let work = tempfile::tempdir().unwrap();
    write_corpus(work.path());
    std::fs::write(work.path().join("lm.toml"), lm_spec()).unwrap();
    let ran =
        run(&["train", "lm.toml", "--out", "lm-out", "--run", "r1"], work.path(), Duration::from_secs(600));
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    let lm = read_json(&work.path().join("lm-out/results.json"));
    assert_eq!(lm["eval_split"], "valid");
    let snaps = lm["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2, "a snapshot per SGDR cycle");
    for s in snaps {
        let ppl = s["perplexity"].as_f64().expect("each snapshot reports its perplexity");
        // 80 tokens: a uniform guess has perplexity 80; the corpus is very regular
        assert!(ppl > 1.0 && ppl < 30.0, "perplexity {ppl}");
        assert!(s.get("accuracy").is_none(), "a language model has no accuracy: {s}");
    }
    // a unigram model of these tokens has perplexity 28 (logged at load): the model learned context
    let last = snaps[1]["perplexity"].as_f64().unwrap();
    assert!(last < 10.0, "perplexity after 6 epochs {last}");
    assert!(ran.stderr.contains("unigram_perplexity"), "{}", ran.stderr);
    assert!(lm["ensemble"]["perplexity"].as_f64().unwrap() < 30.0);
    assert!(lm["lr_finds"].as_array().unwrap().len() == 1);
    for png in ["lr_find.png", "training.png", "validation.png", "ensemble.png"] {
        let bytes = std::fs::read(work.path().join("lm-out").join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{png}");
    }
    assert!(ran.stdout.contains("perplexity"), "{}", ran.stdout);
    let snapshot = work.path().join("runs/lm/r1/snapshots/cycle-1");
    let manifest = read_json(&snapshot.join("MANIFEST.json"));
    let blobs: Vec<&str> =
        manifest["blobs"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert!(blobs.contains(&"tokenizer.json") && blobs.contains(&"model.safetensors"), "{blobs:?}");
    // predict does not take a language model, and says where its encoder goes
    std::fs::write(work.path().join("one.txt"), "the critic said").unwrap();
    let ran = run(&["predict", "lm-out", "one.txt"], work.path(), Duration::from_secs(120));
    assert_ne!(ran.code, Some(0));
    assert!(ran.stderr.contains("LanguageModel") && ran.stderr.contains("model.encoder"), "{}", ran.stderr);

    // the classifier from the run's best snapshot: its encoder and tokenizer
    std::fs::write(work.path().join("clf.toml"), clf_spec(Some("file://runs/lm/r1"), LSTM)).unwrap();
    let ran =
        run(&["train", "clf.toml", "--out", "clf-out", "--run", "c1"], work.path(), Duration::from_secs(600));
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    let clf = read_json(&work.path().join("clf-out/results.json"));
    assert_eq!(clf["eval_split"], "test");
    let acc = clf["final"]["accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "the reviews are separable by their words: accuracy {acc}");
    assert!(clf["ensemble"]["accuracy"].as_f64().unwrap() > 0.9);

    // an encoder of another shape is named, with the setting to check
    let other = LSTM.replace("emb_size = 16", "emb_size = 12");
    std::fs::write(
        work.path().join("bad.toml"),
        clf_spec(Some("file://runs/lm/r1/snapshots/cycle-0"), &other),
    )
    .unwrap();
    let ran = run(&["train", "bad.toml", "--out", "bad-out"], work.path(), Duration::from_secs(300));
    assert_ne!(ran.code, Some(0));
    assert!(ran.stderr.contains("model.encoder") && ran.stderr.contains("[model.lstm]"), "{}", ran.stderr);
}

/// Reviews in a folder, split by file: `train.csv`, `valid.csv`, `test.csv`.
fn write_review_folder(dir: &Path) {
    let good = ["a fine warm film", "great acting and a lovely story", "funny smart and moving"];
    let bad = ["a dull cold film", "awful acting and a boring story", "silly flat and tedious"];
    std::fs::create_dir_all(dir.join("reviews")).unwrap();
    for (name, from, to) in [("train", 0, 240), ("valid", 240, 300), ("test", 300, 360)] {
        let mut csv = String::from("label,text\n");
        for i in from..to {
            let (t, l) = if i % 2 == 0 { (good[i % 3], "fresh") } else { (bad[i % 3], "rotten") };
            csv.push_str(&format!("{l},\"{t}, said critic {i}\"\n"));
        }
        std::fs::write(dir.join(format!("reviews/{name}.csv")), csv).unwrap();
    }
}

#[test]
fn a_text_classifier_predicts_new_texts_as_it_scored_its_test_split() {
    let work = tempfile::tempdir().unwrap();
    write_review_folder(work.path());
    let spec = format!(
        "name = \"reviews\"\nseed = 5\noutput = \"file://runs\"\n[data]\nsource = \"text_csv\"\npath = \"reviews\"\nbatch_size = 16\n[data.text]\nlabels = [\"rotten\", \"fresh\"]\nvocab_size = 80\n{LSTM}[optimizer]\nkind = \"adamw\"\nweight_decay = 0.01\n[[stage]]\nlr = 3e-2\ncycles = 2\ncycle_len = 4\n[ensemble]\nmembers = 2\nselection = \"last\"\n[runtime]\nthreads = 1\n"
    );
    std::fs::write(work.path().join("r.toml"), spec).unwrap();
    let ran = run(&["train", "r.toml", "--out", "out"], work.path(), Duration::from_secs(600));
    assert_eq!(ran.code, Some(0), "stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    let results = read_json(&work.path().join("out/results.json"));
    assert_eq!(results["eval_split"], "test");
    let snap = &results["snapshots"][1];
    let ensemble = &results["ensemble"];
    assert_eq!(ensemble["members"].as_array().unwrap().len(), 2, "{ensemble}");

    // the test split again, through predict: the run's figures exactly, alone and as an ensemble
    for (args, want) in [(vec!["--snapshot", "1"], snap), (vec![], ensemble)] {
        let mut all = vec!["predict", "out", "reviews/test.csv", "--json"];
        all.extend(args);
        let p = run(&all, work.path(), Duration::from_secs(120));
        assert_eq!(p.code, Some(0), "stdout:\n{}\nstderr:\n{}", p.stdout, p.stderr);
        let p: serde_json::Value = serde_json::from_str(&p.stdout).unwrap();
        assert_eq!(p["predictions"].as_array().unwrap().len(), 60);
        assert_eq!(p["labelled"], 60);
        assert_eq!(p["accuracy"], want["accuracy"], "{p}\nvs {want}");
        let (ours, theirs) = (p["loss"].as_f64().unwrap(), want["loss"].as_f64().unwrap());
        assert!((ours - theirs).abs() < 1e-9, "predict loss {ours} vs the run's {theirs}");
        assert_eq!(p["predictions"][0]["input"], "reviews/test.csv:2");
        assert_eq!(p["predictions"][0]["text"], "a fine warm film, said critic 300");
    }
    let acc = ensemble["accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "the reviews are separable by their words: accuracy {acc}");

    // new texts: a line each on standard input, a review per .txt file, a CSV row whose label the
    // model does not know (predicted, not scored)
    std::fs::write(work.path().join("mine.txt"), "Great acting\nand a lovely story.\n").unwrap();
    std::fs::write(
        work.path().join("more.csv"),
        "text,label\n\"a plot summary, not a review\",plot\n\"awful acting, dull film\",rotten\n",
    )
    .unwrap();
    let p = run_fed(
        &["predict", "out", "-", "mine.txt", "more.csv", "--csv", "--top", "1"],
        work.path(),
        Duration::from_secs(120),
        "a fine warm film\n\nawful acting and a boring story\n",
    );
    assert_eq!(p.code, Some(0), "stdout:\n{}\nstderr:\n{}", p.stdout, p.stderr);
    let rows: Vec<&str> = p.stdout.lines().collect();
    assert_eq!(rows[0], "input,rank,class,probability");
    let top: Vec<(&str, &str)> = rows[1..]
        .iter()
        .map(|r| {
            let f: Vec<&str> = r.split(',').collect();
            (f[0], f[2])
        })
        .collect();
    assert_eq!(
        top,
        vec![
            ("stdin:1", "fresh"),
            ("stdin:3", "rotten"),
            ("mine.txt", "fresh"),
            ("more.csv:2", top[3].1),
            ("more.csv:3", "rotten"),
        ],
        "{}",
        p.stdout
    );
    assert!(
        p.stderr.contains("1 inputs have a `label` that is not one of the model's classes"),
        "{}",
        p.stderr
    );
    // the table shows the texts and scores the one row it can
    let p = run(&["predict", "out", "more.csv"], work.path(), Duration::from_secs(120));
    assert_eq!(p.code, Some(0), "stdout:\n{}\nstderr:\n{}", p.stdout, p.stderr);
    assert!(
        p.stdout.contains("\"awful acting, dull film\"") && p.stdout.contains("on 1 labelled inputs"),
        "{}",
        p.stdout
    );

    // inputs it cannot take are named
    let bad = run(&["predict", "out", "mine.txt", "--labels", "x"], work.path(), Duration::from_secs(60));
    assert_ne!(bad.code, Some(0));
    assert!(bad.stderr.contains("--labels applies to image runs"), "{}", bad.stderr);
    std::fs::write(work.path().join("no_text.csv"), "review,label\nfine,fresh\n").unwrap();
    let bad = run(&["predict", "out", "no_text.csv"], work.path(), Duration::from_secs(60));
    assert_ne!(bad.code, Some(0));
    assert!(
        bad.stderr.contains("has no column \"text\"") && bad.stderr.contains("no_text.csv"),
        "{}",
        bad.stderr
    );
    std::fs::create_dir_all(work.path().join("nothing")).unwrap();
    let bad = run(&["predict", "out", "nothing"], work.path(), Duration::from_secs(60));
    assert_ne!(bad.code, Some(0));
    assert!(bad.stderr.contains("holds no .txt file"), "{}", bad.stderr);
}

#[test]
fn bad_text_inputs_are_named() {
    let work = tempfile::tempdir().unwrap();
    write_corpus(work.path());
    // an empty corpus
    std::fs::create_dir_all(work.path().join("empty")).unwrap();
    std::fs::write(work.path().join("empty/x.txt"), "\n  \n").unwrap();
    std::fs::write(work.path().join("e.toml"), lm_spec().replace("path = \"corpus\"", "path = \"empty\""))
        .unwrap();
    let ran = run(&["train", "e.toml", "--out", "e-out"], work.path(), Duration::from_secs(300));
    assert_ne!(ran.code, Some(0));
    assert!(ran.stderr.contains("holds no text"), "{}", ran.stderr);
    // a review longer than any limit
    let huge = "word ".repeat(300_000);
    std::fs::write(work.path().join("huge.csv"), format!("text,label\n\"{huge}\",fresh\nfine,rotten\n"))
        .unwrap();
    std::fs::write(work.path().join("h.toml"), clf_spec(None, LSTM).replace("reviews.csv", "huge.csv"))
        .unwrap();
    let ran = run(&["train", "h.toml", "--out", "h-out"], work.path(), Duration::from_secs(300));
    assert_ne!(ran.code, Some(0));
    assert!(ran.stderr.contains("row 2") && ran.stderr.contains("over the limit"), "{}", ran.stderr);
    // an encoder that is not a language model's snapshot
    std::fs::write(work.path().join("n.toml"), clf_spec(Some("file://nowhere"), LSTM)).unwrap();
    let ran = run(&["train", "n.toml", "--out", "n-out"], work.path(), Duration::from_secs(300));
    assert_ne!(ran.code, Some(0));
    assert!(ran.stderr.contains("neither a committed snapshot"), "{}", ran.stderr);
    // a spec that mixes text and image settings is refused before anything runs
    let mixed = lm_spec().replace("[optimizer]", "[data.augment]\npreset = \"side_on\"\n[optimizer]");
    std::fs::write(work.path().join("m.toml"), mixed).unwrap();
    let ran = run(&["check", "m.toml"], work.path(), Duration::from_secs(60));
    assert_ne!(ran.code, Some(0));
    assert!(ran.stderr.contains("data.augment: not for a language model"), "{}", ran.stderr);
}
