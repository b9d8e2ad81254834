//! Prometheus as far as the scrape config needs it: pod discovery's labels for a rendered
//! workload, relabelling (`keep`, `drop`, `replace`), and `promtool check config`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use super::argv::{container_ports, pod_name, run_bounded, FAKE_POD_IP};
use super::render::{containers, pod_spec_meta, str_list};

/// Prometheus relabelling (`keep`, `drop`, `replace`) of one target's labels; None: dropped.
pub fn relabel(mut labels: BTreeMap<String, String>, rules: &[Value]) -> Option<BTreeMap<String, String>> {
    for r in rules {
        let sources: Vec<String> = str_list(&r["source_labels"]);
        let sep = r["separator"].as_str().unwrap_or(";");
        let value =
            sources.iter().map(|s| labels.get(s).cloned().unwrap_or_default()).collect::<Vec<_>>().join(sep);
        let re = regex::Regex::new(&format!("^(?:{})$", r["regex"].as_str().unwrap_or("(.*)")))
            .expect("relabel regex");
        match r["action"].as_str().unwrap_or("replace") {
            "keep" if !re.is_match(&value) => return None,
            "drop" if re.is_match(&value) => return None,
            "keep" | "drop" => {}
            "replace" => {
                if let Some(caps) = re.captures(&value) {
                    let mut out = String::new();
                    caps.expand(
                        r["replacement"]
                            .as_str()
                            .unwrap_or("$1")
                            .replace("$1", "${1}")
                            .replace("$2", "${2}")
                            .as_str(),
                        &mut out,
                    );
                    let target = r["target_label"].as_str().expect("target_label");
                    if out.is_empty() {
                        labels.remove(target);
                    } else {
                        labels.insert(target.to_string(), out);
                    }
                }
            }
            other => panic!("relabel action {other} is not simulated here"),
        }
    }
    Some(labels)
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// Prometheus pod discovery: one target per declared container port.
pub fn pod_targets(o: &Value, namespace: &str) -> Vec<BTreeMap<String, String>> {
    let meta = pod_spec_meta(o);
    let mut base = BTreeMap::new();
    for (k, v) in meta["labels"].as_object().into_iter().flatten() {
        base.insert(format!("__meta_kubernetes_pod_label_{}", sanitize(k)), v.as_str().unwrap_or("").into());
    }
    for (k, v) in meta["annotations"].as_object().into_iter().flatten() {
        base.insert(
            format!("__meta_kubernetes_pod_annotation_{}", sanitize(k)),
            v.as_str().unwrap_or("").into(),
        );
    }
    base.insert("__meta_kubernetes_pod_name".into(), pod_name(o, 0));
    base.insert("__meta_kubernetes_namespace".into(), namespace.into());
    base.insert("__metrics_path__".into(), "/metrics".into());
    let mut out = vec![];
    for c in containers(o) {
        for (_, p) in container_ports(c) {
            let mut t = base.clone();
            t.insert("__address__".into(), format!("{FAKE_POD_IP}:{p}"));
            out.push(t);
        }
    }
    out
}

/// `promtool check config` on the scrape config, Kubernetes discovery replaced by a static target
/// (Debian's Prometheus is built without it); skipped without promtool.
pub fn promtool_check(cfg: &Value) {
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!("skipping promtool: not installed (make setup installs prometheus)");
        return;
    }
    let mut cfg = cfg.clone();
    for j in cfg["scrape_configs"].as_array_mut().expect("jobs") {
        let m = j.as_object_mut().expect("job");
        m.remove("kubernetes_sd_configs");
        m.insert("static_configs".into(), json!([{ "targets": ["127.0.0.1:9100"] }]));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, serde_yaml::to_string(&cfg).expect("yaml")).expect("write");
    let (code, out, err) =
        run_bounded(Command::new("promtool").arg("check").arg("config").arg(&path), Duration::from_secs(30));
    assert_eq!(code, Some(0), "promtool check config: {out}{err}");
}
