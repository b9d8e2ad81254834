//! The user's own model: `[model] arch = "torchscript"` with `torchscript = URL`, a module
//! exported with `torch.jit.script` or `torch.jit.trace` that takes images [B, C, H, W] and
//! returns logits [B, classes] (or, for a table, takes `(cats, conts)` and returns [B] / [B, 1]
//! for a regression, logits [B, classes] for a classifier); optionally `torchscript_groups`, its layer groups by parameter
//! name prefix. The checks that need only the spec are here; the module's own (its parameters,
//! what its forward takes and returns) are the worker's, when it loads it.

use super::{JobSpec, TaskKind, LAYER_GROUPS};

/// The `model.arch` of a user's TorchScript module.
pub const TORCHSCRIPT_ARCH: &str = "torchscript";
/// Most prefixes in one layer group of `model.torchscript_groups`.
pub const MAX_GROUP_PREFIXES: usize = 1_000;
/// Longest prefix (and URL) accepted.
const MAX_LEN: usize = 4_096;

/// Whether parameter `name` belongs to the module named `prefix`: the name itself, or a name
/// under it (`layer1` takes `layer1.0.conv1.weight`, not `layer10.weight`).
pub fn matches_prefix(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Whether `spec`'s kind of task can train a TorchScript module (image classification and
/// tabular data, so far).
pub(super) fn allowed(spec: &JobSpec) -> bool {
    matches!(spec.data.source.task(), TaskKind::ImageClassification | TaskKind::Tabular)
}

/// The problems of `model.torchscript` and `model.torchscript_groups`.
pub(super) fn problems(spec: &JobSpec) -> Vec<String> {
    let m = &spec.model;
    let mut p = vec![];
    let is_script = m.arch == TORCHSCRIPT_ARCH;
    match (&m.torchscript, is_script) {
        (None, true) => p.push(
            "model.torchscript: required with arch = \"torchscript\": the file://PATH (or s3://bucket/key) of a module exported with torch.jit.script or torch.jit.trace (see examples/export_model.py)"
                .into(),
        ),
        (Some(_), false) => p.push(format!(
            "model.torchscript: given, but model.arch is {:?}; set arch = \"torchscript\" to train your module, or remove torchscript",
            m.arch
        )),
        (Some(url), true) => {
            if url.len() > MAX_LEN || url.is_empty() {
                p.push(format!("model.torchscript: must be 1 to {MAX_LEN} characters, got {}", url.len()));
            } else if url.contains("://") && !url.starts_with("file://") && !url.starts_with("s3://") {
                p.push(format!(
                    "model.torchscript: {url:?}: unsupported scheme; use file://PATH, a plain path or s3://bucket/key"
                ));
            }
        }
        (None, false) => {}
    }
    if is_script && !allowed(spec) {
        let source = format!("{:?}", spec.data.source).to_lowercase();
        p.push(format!(
            "model.torchscript: not for a {} (data.source {source}); TorchScript modules train on image classification (fashion_mnist, image_folder) and tables (tabular_csv) so far",
            spec.data.source.task().name()
        ));
    }
    if let Some(groups) = &m.torchscript_groups {
        p.extend(group_problems(groups, is_script));
    }
    if is_script {
        if m.pretrained.is_some() {
            p.push(
                "model.pretrained: not with model.torchscript; the module starts from the weights it was exported with (load them in PyTorch before exporting)"
                    .into(),
            );
        }
        for (i, s) in spec.stages.iter().enumerate() {
            if s.precompute {
                p.push(format!(
                    "stage {}: precompute = true: not with model.torchscript (Cyclotron cannot split your module into a body and a head); train the head with freeze = true instead",
                    i + 1
                ));
            }
        }
        if m.tabular.is_some() {
            p.push(
                "model.tabular: not with model.torchscript (your module has its own embeddings and layers); remove [model.tabular]"
                    .into(),
            );
        }
        if m.width != 32 {
            p.push(
                "model.width: not with model.torchscript (the module has its own widths); remove it".into(),
            );
        }
    }
    p
}

fn group_problems(groups: &[Vec<String>], is_script: bool) -> Vec<String> {
    let mut p = vec![];
    if !is_script {
        p.push("model.torchscript_groups: only with arch = \"torchscript\"; remove it".into());
        return p;
    }
    if groups.len() != LAYER_GROUPS - 1 {
        p.push(format!(
            "model.torchscript_groups: give {} lists of parameter-name prefixes (the early body, the late body; every other parameter is the head), got {}",
            LAYER_GROUPS - 1,
            groups.len()
        ));
        return p;
    }
    let mut seen: Vec<&str> = vec![];
    for (i, g) in groups.iter().enumerate() {
        if g.is_empty() || g.len() > MAX_GROUP_PREFIXES {
            p.push(format!(
                "model.torchscript_groups[{i}]: give 1 to {MAX_GROUP_PREFIXES} prefixes, got {}",
                g.len()
            ));
            continue;
        }
        for prefix in g {
            if prefix.is_empty() || prefix.len() > MAX_LEN || prefix.starts_with('.') || prefix.ends_with('.')
            {
                let shown: String = prefix.chars().take(64).collect();
                p.push(format!(
                    "model.torchscript_groups[{i}]: {shown:?} is not a module name (like \"layer1\" or \"features.0\")"
                ));
            } else if seen.iter().any(|s| matches_prefix(prefix, s) || matches_prefix(s, prefix)) {
                p.push(format!("model.torchscript_groups[{i}]: {prefix:?} overlaps another prefix; name each module once"));
            } else {
                seen.push(prefix);
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::spec::JobSpec;

    fn check(model: &str, rest: &str) -> Vec<String> {
        let text = format!(
            "name = \"t\"\n[data]\nsource = \"fashion_mnist\"\n[model]\n{model}\n[[stage]]\nlr = 0.1\nepochs = 1\n{rest}"
        );
        match JobSpec::from_toml_str(&text, "<test>").unwrap().validate() {
            Ok(()) => vec![],
            Err(Error::InvalidSpec { problems }) => problems,
            Err(e) => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn a_torchscript_model_with_groups_is_valid() {
        let m = "arch = \"torchscript\"\ntorchscript = \"file:///m/model.pt\"\ntorchscript_groups = [[\"conv1\", \"bn1\", \"layer1\"], [\"layer2\", \"layer3.0\"]]";
        assert_eq!(check(m, ""), Vec::<String>::new());
        assert_eq!(check("arch = \"torchscript\"\ntorchscript = \"s3://b/k.pt\"", ""), Vec::<String>::new());
    }

    #[test]
    fn error_texts_name_the_setting_and_what_to_do() {
        let ts = "arch = \"torchscript\"\ntorchscript = \"file:///m.pt\"";
        let cases = [
            (
                "arch = \"torchscript\"".to_string(),
                "",
                "model.torchscript: required with arch = \"torchscript\"",
            ),
            (
                "arch = \"resnet18\"\ntorchscript = \"file:///m.pt\"".into(),
                "",
                "model.torchscript: given, but model.arch is \"resnet18\"; set arch = \"torchscript\"",
            ),
            (
                "arch = \"torchscript\"\ntorchscript = \"ftp://h/m.pt\"".into(),
                "",
                "model.torchscript: \"ftp://h/m.pt\": unsupported scheme",
            ),
            (format!("{ts}\ntorchscript_groups = [[\"a\"]]"), "", "model.torchscript_groups: give 2 lists"),
            (
                format!("{ts}\ntorchscript_groups = [[\"layer1\"], [\"layer1.0\"]]"),
                "",
                "model.torchscript_groups[1]: \"layer1.0\" overlaps another prefix",
            ),
            (
                format!("{ts}\ntorchscript_groups = [[], [\"b\"]]"),
                "",
                "model.torchscript_groups[0]: give 1 to",
            ),
            (
                format!("{ts}\ntorchscript_groups = [[\"a.\"], [\"b\"]]"),
                "",
                "model.torchscript_groups[0]: \"a.\" is not a module name",
            ),
            (
                "arch = \"small_cnn\"\ntorchscript_groups = [[\"a\"], [\"b\"]]".into(),
                "",
                "model.torchscript_groups: only with arch = \"torchscript\"",
            ),
            (
                format!("{ts}\npretrained = \"file:///w.safetensors\""),
                "",
                "model.pretrained: not with model.torchscript",
            ),
            (
                ts.to_string(),
                "freeze = true\nprecompute = true\n",
                "stage 1: precompute = true: not with model.torchscript",
            ),
            (format!("{ts}\nwidth = 8"), "", "model.width: not with model.torchscript"),
        ];
        for (model, rest, want) in cases {
            let problems = check(&model, rest);
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "{model:?}: want {want:?}, got {problems:?}"
            );
        }
        let unknown = check("arch = \"mine\"", "");
        let yours = ", or torchscript (your own module, with model.torchscript)";
        assert!(unknown.iter().any(|p| p.starts_with("model.arch") && p.ends_with(yours)), "{unknown:?}");
    }

    #[test]
    fn a_text_job_cannot_train_a_torchscript_module_yet() {
        let text = "name = \"t\"\n[data]\nsource = \"text_corpus\"\n[model]\narch = \"torchscript\"\ntorchscript = \"m.pt\"\n[[stage]]\nlr = 0.1\nepochs = 1\n";
        let Err(Error::InvalidSpec { problems }) = JobSpec::from_toml_str(text, "<t>").unwrap().validate()
        else {
            panic!("accepted")
        };
        assert!(
            problems.iter().any(
                |p| p.starts_with("model.torchscript: not for a language model (data.source textcorpus)")
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn a_tabular_job_trains_a_torchscript_module_without_model_tabular() {
        let text = |extra: &str| {
            format!("name = \"t\"\n[data]\nsource = \"tabular_csv\"\npath = \"t.csv\"\n[data.tabular]\ntarget = \"y\"\ncategorical = [\"a\"]\n[model]\narch = \"torchscript\"\ntorchscript = \"m.pt\"\n{extra}[[stage]]\nlr = 0.01\nepochs = 1\n")
        };
        let ok = JobSpec::from_toml_str(&text(""), "<t>").unwrap().validate();
        assert!(ok.is_ok(), "{ok:?}");
        let Err(Error::InvalidSpec { problems }) =
            JobSpec::from_toml_str(&text("[model.tabular]\nlayers = [8]\ndropout = [0.0]\n"), "<t>")
                .unwrap()
                .validate()
        else {
            panic!("accepted")
        };
        assert!(
            problems.iter().any(|p| p.starts_with("model.tabular: not with model.torchscript")),
            "{problems:?}"
        );
    }

    #[test]
    fn prefixes_match_whole_module_names() {
        use super::matches_prefix;
        assert!(matches_prefix("layer1.0.conv1.weight", "layer1"));
        assert!(matches_prefix("layer1.0.conv1.weight", "layer1.0"));
        assert!(matches_prefix("fc", "fc"));
        assert!(!matches_prefix("layer10.weight", "layer1"));
        assert!(!matches_prefix("fc2.weight", "fc"));
    }
}
