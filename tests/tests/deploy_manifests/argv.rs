//! What a container's process receives: Kubernetes `$(VAR)` expansion of command and args, the
//! image's ENTRYPOINT, and `sh -c` wrappers run by a real `sh` with a stand-in `cyclotron` on PATH;
//! plus flag and port lookups on the result.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::dockerfile;

/// The pod IP that `status.podIP` stands for.
pub const FAKE_POD_IP: &str = "10.1.2.3";

/// Run `cmd` with a deadline; (exit code, stdout, stderr).
pub fn run_bounded(cmd: &mut Command, deadline: Duration) -> (Option<i32>, String, String) {
    let logs = tempfile::tempdir().expect("temp dir");
    let (out, err) = (logs.path().join("out"), logs.path().join("err"));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut p = cyclotron_tests::Proc(Some(child));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = p.0.as_mut().expect("child").try_wait().expect("wait") {
            p.0 = None;
            break s;
        }
        assert!(started.elapsed() < deadline, "{cmd:?} did not finish within {deadline:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code(),
        std::fs::read_to_string(out).unwrap_or_default(),
        std::fs::read_to_string(err).unwrap_or_default(),
    )
}

/// The image's ENTRYPOINT, from the Dockerfile's last stage.
pub fn entrypoint() -> Vec<String> {
    let text = dockerfile();
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("ENTRYPOINT"))
        .expect("deploy/Dockerfile has an ENTRYPOINT");
    let json = line.trim_start().trim_start_matches("ENTRYPOINT").trim();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("ENTRYPOINT `{json}` is not exec form (JSON): {e}"))
}

/// A container's environment as the kubelet gives it: literal values, fieldRefs with stand-ins.
pub fn container_env(c: &Value, pod_name: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![];
    for e in c["env"].as_array().into_iter().flatten() {
        let n = e["name"].as_str().expect("env[].name").to_string();
        let v = if let Some(v) = e["value"].as_str() {
            expand_k8s(v, &env).0
        } else {
            match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod_name.to_string(),
                Some("status.podIP") => FAKE_POD_IP.to_string(),
                Some("metadata.namespace") => "cyclotron".to_string(),
                _ => format!("<{n} from valueFrom>"),
            }
        };
        env.push((n, v));
    }
    env
}

/// Kubernetes' `$(VAR)` expansion of command and args; also the names it could not resolve
/// (which Kubernetes leaves as they are: a silent bug).
pub fn expand_k8s(s: &str, env: &[(String, String)]) -> (String, Vec<String>) {
    let (mut out, mut missing) = (String::new(), vec![]);
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let (Some(t), Some(end)) = (tail.strip_prefix("$("), tail.find(')')) {
            let var = &t[..end - 2];
            match env.iter().rev().find(|(n, _)| n == var) {
                Some((_, v)) => out.push_str(v),
                None => {
                    // `$((…))` (shell arithmetic) is no variable name: passed on, as Kubernetes does
                    let is_name = var.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if is_name {
                        missing.push(var.to_string());
                    }
                    out.push_str(&tail[..=end]);
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    (out, missing)
}

/// What the `cyclotron` process of a container receives, when it runs one: directly, or through
/// `sh -c SCRIPT`, which is run by a real `sh` with a stand-in `cyclotron` first on PATH.
/// Err: the shell wrapper failed (its code and stderr).
pub fn cyclotron_argv(c: &Value, pod_name: &str) -> Result<Option<Vec<String>>, String> {
    let env = container_env(c, pod_name);
    let mut argv: Vec<String> = match c["command"].as_array() {
        Some(cmd) => cmd.iter().map(|s| s.as_str().expect("command strings").to_string()).collect(),
        None => entrypoint(),
    };
    argv.extend(
        c["args"].as_array().into_iter().flatten().map(|s| s.as_str().expect("args strings").to_string()),
    );
    let mut expanded = vec![];
    for a in &argv {
        let (v, missing) = expand_k8s(a, &env);
        assert!(
            missing.is_empty(),
            "container {}: `{a}` refers to $({}), which its env does not define (Kubernetes would pass it verbatim)",
            c["name"],
            missing.join("), $(")
        );
        expanded.push(v);
    }
    let argv = expanded;
    let base = |s: &str| Path::new(s).file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
    match argv.first().map(|s| base(s)) {
        Some(b) if b == "cyclotron" => Ok(Some(argv)),
        Some(b) if (b == "sh" || b == "bash") && argv.get(1).is_some_and(|a| a == "-c") => {
            let script = argv.get(2).expect("sh -c needs a script");
            let fake = tempfile::tempdir().expect("temp dir");
            let record = fake.path().join("argv");
            let stub = fake.path().join("cyclotron");
            std::fs::write(&stub, "#!/bin/sh\nprintf '%s\\0' \"$0\" \"$@\" > \"$CYCLOTRON_ARGV_RECORD\"\n")
                .expect("stub");
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).expect("chmod stub");
            let mut cmd = Command::new("sh");
            cmd.arg("-c").arg(script).args(&argv[3..]).env_clear();
            cmd.env("PATH", format!("{}:/usr/bin:/bin", fake.path().display()));
            cmd.env("CYCLOTRON_ARGV_RECORD", &record);
            for (k, v) in &env {
                cmd.env(k, v);
            }
            let (code, _, stderr) = run_bounded(&mut cmd, Duration::from_secs(10));
            if code != Some(0) {
                return Err(format!("the sh -c wrapper exited with {code:?}: {}", stderr.trim()));
            }
            let Ok(raw) = std::fs::read(&record) else {
                return Err("the sh -c wrapper never ran cyclotron".into());
            };
            let mut got: Vec<String> =
                String::from_utf8(raw).expect("utf-8 argv").split('\0').map(String::from).collect();
            got.pop(); // after the last NUL
            got[0] = "cyclotron".into();
            Ok(Some(got))
        }
        _ => Ok(None),
    }
}

/// The value of `--flag` in argv (`--flag V` or `--flag=V`).
pub fn flag<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    let eq = format!("{name}=");
    argv.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            argv.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(&eq)
        }
    })
}

pub fn port_of(addr: &str) -> u16 {
    let (_, port) = addr.rsplit_once(':').unwrap_or_else(|| panic!("`{addr}` is not HOST:PORT"));
    port.parse().unwrap_or_else(|_| panic!("`{addr}`: port is not a number"))
}

/// A workload's pod name for ordinal `i` (StatefulSet) or a Deployment-like one.
pub fn pod_name(o: &Value, i: usize) -> String {
    let n = o["metadata"]["name"].as_str().expect("name");
    if o["kind"] == "StatefulSet" {
        format!("{n}-{i}")
    } else {
        format!("{n}-7d9f8b6c5d-x{i}q4z")
    }
}

pub fn container_ports(c: &Value) -> Vec<(Option<String>, u64)> {
    c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (p["name"].as_str().map(String::from), p["containerPort"].as_u64().expect("containerPort")))
        .collect()
}

/// A port reference (a number or a container port's name) resolved to a number of `c`.
pub fn resolve_port(c: &Value, port: &Value) -> Option<u64> {
    let ports = container_ports(c);
    match port {
        Value::Number(n) => ports.iter().find(|(_, p)| Some(*p) == n.as_u64()).map(|(_, p)| *p),
        Value::String(s) => ports.iter().find(|(n, _)| n.as_deref() == Some(s.as_str())).map(|(_, p)| *p),
        _ => None,
    }
}
