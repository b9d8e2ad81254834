//! `cyclotron-tests`: end-to-end tests that run the real `cyclotron` binary as a child process
//! (killed on drop, every wait bounded) and check what it writes. The helpers here find the
//! binary next to the test executable in the cargo target folder, and start clusters of real
//! coordinator and worker processes tagged through the environment, so a test can prove that
//! none of them (nor their training children) survives.

pub mod prometheus;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `cyclotron` binary built in the same profile as the running test.
pub fn cyclotron_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/cyclotron
    let dir = exe.parent().and_then(|d| d.parent()).expect("target folder");
    let bin = dir.join("cyclotron");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --release -p cyclotron)",
        bin.display()
    );
    bin
}

/// The data Debian's dataset-fashion-mnist installs; tests that need it skip with a message without it.
pub fn fashion_mnist_present() -> bool {
    let present =
        std::path::Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists();
    if !present {
        eprintln!("skipping: Fashion-MNIST is not installed (make setup installs dataset-fashion-mnist)");
    }
    present
}

/// The venv's python (`CYCLOTRON_VENV`, else setup's default), which has torch.
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("CYCLOTRON_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cyclotron/torch-2.11.0")
    });
    venv.join("bin/python")
}

/// `tests/fixtures/torchscript_fixtures.py ARGS…` in the venv, run in `cwd`: the JSON it printed
/// (`Null` when it printed nothing); a failure panics with its stderr.
pub fn torchscript_fixtures(args: &[&str], cwd: &std::path::Path) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/torchscript_fixtures.py");
    let out =
        Command::new(venv_python()).arg(script).args(args).current_dir(cwd).output().unwrap_or_else(|e| {
            panic!("{}: {e} (make setup creates the venv with torch)", venv_python().display())
        });
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A child process that is killed when dropped.
pub struct Proc(pub Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a finished `cyclotron` run printed.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `cyclotron ARGS` in `cwd`, waiting at most `deadline`; the child is killed past it.
/// Output goes to files (no pipe to fill up and block the child).
pub fn run(args: &[&str], cwd: &std::path::Path, deadline: Duration) -> Ran {
    run_with(args, cwd, deadline, &[])
}

/// [`run`] with environment variables `env` set for the child.
pub fn run_with(args: &[&str], cwd: &std::path::Path, deadline: Duration, env: &[(&str, &str)]) -> Ran {
    run_child(args, cwd, deadline, env, Stdio::null())
}

/// [`run`] with `input` on the child's standard input.
pub fn run_fed(args: &[&str], cwd: &std::path::Path, deadline: Duration, input: &str) -> Ran {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("stdin");
    std::fs::write(&path, input).expect("stdin file");
    run_child(args, cwd, deadline, &[], Stdio::from(std::fs::File::open(&path).expect("stdin file")))
}

fn run_child(
    args: &[&str],
    cwd: &std::path::Path,
    deadline: Duration,
    env: &[(&str, &str)],
    stdin: Stdio,
) -> Ran {
    let logs = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let child = Command::new(cyclotron_bin())
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().copied())
        .stdin(stdin)
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn cyclotron");
    let mut p = Proc(Some(child));
    let code = p.wait(deadline, &format!("cyclotron {args:?}"));
    Ran { code, stdout: read(&out_path), stderr: read(&err_path) }
}

// ---- multi-process cluster helpers (tests/tests/cluster_*.rs) ---------------------------------

impl Proc {
    /// The child's pid (panics once it was reaped).
    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("child").id()
    }

    /// Exit code once exited (`Some(None)`: killed by a signal), `None` while running.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        let c = self.0.as_mut()?;
        c.try_wait().expect("try_wait").map(|s| s.code())
    }

    /// Wait for the exit within `deadline` (the child is killed past it, and the test fails).
    pub fn wait(&mut self, deadline: Duration, what: &str) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(code) = self.exited() {
                self.0 = None;
                return code;
            }
            assert!(started.elapsed() < deadline, "{what} did not finish within {deadline:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Environment variable every process of a cluster test carries (inherited by grandchildren),
/// so that [`tagged_processes`] finds any that survive.
pub const TAG_VAR: &str = "CYCLOTRON_TEST_TAG";

/// A fresh tag for [`TAG_VAR`].
pub fn new_tag() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("t{}-{nanos}", std::process::id())
}

/// Live (not zombie) processes whose environment holds `TAG_VAR=tag`.
pub fn tagged_processes(tag: &str) -> Vec<u32> {
    let needle = format!("{TAG_VAR}={tag}");
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) && pid_alive(*pid)
        })
        .collect()
}

/// Whether `pid` runs (a zombie does not).
pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Send a signal by name (`KILL`, `STOP`, `CONT`, `INT`, `TERM`) with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([format!("-{sig}"), pid.to_string()]).status().map(|s| s.success());
    assert!(matches!(ok, Ok(true)), "kill -{sig} {pid} failed");
}

/// Start `cyclotron ARGS` in `cwd` with stdout and stderr appended to `log`, tagged with `tag`.
pub fn spawn_logged(args: &[&str], cwd: &std::path::Path, log: &std::path::Path, tag: &str) -> Proc {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
    let child = Command::new(cyclotron_bin())
        .args(args)
        .current_dir(cwd)
        .env(TAG_VAR, tag)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .expect("spawn cyclotron");
    Proc(Some(child))
}

pub fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Wait until `f` holds, failing after `deadline` with `what` and `context()` (e.g. a log).
pub fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool, context: impl Fn() -> String) {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Free loopback ports (bound then released, so a process started next can take them).
pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    ls.iter().map(|l| l.local_addr().expect("addr").port()).collect()
}

/// The first of `n` consecutive free loopback ports (`--metrics-base-port` numbers from it).
pub fn consecutive_free_ports(n: u16) -> u16 {
    for _ in 0..100 {
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = a.local_addr().expect("addr").port();
        if p <= u16::MAX - n && (1..n).all(|k| std::net::TcpListener::bind(("127.0.0.1", p + k)).is_ok()) {
            return p;
        }
    }
    panic!("no {n} consecutive free loopback ports");
}

/// A coordinator replica: `cyclotron coordinator --listen ... --data-dir DIR/<name> EXTRA`, with
/// its log in `DIR/<name>.log`; returns once it printed where it listens.
pub struct Coordinator {
    pub proc: Proc,
    pub addr: String,
    pub log: PathBuf,
}

impl Coordinator {
    pub fn start(dir: &std::path::Path, name: &str, listen: &str, extra: &[&str], tag: &str) -> Coordinator {
        let log = dir.join(format!("{name}.log"));
        let data = dir.join(name);
        let mut args =
            vec!["coordinator", "--listen", listen, "--data-dir", data.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        let mut proc = spawn_logged(&args, dir, &log, tag);
        let started = Instant::now();
        let addr = loop {
            if let Some(rest) = read(&log).split("listening on ").nth(1) {
                break rest.split_whitespace().next().expect("address").to_string();
            }
            assert!(proc.exited().is_none(), "coordinator {name} exited:\n{}", read(&log));
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "coordinator {name} never listened:\n{}",
                read(&log)
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Coordinator { proc, addr, log }
    }
}

/// A worker agent `cyclotron worker --coordinator COORDINATORS --id ID`, logging to `DIR/<id>.log`.
pub struct Worker {
    pub proc: Proc,
    pub id: String,
    pub log: PathBuf,
}

impl Worker {
    pub fn start(dir: &std::path::Path, coordinators: &str, id: &str, tag: &str) -> Worker {
        let log = dir.join(format!("{id}.log"));
        let args = [
            "worker",
            "--coordinator",
            coordinators,
            "--id",
            id,
            "--stop-grace",
            "3",
            "--collective-timeout",
            "20",
        ];
        let proc = spawn_logged(&args, dir, &log, tag);
        Worker { proc, id: id.to_string(), log }
    }
}

/// Run `cyclotron ARGS` (a short client command) in `cwd` with the cluster's tag; bounded by `deadline`.
pub fn run_tagged(args: &[&str], cwd: &std::path::Path, deadline: Duration, tag: &str) -> Ran {
    run_with(args, cwd, deadline, &[(TAG_VAR, tag)])
}

/// A small, fast data-parallel job on a slice of Fashion-MNIST: `epochs` epochs of `limit`
/// images in one cycle, a checkpoint every epoch, one thread per process.
pub fn tiny_job(name: &str, limit: usize, epochs: u32) -> String {
    format!(
        r#"name = "{name}"
seed = 5
output = "file://./store"
[data]
source = "fashion_mnist"
batch_size = 32
limit_train = {limit}
limit_eval = 200
[model]
arch = "small_cnn"
width = 8
[optimizer]
kind = "sgd"
momentum = 0.9
[lr_find]
start = 1e-4
end = 1.0
steps = 10
[[stage]]
name = "sgdr"
lr = 0.05
cycles = 1
cycle_len = {epochs}
[ensemble]
members = 1
[runtime]
threads = 1
device = "cpu"
[checkpoint]
every_epochs = 1
keep_last = 2
"#
    )
}

/// `cyclotron status JOB --json --coordinator ADDRS` as JSON (panics with the output on failure).
pub fn status_json(job: &str, coordinators: &str, cwd: &std::path::Path, tag: &str) -> serde_json::Value {
    let ran = run_tagged(
        &["status", job, "--json", "--coordinator", coordinators],
        cwd,
        Duration::from_secs(60),
        tag,
    );
    assert_eq!(ran.code, Some(0), "status failed:\n{}\n{}", ran.stdout, ran.stderr);
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("status --json: {e}:\n{}", ran.stdout))
}

/// `cyclotron watch JOB --json`: its exit code and events (one JSON object per line).
pub fn watch_json(
    job: &str,
    coordinators: &str,
    cwd: &std::path::Path,
    deadline: Duration,
    tag: &str,
) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let ran = run_tagged(&["watch", job, "--json", "--coordinator", coordinators], cwd, deadline, tag);
    let events = ran.stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    (ran.code, events, ran.stderr)
}

/// The pid of the training child a worker started last (from its log's `training started ... pid=N`).
pub fn last_training_pid(worker_log: &std::path::Path) -> Option<u32> {
    let text = read(worker_log);
    let line = text.lines().rev().find(|l| l.contains("training started"))?;
    line.split("pid=").nth(1)?.split_whitespace().next()?.parse().ok()
}

/// `results.json`'s `key` with the wall-clock seconds of the snapshots' `so_far` records left out:
/// what two runs of the same steps (one of them resumed) must agree on exactly.
pub fn without_seconds(results: &serde_json::Value, key: &str) -> serde_json::Value {
    let mut v = results[key].clone();
    for s in v.as_array_mut().into_iter().flatten() {
        if let Some(f) = s.get_mut("so_far").and_then(|f| f.as_object_mut()) {
            f.remove("seconds");
        }
    }
    v
}
