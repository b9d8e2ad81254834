//! What a job spec may make this worker touch. A spec is data, never authority: whoever holds
//! the cluster token writes it, and the worker runs it with its own permissions. So before a run
//! starts, the agent checks every place the spec names against roots the worker was started with:
//!
//! | spec field | must be |
//! |---|---|
//! | `output = "file://P"` or a plain path | under an `--output-root` (default: the worker's working directory) |
//! | `data.path` (and Fashion-MNIST's default folder) | under a `--data-root` (default: the working directory, `/usr/share/datasets` and the data cache `$CYCLOTRON_DATA`, `~/.cache/cyclotron/data`) |
//! | `model.pretrained`, `model.encoder`, `model.torchscript` as `file://P` or a path | under a `--data-root` |
//! | `checkpoint.s3_endpoint` (for `s3://` outputs and weights) | one of `--allow-s3-endpoint` (none by default; without one, the worker's own `AWS_ENDPOINT_URL` or AWS applies) |
//!
//! Paths are resolved the way the training child sees them (relative to its working directory),
//! `..` is folded, and symbolic links of the part that exists are followed, so neither `../../etc`
//! nor a link out of a root escapes. A refusal fails the task permanently with the field, the
//! resolved path and the flag that would allow it.

use std::path::{Component, Path, PathBuf};

use cyclotron_core::spec::JobSpec;

/// The roots and endpoints one worker allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub data_roots: Vec<PathBuf>,
    pub output_roots: Vec<PathBuf>,
    /// S3 endpoints a spec may name (`http(s)://host:port`, compared without a trailing `/`).
    pub s3_endpoints: Vec<String>,
}

/// Where Debian's dataset packages put their files (the default data root besides the working directory).
pub const SYSTEM_DATASETS: &str = "/usr/share/datasets";

impl Default for Sandbox {
    /// The working directory for outputs; it and [`SYSTEM_DATASETS`] for data; no S3 endpoint.
    fn default() -> Self {
        Sandbox {
            data_roots: vec![
                PathBuf::from("."),
                PathBuf::from(SYSTEM_DATASETS),
                PathBuf::from(cyclotron_core::spec::data_dir()),
            ],
            output_roots: vec![PathBuf::from(".")],
            s3_endpoints: vec![],
        }
    }
}

impl Sandbox {
    /// Every problem with `spec` for a child running in `cwd`; empty when it may run.
    pub fn problems(&self, spec: &JobSpec, cwd: &Path) -> Vec<String> {
        let mut p = vec![];
        if let Some(path) = local_path(&spec.output) {
            self.confine("output", path, &self.output_roots, "--output-root", cwd, &mut p);
        }
        let data = spec.data.resolved_path();
        if !data.is_empty() {
            self.confine("data.path", &data, &self.data_roots, "--data-root", cwd, &mut p);
        }
        if let Some(path) = spec.model.pretrained.as_deref().and_then(local_path) {
            self.confine("model.pretrained", path, &self.data_roots, "--data-root", cwd, &mut p);
        }
        if let Some(path) = spec.model.encoder.as_deref().and_then(local_path) {
            self.confine("model.encoder", path, &self.data_roots, "--data-root", cwd, &mut p);
        }
        if let Some(path) = spec.model.torchscript.as_deref().and_then(local_path) {
            self.confine("model.torchscript", path, &self.data_roots, "--data-root", cwd, &mut p);
        }
        if let Some(endpoint) = &spec.checkpoint.s3_endpoint {
            let e = endpoint.trim_end_matches('/');
            if !self.s3_endpoints.iter().any(|a| a.trim_end_matches('/') == e) {
                p.push(format!(
                    "checkpoint.s3_endpoint {e:?} is not one this worker may reach; start it with --allow-s3-endpoint {e} (allowed now: {})",
                    if self.s3_endpoints.is_empty() { "none".to_string() } else { self.s3_endpoints.join(", ") }
                ));
            }
        }
        p
    }

    fn confine(
        &self,
        field: &str,
        path: &str,
        roots: &[PathBuf],
        flag: &str,
        cwd: &Path,
        p: &mut Vec<String>,
    ) {
        let resolved = resolve(cwd, Path::new(path));
        let roots: Vec<PathBuf> = roots.iter().map(|r| resolve(cwd, r)).collect();
        if roots.iter().any(|r| resolved.starts_with(r)) {
            return;
        }
        let shown: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        p.push(format!(
            "{field} {path:?} resolves to {} outside this worker's {flag} ({}); move it under one, or start the worker with {flag} covering it",
            resolved.display(),
            shown.join(", ")
        ));
    }
}

/// The local path of a store URL or a weights location (`file://P` or a plain path); `None` for
/// `s3://`, `memory://` and other schemes.
fn local_path(url: &str) -> Option<&str> {
    match url.strip_prefix("file://") {
        Some(p) => Some(p),
        None if !url.contains("://") => Some(url),
        None => None,
    }
}

/// `path` as the child sees it from `cwd`: absolute, `.` and `..` folded, and the longest part
/// that exists canonicalised (symbolic links followed).
pub fn resolve(cwd: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() { path.to_path_buf() } else { cwd.join(path) };
    let mut folded = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                folded.pop();
            }
            Component::CurDir => {}
            other => folded.push(other.as_os_str()),
        }
    }
    // follow links in the existing prefix; what does not exist yet cannot be a link
    let mut existing = folded.clone();
    let mut rest = vec![];
    while !existing.exists() {
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent().map(Path::to_path_buf)) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    for name in rest.into_iter().rev() {
        out.push(name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str, output: &str) -> JobSpec {
        JobSpec::from_toml_str(
            &format!("name = \"s\"\noutput = {output:?}\n[data]\nsource = \"fashion_mnist\"\n{extra}[model]\narch = \"small_cnn\"\n[[stage]]\nlr = 0.1\nepochs = 1\n"),
            "<t>",
        )
        .unwrap()
    }

    #[test]
    fn outputs_and_data_stay_under_their_roots() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        let sb = Sandbox::default();
        assert!(sb.problems(&spec("", "file://./store"), cwd).is_empty());
        assert!(sb.problems(&spec("", "runs"), cwd).is_empty());
        assert!(sb.problems(&spec("", "memory://"), cwd).is_empty());
        for bad in ["file:///etc", "file://../../x", "/tmp/elsewhere", "file://./a/../../b"] {
            let p = sb.problems(&spec("", bad), cwd);
            assert!(
                p.len() == 1 && p[0].starts_with("output ") && p[0].contains("--output-root"),
                "{bad}: {p:?}"
            );
        }
        let p = sb.problems(&spec("path = \"/etc\"\n", "file://./s"), cwd);
        assert!(p[0].starts_with("data.path \"/etc\"") && p[0].contains("--data-root"), "{p:?}");
        assert!(sb
            .problems(&spec("path = \"/usr/share/datasets/fashion-mnist\"\n", "file://./s"), cwd)
            .is_empty());
    }

    #[test]
    fn an_encoder_is_confined_like_pretrained_weights_and_the_data_cache_is_a_default_root() {
        let dir = tempfile::tempdir().unwrap();
        let sb = Sandbox::default();
        let mut s = spec("", "file://./s");
        s.model.encoder = Some("file:///etc/lm".into());
        let p = sb.problems(&s, dir.path());
        assert!(
            p.len() == 1 && p[0].starts_with("model.encoder \"/etc/lm\"") && p[0].contains("--data-root"),
            "{p:?}"
        );
        s.model.encoder = Some("file://./runs/lm/r1".into());
        assert!(sb.problems(&s, dir.path()).is_empty());
        s.model.torchscript = Some("/etc/model.pt".into());
        let p = sb.problems(&s, dir.path());
        assert!(p.len() == 1 && p[0].starts_with("model.torchscript \"/etc/model.pt\""), "{p:?}");
        s.model.torchscript = None;
        let cached = format!("{}/rt", cyclotron_core::spec::data_dir());
        assert!(sb.problems(&spec(&format!("path = \"{cached}\"\n"), "file://./s"), dir.path()).is_empty());
    }

    #[test]
    fn a_link_out_of_a_root_does_not_escape() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        let p = Sandbox::default().problems(&spec("", "file://./link/store"), dir.path());
        assert!(p.len() == 1 && p[0].contains("resolves to /etc/store"), "{p:?}");
    }

    #[test]
    fn s3_endpoints_must_be_allowed_by_the_worker() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec("", "s3://b/p").clone();
        let mut with_endpoint = s.clone();
        with_endpoint.checkpoint.s3_endpoint = Some("http://10.0.0.9:9000".into());
        assert!(Sandbox::default().problems(&s, dir.path()).is_empty(), "the worker's own endpoint applies");
        let p = Sandbox::default().problems(&with_endpoint, dir.path());
        assert!(p[0].contains("--allow-s3-endpoint http://10.0.0.9:9000"), "{p:?}");
        let allowed = Sandbox { s3_endpoints: vec!["http://10.0.0.9:9000/".into()], ..Sandbox::default() };
        assert!(allowed.problems(&with_endpoint, dir.path()).is_empty());
    }
}
