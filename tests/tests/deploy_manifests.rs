//! The deployment files under `deploy/` checked against the code they deploy, without a cluster:
//! every YAML document under `deploy/k8s` parses; kustomizations list files that exist (and every
//! manifest is listed); each kustomization is rendered (a small renderer for the features we use,
//! cross-checked against `kubectl kustomize` when it is installed); every container that runs
//! `cyclotron SUBCOMMAND …` has its real argv (Kubernetes `$(VAR)` expansion, the coordinators'
//! `sh -c` wrapper run by a real `sh`) parsed by the real binary; coordinator `--peers` agree with
//! the StatefulSet and its headless Service, workers' `--coordinator` with the peers; ports in
//! args, probes, Services and scrape annotations are container ports; the Prometheus scrape config
//! keeps the right pods on the right port with `honor_labels`; the overlays set the collective and
//! the GPU; the S3 Secret example names what object_store reads; the Dockerfile pins torch==2.11.0
//! and builds with `--features nccl`.
//!
//! `CYCLOTRON_DEPLOY_TEST_BIN=/path/to/cyclotron` checks the manifests against another build.

#[path = "deploy_manifests/argv.rs"]
mod argv;
#[path = "deploy_manifests/prometheus.rs"]
mod prometheus;
#[path = "deploy_manifests/render.rs"]
mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use argv::{
    container_ports, cyclotron_argv, entrypoint, flag, pod_name, port_of, resolve_port, run_bounded,
    FAKE_POD_IP,
};
use prometheus::{pod_targets, promtool_check, relabel};
use render::{
    containers, find, kustomization, kustomization_dirs, kustomization_refs, load_docs, name, pod_labels,
    pod_spec, pod_spec_meta, render, replicas, selects, str_list, yaml_files,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

fn k8s_dir() -> PathBuf {
    repo().join("deploy/k8s")
}

fn bin() -> PathBuf {
    std::env::var_os("CYCLOTRON_DEPLOY_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(cyclotron_tests::cyclotron_bin)
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo()).unwrap_or(path).display().to_string()
}

// ---------------------------------------------------------------------------------------------
// YAML files and rendering

/// The rendered kustomizations that are meant to be applied: the overlays (and the base, which
/// must be consistent too).
fn rendered() -> Vec<(String, Vec<Value>)> {
    let dirs = kustomization_dirs();
    assert!(dirs.len() >= 3, "expected base, cpu and gpu kustomizations under deploy/k8s, found {dirs:?}");
    dirs.iter().map(|d| (rel(d), render(d))).collect()
}

// ---------------------------------------------------------------------------------------------
// argv of containers

/// (rendered tree, workload, container, argv) for every container running `cyclotron`, every
/// pod ordinal of StatefulSets (their argv differ by ordinal).
fn cyclotron_containers() -> Vec<(String, Value, Value, usize, Vec<String>)> {
    let mut out = vec![];
    for (tree, objects) in rendered() {
        for o in &objects {
            let ordinals = if o["kind"] == "StatefulSet" { replicas(o) } else { 1 };
            for c in containers(o) {
                for i in 0..ordinals {
                    match cyclotron_argv(c, &pod_name(o, i)) {
                        Ok(Some(argv)) => out.push((tree.clone(), o.clone(), c.clone(), i, argv)),
                        Ok(None) => {}
                        Err(e) => panic!("{tree}: {} container {}: {e}", name(o), c["name"]),
                    }
                }
            }
        }
    }
    out
}

fn workload<'a>(objects: &'a [Value], subcommand: &str) -> (&'a Value, Vec<String>) {
    for o in objects {
        for c in containers(o) {
            if let Ok(Some(argv)) = cyclotron_argv(c, &pod_name(o, 0)) {
                if argv.get(1).map(String::as_str) == Some(subcommand) {
                    return (o, argv);
                }
            }
        }
    }
    panic!("no workload runs `cyclotron {subcommand}`")
}

// ---------------------------------------------------------------------------------------------
// tests: files

#[test]
fn every_yaml_document_parses_and_names_its_kind() {
    let files = yaml_files(&k8s_dir());
    assert!(files.len() >= 8, "expected the base and overlays under deploy/k8s, found {files:?}");
    let patch_files: BTreeSet<PathBuf> = kustomization_dirs()
        .iter()
        .flat_map(|d| {
            kustomization(d)["patches"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["path"].as_str().map(|s| d.join(s)))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut objects = 0;
    for f in &files {
        let docs = load_docs(f);
        assert!(!docs.is_empty(), "{}: no YAML document", rel(f));
        if f.file_name().is_some_and(|n| n == "kustomization.yaml") {
            continue; // read by kustomization()
        }
        if patch_files.contains(f) {
            for op in docs[0].as_array().unwrap_or_else(|| panic!("{}: a patch is a list", rel(f))) {
                assert!(op["op"].is_string() && op["path"].is_string(), "{}: bad operation {op}", rel(f));
            }
            continue;
        }
        for d in &docs {
            assert!(
                d["apiVersion"].is_string() && d["kind"].is_string(),
                "{}: a document without apiVersion/kind",
                rel(f)
            );
            assert!(d["metadata"]["name"].is_string(), "{}: {} without metadata.name", rel(f), d["kind"]);
            objects += 1;
        }
    }
    assert!(objects >= 8, "expected at least 8 Kubernetes objects, found {objects}");
}

#[test]
fn kustomizations_list_files_that_exist_and_every_manifest_is_listed() {
    let dirs = kustomization_dirs();
    for want in ["base", "overlays/cpu", "overlays/gpu"] {
        assert!(dirs.contains(&k8s_dir().join(want)), "deploy/k8s/{want}/kustomization.yaml is missing");
    }
    let mut listed = BTreeSet::new();
    for d in &dirs {
        for r in kustomization_refs(d) {
            assert!(r.exists(), "{}/kustomization.yaml refers to {}, which does not exist", rel(d), rel(&r));
            listed.insert(r.canonicalize().expect("canonical path"));
        }
    }
    for f in yaml_files(&k8s_dir()) {
        let file_name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if file_name == "kustomization.yaml" || file_name.ends_with(".example.yaml") {
            continue;
        }
        assert!(
            listed.contains(&f.canonicalize().expect("canonical path")),
            "{} is in no kustomization: `kubectl apply -k` would silently leave it out \
             (name it *.example.yaml if that is meant)",
            rel(&f)
        );
    }
}

#[test]
fn rendering_matches_kubectl_kustomize() {
    if Command::new("kubectl").arg("version").arg("--client").output().is_err() {
        eprintln!("skipping: kubectl is not installed (the other tests use this file's renderer)");
        return;
    }
    for d in kustomization_dirs() {
        let (code, out, err) =
            run_bounded(Command::new("kubectl").arg("kustomize").arg(&d), Duration::from_secs(30));
        assert_eq!(code, Some(0), "kubectl kustomize {}: {err}", rel(&d));
        let mut theirs: Vec<Value> = serde_yaml::Deserializer::from_str(&out)
            .map(|de| <Value as serde::Deserialize>::deserialize(de).expect("kustomize output"))
            .filter(|v| !v.is_null())
            .collect();
        let mut ours = render(&d);
        let key = |v: &Value| format!("{}/{}", v["kind"], v["metadata"]["name"]);
        theirs.sort_by_key(key);
        ours.sort_by_key(key);
        assert_eq!(ours.len(), theirs.len(), "{}: object count", rel(&d));
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a, b, "{}: {} renders differently here than with kubectl kustomize", rel(&d), name(a));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tests: the CLI

#[test]
fn every_cyclotron_command_in_the_manifests_is_accepted_by_the_real_binary() {
    let found = cyclotron_containers();
    let subcommands: BTreeSet<&str> =
        found.iter().filter_map(|(.., argv)| argv.get(1).map(String::as_str)).collect();
    assert!(
        subcommands.contains("coordinator") && subcommands.contains("worker"),
        "expected containers running `cyclotron coordinator` and `cyclotron worker`, found {subcommands:?}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut checked = BTreeSet::new();
    for (tree, o, c, _, argv) in &found {
        let sub = argv.get(1).cloned().unwrap_or_default();
        let help = helps.entry(sub.clone()).or_insert_with(|| {
            let mut cmd = Command::new(bin());
            cmd.arg(&sub).arg("--help").current_dir(dir.path());
            let (code, out, err) = run_bounded(&mut cmd, Duration::from_secs(30));
            assert_eq!(
                code,
                Some(0),
                "{tree}: {} runs `cyclotron {sub}`, which {} does not know: {}",
                name(o),
                bin().display(),
                err.trim()
            );
            out
        });
        let unknown: Vec<&str> = argv[2..]
            .iter()
            .filter(|a| a.starts_with("--"))
            .map(|a| a.split('=').next().unwrap_or(a))
            .filter(|f| !help.split(|ch: char| ch.is_whitespace() || ch == ',').any(|w| w == *f))
            .collect();
        assert!(
            unknown.is_empty(),
            "{tree}: {} container {}: `cyclotron {sub}` has no {unknown:?} (see `cyclotron {sub} --help`)",
            name(o),
            c["name"]
        );
        // the real parser: values too (addresses, peers, numbers); --help at the end exits 0 only
        // when everything before it parses
        if checked.insert(argv.clone()) {
            let mut cmd = Command::new(bin());
            cmd.args(&argv[1..]).arg("--help").current_dir(dir.path());
            let (code, _, err) = run_bounded(&mut cmd, Duration::from_secs(30));
            assert_eq!(
                code,
                Some(0),
                "{tree}: {} container {}: the binary rejects {:?}: {}",
                name(o),
                c["name"],
                &argv[1..],
                err.trim()
            );
        }
    }
}

#[test]
fn coordinator_peers_match_the_statefulset_and_its_headless_service() {
    for (tree, objects) in rendered() {
        let (sts, _) = workload(&objects, "coordinator");
        assert_eq!(sts["kind"], "StatefulSet", "{tree}: coordinators need stable names");
        assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel", "{tree}: all replicas start together");
        let n = replicas(sts);
        assert!(n >= 3 && n % 2 == 1, "{tree}: {n} coordinator replicas; raft wants an odd number >= 3");
        let sts_name = sts["metadata"]["name"].as_str().expect("name");
        let svc_name = sts["spec"]["serviceName"].as_str().expect("serviceName");
        let svc = find(&objects, "Service", svc_name);
        assert_eq!(svc["spec"]["clusterIP"], "None", "{tree}: Service {svc_name} must be headless");
        assert_eq!(
            svc["spec"]["publishNotReadyAddresses"], true,
            "{tree}: replicas must find each other before they are ready (a quorum makes them ready)"
        );
        assert!(
            selects(&svc["spec"]["selector"], pod_labels(sts)),
            "{tree}: {svc_name} does not select the coordinators"
        );
        let c = containers(sts).into_iter().next().expect("a container");
        for i in 0..n {
            let argv = cyclotron_argv(c, &pod_name(sts, i)).expect("argv").expect("cyclotron");
            let id: u64 = flag(&argv, "--id").expect("--id").parse().expect("numeric --id");
            assert_eq!(id, i as u64 + 1, "{tree}: pod {} has raft id {id}", pod_name(sts, i));
            let listen = flag(&argv, "--listen").expect("--listen");
            let peers = flag(&argv, "--peers").expect("--peers");
            let mut ids = vec![];
            for p in peers.split(',') {
                let (pid, addr) = p.split_once('=').expect("ID=HOST:PORT");
                let pid: usize = pid.parse().expect("peer id");
                let (host, _) = addr.rsplit_once(':').expect("HOST:PORT");
                let want = format!("{sts_name}-{}.{svc_name}", pid - 1);
                assert!(
                    host == want || host.starts_with(&format!("{want}.")),
                    "{tree}: peer {pid} is {host}, expected {want} (pod {} of the headless Service)",
                    pid - 1
                );
                assert_eq!(port_of(addr), port_of(listen), "{tree}: peer {pid}'s port is not --listen's");
                let svc_port = svc["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|sp| sp["port"].as_u64() == Some(u64::from(port_of(addr))))
                    .unwrap_or_else(|| panic!("{tree}: {svc_name} has no port {}", port_of(addr)));
                assert_eq!(
                    resolve_port(c, &svc_port["targetPort"]),
                    Some(u64::from(port_of(listen))),
                    "{tree}: {svc_name}'s targetPort is not the gRPC port"
                );
                ids.push(pid);
            }
            ids.sort();
            assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "{tree}: --peers ids vs {n} replicas");
        }
        // the wrapper refuses a pod name without an ordinal instead of guessing an id
        let err = cyclotron_argv(c, "coordinator").expect_err("a pod name without an ordinal must fail");
        assert!(err.contains("ordinal"), "{tree}: unclear wrapper error: {err}");
        // one replica at a time may be disrupted
        let pdb = objects
            .iter()
            .find(|o| {
                o["kind"] == "PodDisruptionBudget"
                    && selects(&o["spec"]["selector"]["matchLabels"], pod_labels(sts))
            })
            .unwrap_or_else(|| panic!("{tree}: no PodDisruptionBudget for the coordinators"));
        assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{tree}: coordinator PDB");
    }
}

#[test]
fn workers_reach_every_coordinator_and_stop_within_their_grace() {
    for (tree, objects) in rendered() {
        let (sts, coord) = workload(&objects, "coordinator");
        let (worker, argv) = workload(&objects, "worker");
        let peers: BTreeSet<String> = flag(&coord, "--peers")
            .expect("--peers")
            .split(',')
            .map(|p| p.split_once('=').expect("ID=ADDR").1.to_string())
            .collect();
        let listed: BTreeSet<String> = flag(&argv, "--coordinator")
            .expect("workers need --coordinator")
            .split(',')
            .map(|a| a.trim_start_matches("http://").to_string())
            .collect();
        assert_eq!(listed, peers, "{tree}: workers' --coordinator must list every coordinator replica");
        assert!(replicas(sts) >= 3);
        // the ring address: this pod's IP, a container port
        let data = flag(&argv, "--data-addr").expect("--data-addr");
        assert!(
            data.starts_with(&format!("{FAKE_POD_IP}:")),
            "{tree}: --data-addr {data} must be the pod IP (other workers dial it)"
        );
        assert!(port_of(data) != 0, "{tree}: a fixed ring port, declared as a containerPort");
        let stop_grace: f64 = flag(&argv, "--stop-grace").map_or(10.0, |s| s.parse().expect("--stop-grace"));
        let grace = pod_spec(worker).expect("pod")["terminationGracePeriodSeconds"].as_f64().unwrap_or(30.0);
        assert!(
            grace >= stop_grace + 10.0,
            "{tree}: terminationGracePeriodSeconds {grace} must outlast the worker's --stop-grace {stop_grace} (+10 s)"
        );
        assert!(replicas(worker) >= 1);
    }
}

#[test]
fn ports_in_args_probes_services_and_annotations_are_container_ports() {
    for (tree, o, c, _, argv) in cyclotron_containers() {
        let ports: Vec<u64> = container_ports(&c).iter().map(|(_, p)| *p).collect();
        for f in ["--listen", "--metrics-addr", "--data-addr", "--web-addr"] {
            if let Some(v) = flag(&argv, f).filter(|v| *v != "off") {
                let p = u64::from(port_of(v));
                assert!(
                    ports.contains(&p),
                    "{tree}: {} {f} {v}: port {p} is not a containerPort {ports:?}",
                    name(&o)
                );
            }
        }
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            let pr = &c[probe];
            for kind in ["tcpSocket", "httpGet", "grpc"] {
                if !pr[kind].is_null() {
                    assert!(
                        resolve_port(&c, &pr[kind]["port"]).is_some(),
                        "{tree}: {} {probe} port",
                        name(&o)
                    );
                }
            }
        }
        let ann = &pod_spec_meta(&o)["annotations"];
        if ann["prometheus.io/scrape"] == "true" {
            let metrics = flag(&argv, "--metrics-addr")
                .unwrap_or_else(|| panic!("{tree}: {} scraped without --metrics-addr", name(&o)));
            assert_eq!(
                ann["prometheus.io/port"].as_str().map(|p| p.parse::<u16>().expect("port")),
                Some(port_of(metrics)),
                "{tree}: {} prometheus.io/port vs --metrics-addr",
                name(&o)
            );
        }
    }
    for (tree, objects) in rendered() {
        for svc in objects.iter().filter(|o| o["kind"] == "Service") {
            let pods: Vec<&Value> =
                objects.iter().filter(|o| selects(&svc["spec"]["selector"], pod_labels(o))).collect();
            assert!(!pods.is_empty(), "{tree}: {} selects no pods", name(svc));
            for sp in svc["spec"]["ports"].as_array().into_iter().flatten() {
                let target = if sp["targetPort"].is_null() { &sp["port"] } else { &sp["targetPort"] };
                for p in &pods {
                    assert!(
                        containers(p).iter().any(|c| resolve_port(c, target).is_some()),
                        "{tree}: {} targetPort {target} is no container port of {}",
                        name(svc),
                        name(p)
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tests: overlays, security, S3

fn worker_of(objects: &[Value]) -> (&Value, &Value) {
    let (w, _) = workload(objects, "worker");
    (w, containers(w).into_iter().next().expect("worker container"))
}

fn env_value<'a>(c: &'a Value, var: &str) -> Option<&'a str> {
    c["env"].as_array()?.iter().find(|e| e["name"] == var).and_then(|e| e["value"].as_str())
}

#[test]
fn overlays_set_the_collective_and_one_gpu_per_gpu_worker() {
    let group_rs = std::fs::read_to_string(repo().join("worker/src/distributed/group.rs")).expect("group.rs");
    let overlays = k8s_dir().join("overlays");
    let cpu = render(&overlays.join("cpu"));
    let gpu = render(&overlays.join("gpu"));
    let base = render(&k8s_dir().join("base"));
    for (tree, objects, collective) in [("cpu", &cpu, "ring"), ("gpu", &gpu, "nccl")] {
        let (_, c) = worker_of(objects);
        assert_eq!(
            env_value(c, "CYCLOTRON_COLLECTIVE"),
            Some(collective),
            "{tree} overlay: CYCLOTRON_COLLECTIVE"
        );
        assert!(
            group_rs.contains(&format!("Ok(\"{collective}\")")),
            "worker/src/distributed/group.rs no longer accepts CYCLOTRON_COLLECTIVE={collective}"
        );
    }
    for (tree, objects) in [("base", &base), ("cpu", &cpu)] {
        for o in objects {
            for c in containers(o) {
                for part in ["limits", "requests"] {
                    assert!(
                        c["resources"][part]["nvidia.com/gpu"].is_null(),
                        "{tree}: {} asks for a GPU",
                        name(o)
                    );
                }
            }
        }
    }
    let (w, c) = worker_of(&gpu);
    assert_eq!(
        c["resources"]["limits"]["nvidia.com/gpu"], 1,
        "gpu overlay: exactly one GPU per worker pod (NCCL refuses two ranks on one GPU)"
    );
    let argv = cyclotron_argv(c, "w").expect("argv").expect("cyclotron");
    assert_eq!(flag(&argv, "--gpus"), Some("1"), "gpu overlay: the worker must offer its GPU (--gpus 1)");
    let spec = pod_spec(w).expect("pod spec");
    assert!(
        spec["nodeSelector"].as_object().is_some_and(|m| !m.is_empty()),
        "gpu overlay: nodeSelector for GPU nodes"
    );
    assert!(
        spec["tolerations"].as_array().into_iter().flatten().any(|t| t["key"] == "nvidia.com/gpu"),
        "gpu overlay: tolerate the nvidia.com/gpu taint"
    );
    // coordinators never need a GPU
    let (sts, _) = workload(&gpu, "coordinator");
    assert!(containers(sts).iter().all(|c| c["resources"]["limits"]["nvidia.com/gpu"].is_null()));
}

#[test]
fn containers_have_resources_and_run_as_the_images_non_root_user() {
    let uid = docker_user();
    for (tree, objects) in rendered() {
        for o in &objects {
            let Some(spec) = pod_spec(o) else { continue };
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{tree}: {} runAsNonRoot", name(o));
            assert_eq!(
                spec["securityContext"]["runAsUser"].as_u64(),
                Some(uid),
                "{tree}: {} uid vs the Dockerfile's USER",
                name(o)
            );
            assert_eq!(
                spec["securityContext"]["fsGroup"].as_u64(),
                Some(uid),
                "{tree}: {} fsGroup (writable volumes)",
                name(o)
            );
            for c in containers(o) {
                for r in ["cpu", "memory"] {
                    assert!(!c["resources"]["requests"][r].is_null(), "{tree}: {} requests.{r}", name(o));
                }
                assert!(!c["resources"]["limits"]["memory"].is_null(), "{tree}: {} limits.memory", name(o));
            }
        }
        // the coordinators' raft state outlives pods
        let (sts, argv) = workload(&objects, "coordinator");
        let data_dir = flag(&argv, "--data-dir").expect("--data-dir");
        let c = containers(sts)[0];
        let claims: Vec<&str> = sts["spec"]["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["metadata"]["name"].as_str())
            .collect();
        assert!(
            c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| claims.contains(&m["name"].as_str().unwrap_or(""))
                    && data_dir.starts_with(m["mountPath"].as_str().unwrap_or("-"))),
            "{tree}: --data-dir {data_dir} is not on a volumeClaimTemplate"
        );
    }
}

#[test]
fn s3_secret_example_names_what_object_store_reads_and_workers_load_it() {
    let s3_rs = std::fs::read_to_string(repo().join("core/src/checkpoint/s3.rs")).expect("s3.rs");
    let example = k8s_dir().join("base/s3-secret.example.yaml");
    let docs = load_docs(&example);
    let secret = &docs[0];
    assert_eq!(secret["kind"], "Secret");
    let data = secret["stringData"].as_object().expect("stringData");
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
        assert!(data.contains_key(key), "{}: {key} missing", rel(&example));
    }
    for key in data.keys() {
        assert!(
            s3_rs.contains(key.as_str()),
            "{}: {key} is not read by core/src/checkpoint/s3.rs",
            rel(&example)
        );
    }
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert!(
            data[key].as_str().is_some_and(|v| v.contains("REPLACE")),
            "{}: {key} must be a marked placeholder",
            rel(&example)
        );
    }
    let secret_name = secret["metadata"]["name"].as_str().expect("name");
    for (tree, objects) in rendered() {
        assert!(
            !objects.iter().any(|o| o["kind"] == "Secret" && o["metadata"]["name"] == secret_name),
            "{tree}: the placeholder Secret must not be applied (it would overwrite real credentials)"
        );
        let (_, c) = worker_of(&objects);
        assert!(
            c["envFrom"].as_array().into_iter().flatten().any(|e| e["secretRef"]["name"] == secret_name),
            "{tree}: workers must load Secret {secret_name} through envFrom"
        );
        let ns = objects.iter().find(|o| o["kind"] == "Namespace").expect("a Namespace")["metadata"]["name"]
            .clone();
        assert_eq!(secret["metadata"]["namespace"], ns, "{}: namespace", rel(&example));
    }
}

// ---------------------------------------------------------------------------------------------
// tests: Prometheus

#[test]
fn scrape_config_keeps_each_role_on_its_metrics_port_with_honor_labels() {
    let example = load_docs(&repo().join("deploy/prometheus/prometheus.yml"));
    let example_jobs: BTreeSet<String> = example[0]["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .map(|j| j["job_name"].as_str().expect("job_name").to_string())
        .collect();
    for (tree, objects) in rendered() {
        let cm = find(&objects, "ConfigMap", "cyclotron-prometheus-scrape");
        let (file, text) = cm["data"].as_object().expect("data").iter().next().expect("one file");
        let cfg: Value = serde_yaml::from_str(text.as_str().expect("text"))
            .unwrap_or_else(|e| panic!("{tree}: {file}: {e}"));
        let jobs = cfg["scrape_configs"].as_array().expect("scrape_configs");
        let names: BTreeSet<String> =
            jobs.iter().map(|j| j["job_name"].as_str().expect("job_name").to_string()).collect();
        assert_eq!(names, example_jobs, "{tree}: job names differ from deploy/prometheus/prometheus.yml");
        let ns = cm["metadata"]["namespace"].as_str().expect("namespace");
        for (job, sub) in [("cyclotron-coordinator", "coordinator"), ("cyclotron-worker", "worker")] {
            let j = jobs.iter().find(|j| j["job_name"] == job).expect("job");
            assert_eq!(
                j["honor_labels"], true,
                "{tree}: {job}: honor_labels (workers' own `job` label, deploy/README.md)"
            );
            let sd = &j["kubernetes_sd_configs"][0];
            assert_eq!(sd["role"], "pod", "{tree}: {job}");
            assert_eq!(
                str_list(&sd["namespaces"]["names"]),
                vec![ns.to_string()],
                "{tree}: {job} looks in another namespace"
            );
            let rules = j["relabel_configs"].as_array().expect("relabel_configs");
            let (target_workload, argv) = workload(&objects, sub);
            let metrics_port = port_of(flag(&argv, "--metrics-addr").expect("--metrics-addr"));
            let mut kept = BTreeSet::new();
            for o in objects.iter().filter(|o| pod_spec(o).is_some()) {
                for t in pod_targets(o, ns) {
                    if let Some(l) = relabel(t, rules) {
                        assert_eq!(name(o), name(target_workload), "{tree}: {job} scrapes {}", name(o));
                        kept.insert((l["__address__"].clone(), l["__metrics_path__"].clone()));
                    }
                }
            }
            let want: BTreeSet<_> =
                [(format!("{FAKE_POD_IP}:{metrics_port}"), "/metrics".to_string())].into();
            assert_eq!(kept, want, "{tree}: {job} targets after relabelling");
        }
        promtool_check(&cfg);
    }
}

// ---------------------------------------------------------------------------------------------
// tests: the Dockerfile

fn dockerfile() -> String {
    std::fs::read_to_string(repo().join("deploy/Dockerfile")).expect("deploy/Dockerfile")
}

/// The numeric uid of the runtime stage's USER.
fn docker_user() -> u64 {
    let text = dockerfile();
    let user =
        text.lines().rev().find_map(|l| l.trim().strip_prefix("USER ")).expect("deploy/Dockerfile sets USER");
    let uid = user.split(':').next().unwrap_or("").trim();
    let uid: u64 =
        uid.parse().unwrap_or_else(|_| panic!("USER {user}: use a numeric uid (runAsNonRoot needs one)"));
    assert_ne!(uid, 0, "the image must not run as root");
    uid
}

#[test]
fn dockerfile_pins_torch_builds_with_nccl_and_runs_cyclotron() {
    let text = dockerfile();
    // one logical line per instruction (continuations joined, comments dropped)
    let mut lines: Vec<String> = vec![];
    let mut cur = String::new();
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('#') {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(body) => {
                cur.push_str(body);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                if !cur.trim().is_empty() {
                    lines.push(std::mem::take(&mut cur));
                }
                cur.clear();
            }
        }
    }
    let froms: Vec<&String> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "a builder and a runtime stage, got {froms:?}");
    assert!(froms[0].starts_with("FROM rust:1-bookworm AS builder"), "builder: {}", froms[0]);
    assert!(froms[1].starts_with("FROM debian:bookworm-slim"), "runtime: {}", froms[1]);

    let setup = std::fs::read_to_string(repo().join("scripts/setup.sh")).expect("scripts/setup.sh");
    let want = setup
        .lines()
        .find_map(|l| l.strip_prefix("want_torch=\""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("scripts/setup.sh pins want_torch");
    assert_eq!(
        want, "2.11.0",
        "the project's torch pin moved: update deploy/Dockerfile and this test together"
    );
    let pins: BTreeSet<&str> = text.match_indices("torch==").map(|(i, _)| &text[i..i + 13]).collect();
    assert_eq!(
        pins,
        BTreeSet::from(["torch==2.11.0"]),
        "deploy/Dockerfile installs torch pinned to {want} only"
    );

    let build = lines.iter().find(|l| l.contains("cargo build")).expect("a cargo build");
    for part in ["--release", "-p cyclotron", "--features nccl", "LIBTORCH_USE_PYTORCH=1"] {
        assert!(build.contains(part), "the cargo build lacks `{part}`: {build}");
    }
    let cli = std::fs::read_to_string(repo().join("cli/Cargo.toml")).expect("cli/Cargo.toml");
    assert!(cli.lines().any(|l| l.starts_with("nccl =")), "cli/Cargo.toml has no `nccl` feature any more");
    assert!(
        text.contains("ln -sf libnccl.so.2") && text.contains("libnccl.so"),
        "the libnccl.so link cudarc dlopens"
    );

    // the runtime stage carries the same venv at the same path (the binary's rpath) and says so
    let runtime = &text[text.find("FROM debian:bookworm-slim").expect("runtime stage")..];
    let copy = lines
        .iter()
        .find(|l| l.starts_with("COPY --from=builder /opt/") && !l.contains("/usr/local/bin"))
        .expect("the venv copied from the builder");
    let parts: Vec<&str> = copy.split_whitespace().collect();
    assert_eq!(parts[2], parts[3], "the venv must keep its path (rpath): {copy}");
    assert!(
        runtime.contains(&format!("LD_LIBRARY_PATH=\"{}/lib/python3", parts[2])),
        "LD_LIBRARY_PATH names the venv's torch/lib"
    );
    assert!(runtime.contains("site-packages/torch/lib"), "LD_LIBRARY_PATH names torch/lib");
    for pkg in ["fonts-dejavu-core", "ca-certificates", "python3"] {
        assert!(runtime.contains(pkg), "the runtime stage installs {pkg}");
    }
    assert_eq!(entrypoint(), vec!["cyclotron".to_string()], "ENTRYPOINT [\"cyclotron\"]");
    docker_user();
}
