//! Property tests over the inputs a user or a store hands the core (issue 14's harness, run by
//! `make test` for a bounded number of cases): job specs (every example mutated: values swapped
//! for extreme or hostile ones, lines deleted, duplicated or inserted), augmentation transforms and
//! checkpoint manifests (valid ones mutated, and raw bytes). Each must give a value or an error,
//! never a panic; a spec that validates survives the JSON round trip a snapshot's `job.json` makes.

use cyclotron_core::checkpoint::{BlobEntry, CheckpointKind, Manifest};
use cyclotron_core::spec::JobSpec;
use proptest::prelude::*;

/// Right-hand sides a mutation may put in place of a value.
const VALUES: &[&str] = &[
    "-1",
    "0",
    "1",
    "2",
    "0.0",
    "-0.5",
    "1.5",
    "1e308",
    "-1e308",
    "1e-320",
    "nan",
    "inf",
    "-inf",
    "9223372036854775807",
    "-9223372036854775808",
    "4294967295",
    "4294967296",
    "\"\"",
    "\"x\"",
    "\"../../../etc/passwd\"",
    "\"file:///etc/shadow\"",
    "\"s3://\"",
    "\"s3://b/../k\"",
    "\"memory://\"",
    "\"auto\"",
    "\"cuda\"",
    "\"resnet18\"",
    "\"torchscript\"",
    "\"\\u0000\"",
    "[]",
    "[[]]",
    "[1e308, -1]",
    "[0, 0, 0]",
    "[\"a\", \"a\"]",
    "{}",
    "true",
    "false",
];

/// Keys a mutation may insert (in whatever table the line lands).
const KEYS: &[&str] = &[
    "batch_size",
    "threads",
    "prefetch",
    "epochs",
    "cycles",
    "cycle_len",
    "cycle_mult",
    "lr",
    "members",
    "valid_pct",
    "test_pct",
    "bptt",
    "width",
    "steps",
    "size",
    "group_lrs",
    "freeze",
    "freeze_to",
    "precompute",
    "seed",
    "output",
    "path",
    "source",
    "arch",
    "pretrained",
    "torchscript",
    "limit_train",
    "every_epochs",
    "keep_last",
    "max_pending",
    "clip",
    "momentum",
    "weight_decay",
    "layers",
    "dropout",
    "emb_sizes",
    "target",
    "categorical",
    "continuous",
    "threshold",
    "vocab_size",
    "tta",
    "device",
];

#[derive(Debug, Clone)]
enum Mutation {
    ReplaceValue { line: usize, value: usize },
    Delete { line: usize },
    Duplicate { line: usize },
    Insert { line: usize, key: usize, value: usize },
    Truncate { at: usize },
    LongString { line: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<usize>()).prop_map(|(line, value)| Mutation::ReplaceValue { line, value }),
        1 => any::<usize>().prop_map(|line| Mutation::Delete { line }),
        1 => any::<usize>().prop_map(|line| Mutation::Duplicate { line }),
        3 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(line, key, value)| Mutation::Insert { line, key, value }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<usize>(), 0usize..100_000).prop_map(|(line, len)| Mutation::LongString { line, len }),
    ]
}

/// Every example job spec of the repository (examples/*.toml), read when the test starts.
fn examples() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| (p.display().to_string(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    out.sort();
    assert!(out.len() >= 5, "examples/ should hold the example jobs, found {}", out.len());
    out
}

fn apply(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for m in mutations {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match *m {
            Mutation::ReplaceValue { line, value } => {
                // the line itself or the next `key = value` line after it
                if let Some(i) = (0..n).map(|k| (line + k) % n).find(|&i| {
                    let l = lines[i].trim_start();
                    l.contains('=') && !l.starts_with('#') && !l.starts_with('[')
                }) {
                    let key = lines[i].split('=').next().unwrap().to_string();
                    lines[i] = format!("{key}= {}", VALUES[value % VALUES.len()]);
                }
            }
            Mutation::Delete { line } => {
                lines.remove(line % n);
            }
            Mutation::Duplicate { line } => {
                let l = lines[line % n].clone();
                lines.insert(line % n, l);
            }
            Mutation::Insert { line, key, value } => {
                lines.insert(
                    line % (n + 1),
                    format!("{} = {}", KEYS[key % KEYS.len()], VALUES[value % VALUES.len()]),
                );
            }
            Mutation::Truncate { at } => {
                let joined = lines.join("\n");
                let mut cut = at % (joined.len() + 1);
                while !joined.is_char_boundary(cut) {
                    cut -= 1;
                }
                lines = joined[..cut].lines().map(String::from).collect();
            }
            Mutation::LongString { line, len } => {
                let i = line % n;
                if let Some((key, _)) = lines[i].split_once('=') {
                    lines[i] = format!("{key}= \"{}\"", "a".repeat(len));
                }
            }
        }
    }
    lines.join("\n")
}

/// What a caller does with a spec that validated: the stages' lengths, the planner's questions,
/// and the JSON round trip of a snapshot's `job.json` (the result must validate too).
fn use_valid(spec: &JobSpec) {
    for s in &spec.stages {
        let _ = s.total_epochs();
    }
    let _ = (spec.parallel_sweep(), spec.needs_lr(), spec.runs_lr_find(), spec.data.resolved_path());
    let json = serde_json::to_string(spec).expect("a valid spec serialises");
    let back: JobSpec = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert!(back.validate().is_ok(), "the JSON round trip of a valid spec must validate: {json}");
    assert_eq!(serde_json::to_string(&back).unwrap(), json, "the round trip changes nothing");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_example_specs_give_a_spec_or_an_error(
        pick in any::<usize>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let all = examples();
        let (name, text) = &all[pick % all.len()];
        let text = apply(text, &mutations);
        if let Ok(spec) = JobSpec::from_toml_str(&text, name) {
            if spec.validate().is_ok() {
                use_valid(&spec);
            }
        }
    }

    #[test]
    fn arbitrary_text_is_no_spec_and_no_panic(text in ".{0,400}") {
        if let Ok(spec) = JobSpec::from_toml_str(&text, "fuzz") {
            if spec.validate().is_ok() {
                use_valid(&spec);
            }
        }
    }

    #[test]
    fn augmentation_transforms_parse_or_say_why(text in "[a-z_]{0,12}(\\(([-0-9.e,x ]|inf|nan){0,16}\\))?") {
        let _ = cyclotron_core::spec::Transform::parse(&text);
    }

    #[test]
    fn mutated_manifests_parse_or_are_refused(
        step in any::<u64>(),
        stage in any::<usize>(),
        names in prop::collection::vec("[a-z./\\\\]{0,10}", 0..5),
        sha in "[0-9a-fA-Fg]{60,66}",
        cut in any::<usize>(),
        flip in any::<(usize, u8)>(),
        version in 0u32..3,
    ) {
        let m = Manifest {
            version,
            kind: CheckpointKind::Snapshot,
            step,
            stage,
            epoch: 1,
            cycle: Some(0),
            blobs: names.iter().map(|n| BlobEntry { name: n.clone(), size: 3, sha256: sha.clone() }).collect(),
            state: serde_json::json!({"k": [1, 2]}),
            created_unix_ms: 0,
        };
        let mut bytes = serde_json::to_vec(&m).unwrap();
        if let Ok(parsed) = Manifest::parse(&bytes, "m") {
            // what parses was checked: names plain and distinct, digests of 64 hex digits
            for b in &parsed.blobs {
                prop_assert!(!b.name.is_empty() && !b.name.contains('/') && b.name != "..");
                prop_assert_eq!(b.sha256.len(), 64);
            }
        }
        let i = flip.0 % bytes.len();
        bytes[i] ^= flip.1;
        let _ = Manifest::parse(&bytes, "m");
        bytes.truncate(cut % (bytes.len() + 1));
        let _ = Manifest::parse(&bytes, "m");
    }

    #[test]
    fn arbitrary_bytes_are_no_manifest_and_no_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Manifest::parse(&bytes, "m");
    }
}
