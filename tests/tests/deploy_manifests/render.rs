//! Reading `deploy/k8s`: YAML documents, kustomizations and a small kustomize renderer
//! (resources, JSON 6902 patch files, `namespace`, `images`; anything else is refused), and
//! accessors for the workloads it produces.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{k8s_dir, rel};

/// Every non-empty YAML document of `path`, as JSON values.
pub fn load_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", rel(path)));
    let mut docs = vec![];
    for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let v = <Value as serde::Deserialize>::deserialize(de)
            .unwrap_or_else(|e| panic!("{} document {i}: not valid YAML: {e}", rel(path)));
        if !v.is_null() {
            docs.push(v);
        }
    }
    docs
}

pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", rel(&d))) {
            let p = entry.expect("directory entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn kustomization_dirs() -> Vec<PathBuf> {
    yaml_files(&k8s_dir())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"))
        .map(|p| p.parent().expect("folder").to_path_buf())
        .collect()
}

pub fn kustomization(dir: &Path) -> Value {
    let docs = load_docs(&dir.join("kustomization.yaml"));
    assert_eq!(docs.len(), 1, "{}/kustomization.yaml: one document expected", rel(dir));
    docs.into_iter().next().expect("one document")
}

pub fn str_list(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// Paths a kustomization refers to (resources and patch files), resolved against its folder.
pub fn kustomization_refs(dir: &Path) -> Vec<PathBuf> {
    let k = kustomization(dir);
    let mut refs: Vec<PathBuf> = str_list(&k["resources"]).iter().map(|r| dir.join(r)).collect();
    for p in k["patches"].as_array().into_iter().flatten() {
        if let Some(path) = p["path"].as_str() {
            refs.push(dir.join(path));
        }
    }
    refs
}

/// Kinds that live outside namespaces, among those kustomize's namespace transformer knows.
fn cluster_scoped(kind: &str) -> bool {
    matches!(
        kind,
        "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition" | "PersistentVolume"
    ) || kind.starts_with("Cluster")
}

/// Render a kustomization: resources (files and folders), JSON 6902 patch files with a target,
/// `namespace` and `images`. Anything else fails, so this renderer never silently differs from
/// kustomize; `rendering_matches_kubectl_kustomize` compares the two when kubectl is present.
pub fn render(dir: &Path) -> Vec<Value> {
    let k = kustomization(dir);
    let known = ["apiVersion", "kind", "resources", "patches", "namespace", "images"];
    for key in k.as_object().expect("kustomization is a mapping").keys() {
        assert!(
            known.contains(&key.as_str()),
            "{}/kustomization.yaml: `{key}` is not rendered by tests/tests/deploy_manifests.rs \
             (it knows {known:?}); extend its renderer or use one of those",
            rel(dir)
        );
    }
    assert_eq!(k["kind"], "Kustomization", "{}/kustomization.yaml: kind", rel(dir));
    let mut objects = vec![];
    for r in str_list(&k["resources"]) {
        let p = dir.join(&r);
        assert!(p.exists(), "{}/kustomization.yaml lists `{r}`, which does not exist", rel(dir));
        if p.is_dir() {
            objects.extend(render(&p));
        } else {
            objects.extend(load_docs(&p));
        }
    }
    for patch in k["patches"].as_array().into_iter().flatten() {
        let path = patch["path"].as_str().unwrap_or_else(|| {
            panic!("{}/kustomization.yaml: only patch files (`path:`) are rendered, got {patch}", rel(dir))
        });
        let file = dir.join(path);
        assert!(file.exists(), "{}/kustomization.yaml patches `{path}`, which does not exist", rel(dir));
        let docs = load_docs(&file);
        assert!(
            docs.len() == 1 && docs[0].is_array(),
            "{}: expected one JSON 6902 patch (a list of operations)",
            rel(&file)
        );
        let target = &patch["target"];
        let (kind, name) = (target["kind"].as_str(), target["name"].as_str());
        assert!(
            kind.is_some() && name.is_some(),
            "{}: the patch needs target.kind and target.name",
            rel(dir)
        );
        let mut hits = 0;
        for o in objects.iter_mut() {
            let group_ok = target["group"].as_str().is_none_or(|g| {
                let api = o["apiVersion"].as_str().unwrap_or("");
                api.split_once('/').map_or(g.is_empty(), |(og, _)| og == g)
            });
            if o["kind"].as_str() == kind && o["metadata"]["name"].as_str() == name && group_ok {
                hits += 1;
                for op in docs[0].as_array().expect("operations") {
                    json_patch(o, op).unwrap_or_else(|e| panic!("{}: {op}: {e}", rel(&file)));
                }
            }
        }
        assert_eq!(hits, 1, "{}: the target {target} matches {hits} objects, 1 expected", rel(&file));
    }
    if let Some(ns) = k["namespace"].as_str() {
        for o in objects.iter_mut() {
            if !cluster_scoped(o["kind"].as_str().unwrap_or("")) {
                o["metadata"]["namespace"] = json!(ns);
            }
        }
    }
    for img in k["images"].as_array().into_iter().flatten() {
        let name = img["name"].as_str().expect("images[].name");
        for o in objects.iter_mut() {
            for c in containers_mut(o) {
                let image = c["image"].as_str().unwrap_or("").to_string();
                let bare = image.split('@').next().unwrap_or("");
                let bare = match bare.rsplit_once(':') {
                    Some((n, tag)) if !tag.contains('/') => n,
                    _ => bare,
                };
                if bare == name {
                    let new_name = img["newName"].as_str().unwrap_or(name);
                    c["image"] = json!(match img["newTag"].as_str() {
                        Some(tag) => format!("{new_name}:{tag}"),
                        None => new_name.to_string(),
                    });
                }
            }
        }
    }
    objects
}

fn pointer_tokens(path: &str) -> Result<Vec<String>, String> {
    let rest = path.strip_prefix('/').ok_or_else(|| format!("path `{path}` does not start with /"))?;
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

/// One RFC 6902 operation (`add`, `replace`, `remove`: what the overlays use).
pub fn json_patch(doc: &mut Value, op: &Value) -> Result<(), String> {
    let path = op["path"].as_str().ok_or("no path")?;
    let mut tokens = pointer_tokens(path)?;
    let last = tokens.pop().ok_or("empty path")?;
    let mut parent = &mut *doc;
    for t in &tokens {
        parent = match parent {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| format!("`{t}` does not exist"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("`{t}` is not an index"))?;
                a.get_mut(i).ok_or_else(|| format!("index {i} does not exist"))?
            }
            _ => return Err(format!("`{t}`: not a container")),
        };
    }
    let kind = op["op"].as_str().ok_or("no op")?;
    let value = || op.get("value").cloned().ok_or_else(|| format!("{kind} without a value"));
    match (kind, parent) {
        ("add", Value::Object(m)) => {
            m.insert(last, value()?);
        }
        ("add", Value::Array(a)) => {
            let i = if last == "-" { a.len() } else { last.parse().map_err(|_| "bad index")? };
            if i > a.len() {
                return Err(format!("index {i} past the end"));
            }
            a.insert(i, value()?);
        }
        ("replace", Value::Object(m)) => {
            let slot = m.get_mut(&last).ok_or_else(|| format!("`{last}` does not exist (replace)"))?;
            *slot = value()?;
        }
        ("replace", Value::Array(a)) => {
            let i: usize = last.parse().map_err(|_| "bad index")?;
            *a.get_mut(i).ok_or("index does not exist")? = value()?;
        }
        ("remove", Value::Object(m)) => {
            m.remove(&last).ok_or_else(|| format!("`{last}` does not exist (remove)"))?;
        }
        ("remove", Value::Array(a)) => {
            let i: usize = last.parse().map_err(|_| "bad index")?;
            if i >= a.len() {
                return Err("index does not exist".into());
            }
            a.remove(i);
        }
        (other, _) => return Err(format!("op `{other}` is not supported here")),
    }
    Ok(())
}

pub fn pod_spec(o: &Value) -> Option<&Value> {
    match o["kind"].as_str()? {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(&o["spec"]["template"]["spec"])
        }
        "Pod" => Some(&o["spec"]),
        _ => None,
    }
}

pub fn pod_spec_meta(o: &Value) -> &Value {
    if o["kind"] == "Pod" {
        &o["metadata"]
    } else {
        &o["spec"]["template"]["metadata"]
    }
}

fn containers_mut(o: &mut Value) -> Vec<&mut Value> {
    let spec = match o["kind"].as_str() {
        Some("Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job") => {
            &mut o["spec"]["template"]["spec"]
        }
        Some("Pod") => &mut o["spec"],
        _ => return vec![],
    };
    let Value::Object(spec) = spec else { return vec![] };
    let mut out = vec![];
    for (key, list) in spec.iter_mut() {
        if key == "containers" || key == "initContainers" {
            if let Value::Array(a) = list {
                out.extend(a.iter_mut());
            }
        }
    }
    out
}

pub fn containers(o: &Value) -> Vec<&Value> {
    let Some(spec) = pod_spec(o) else { return vec![] };
    ["initContainers", "containers"].iter().flat_map(|k| spec[*k].as_array().into_iter().flatten()).collect()
}

pub fn pod_labels(o: &Value) -> &Value {
    if o["kind"] == "Pod" {
        &o["metadata"]["labels"]
    } else {
        &o["spec"]["template"]["metadata"]["labels"]
    }
}

pub fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(sel) = selector.as_object() else { return false };
    !sel.is_empty() && sel.iter().all(|(k, v)| &labels[k] == v)
}

pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
}

pub fn name(o: &Value) -> String {
    format!("{} {}", o["kind"].as_str().unwrap_or("?"), o["metadata"]["name"].as_str().unwrap_or("?"))
}

pub fn replicas(o: &Value) -> usize {
    o["spec"]["replicas"].as_u64().unwrap_or(1) as usize
}
