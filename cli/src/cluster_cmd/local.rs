//! `cyclotron local --workers N JOB.toml`: a whole cluster on this machine. It starts a
//! coordinator (temporary data folder, a free port) and N worker processes, submits the job,
//! shows its progress like `watch`, then writes and prints what `cyclotron train` would
//! (results.json, lr_find.json, plots, the results table).
//!
//! Cleanup: every process it starts is its own process-group leader (a terminal's ctrl-c reaches
//! only this command, which then stops them in order: workers first with SIGTERM, which stop
//! their training children, then SIGKILL past a deadline, then the coordinator), and each holds a
//! pipe from this process on stdin (`--parent-watchdog-ms 0`), so they exit even if this one is
//! killed with SIGKILL. Logs go to `OUT/logs/`.
//!
//! Credentials: the cluster gets its own random token, written to a file only this user can read
//! in the temporary data folder and handed to every process with `--token-file` (never in argv),
//! so other users of the machine cannot use the loopback port to submit jobs or pose as workers.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use cyclotron_core::results::TrainResults;
use cyclotron_core::spec::JobSpec;
use cyclotron_proto::auth::Token;
use cyclotron_proto::tls::ClientSecurity;
use cyclotron_worker::agent::child::{kill_group, terminate_group};
use cyclotron_worker::agent::{Coordinators, Deadlines};

use super::watch::{self, Mode};
use super::{get_job, interrupted, runtime, submit_spec, write_run_dir};
use crate::output;

/// Longest wait for the coordinator to say where it listens.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// Workers get this long between SIGTERM and SIGKILL (they pass half of it to their runs).
const STOP_DEADLINE: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct LocalArgs {
    job: PathBuf,
    /// Worker processes to start.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Output folder (default: runs/<job name>); logs go to OUT/logs/.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Workers per data-parallel run (default: all of them, or an equal share of them for each of
    /// the job's `ensemble.runs` independent runs, so that the runs train side by side).
    #[arg(long)]
    workers_per_run: Option<u32>,
    /// Restarts allowed after a worker dies or stalls (0: the coordinator's default).
    #[arg(long, default_value_t = 0)]
    max_restarts: u32,
    /// Worker lease of the coordinator, in milliseconds (default: the coordinator's).
    #[arg(long)]
    lease_ms: Option<u64>,
    /// Progress as one JSON object per event on stdout (like `watch --json`).
    #[arg(long)]
    json: bool,
    /// Worker i serves its runs' Prometheus metrics at http://127.0.0.1:(PORT+i)/metrics, and the
    /// coordinator at PORT+N (N workers).
    #[arg(long, value_name = "PORT")]
    metrics_base_port: Option<u16>,
    /// Serve the coordinator's web view at http://ADDR/ while the job runs (`HOST:PORT` on
    /// loopback; `--web` alone picks a free port). Its address is printed on stderr.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
    web: Option<String>,
}

/// A process this command started: killed (with its group) when dropped.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

struct LocalCluster {
    coordinator: Option<Proc>,
    workers: Vec<Proc>,
    addr: String,
    /// The web view's URL (`--web`).
    web: Option<String>,
    /// The cluster's own token (its file lives in the data folder).
    token: Token,
    _data_dir: tempfile::TempDir,
}

/// Write `token` to `path`, readable by this user only.
fn write_secret(path: &Path, token: &Token) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(token.expose().as_bytes()).with_context(|| format!("writing {}", path.display()))
}

fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Copy `r` into `log` line by line, sending the address of a "listening on ADDR" line and the
/// URL of a "web view at URL" line to `tx`, in order.
fn pump(
    r: impl std::io::Read + Send + 'static,
    log: Arc<Mutex<std::fs::File>>,
    tx: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            let said = line.split("listening on ").nth(1).or_else(|| line.split("web view at ").nth(1));
            if let (Some(tx), Some(rest)) = (&tx, said) {
                if let Some(addr) = rest.split_whitespace().next() {
                    let _ = tx.send(addr.to_string());
                }
            }
            let _ = writeln!(log.lock().unwrap_or_else(|e| e.into_inner()), "{line}");
        }
    });
}

impl LocalCluster {
    fn start(
        exe: &Path,
        workers: usize,
        logs: &Path,
        lease_ms: Option<u64>,
        metrics_base_port: Option<u16>,
        web: Option<&str>,
    ) -> anyhow::Result<LocalCluster> {
        let data_dir =
            tempfile::Builder::new().prefix("cyclotron-local-").tempdir().context("temporary folder")?;
        let token = Token::generate()?;
        let token_file = data_dir.path().join("cluster-token");
        write_secret(&token_file, &token)?;
        let log_path = logs.join("coordinator.log");
        let log = Arc::new(Mutex::new(
            std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?,
        ));
        let mut cmd = Command::new(exe);
        cmd.args(["--parent-watchdog-ms", "0", "coordinator", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path().join("raft"))
            .arg("--token-file")
            .arg(&token_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(ms) = lease_ms {
            cmd.args(["--lease-ms", &ms.to_string()]);
        }
        if let Some(addr) = web {
            cmd.args(["--web-addr", addr]);
        }
        if let Some(base) = metrics_base_port {
            // the coordinator after the workers: PORT+N
            let port = u16::try_from(usize::from(base) + workers)
                .map_err(|_| anyhow::anyhow!("--metrics-base-port {base}: too high for {workers} workers"))?;
            cmd.args(["--metrics-addr", &format!("127.0.0.1:{port}")]);
        }
        let mut child = cmd.spawn().context("starting the coordinator")?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            pump(out, log.clone(), Some(tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            pump(err, log, Some(tx));
        }
        let mut coordinator = Proc { name: "coordinator".into(), child, log: log_path };
        let started = Instant::now();
        let mut said = vec![];
        let wanted = if web.is_some() { 2 } else { 1 };
        let addr = loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                said.push(line);
                if said.len() == wanted {
                    break said[0].clone();
                }
                continue;
            }
            if let Some(status) = coordinator.exited() {
                anyhow::bail!(
                    "the coordinator exited ({status}) before listening:\n{}",
                    log_tail(&coordinator.log, 20)
                );
            }
            if started.elapsed() > START_DEADLINE {
                kill_group(coordinator.child.id());
                let _ = coordinator.child.wait();
                anyhow::bail!(
                    "the coordinator did not say where it listens within {START_DEADLINE:?}:\n{}",
                    log_tail(&coordinator.log, 20)
                );
            }
        };
        let mut cluster = LocalCluster {
            coordinator: Some(coordinator),
            workers: vec![],
            addr,
            web: said.get(1).cloned(),
            token,
            _data_dir: data_dir,
        };
        let grace = format!("{}", STOP_DEADLINE.as_secs_f64() / 2.0);
        for i in 0..workers {
            let log_path = logs.join(format!("worker-{i}.log"));
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let mut cmd = Command::new(exe);
            cmd.args(["--parent-watchdog-ms", "0", "worker", "--coordinator", &cluster.addr])
                .args(["--id", &format!("local-{i}"), "--data-addr", "127.0.0.1:0", "--stop-grace", &grace])
                .arg("--token-file")
                .arg(&token_file);
            if let Some(base) = metrics_base_port {
                let port = u16::try_from(usize::from(base) + i).map_err(|_| {
                    anyhow::anyhow!("--metrics-base-port {base}: too high for {workers} workers")
                })?;
                cmd.args(["--metrics-addr", &format!("127.0.0.1:{port}")]);
            }
            let child = cmd
                .stdin(Stdio::piped())
                .stdout(log.try_clone().context("log file")?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting worker {i}"))?;
            cluster.workers.push(Proc { name: format!("worker {i}"), child, log: log_path });
        }
        Ok(cluster)
    }

    /// A process that should be running but exited, with its log's tail.
    fn casualty(&mut self) -> Option<String> {
        let c = self.coordinator.as_mut()?;
        let status = c.exited()?;
        Some(format!("the coordinator exited ({status}); its last lines:\n{}", log_tail(&c.log, 20)))
    }

    /// Stop every process: workers (SIGTERM, SIGKILL past the deadline), then the coordinator.
    fn stop(&mut self) {
        for w in &mut self.workers {
            if w.exited().is_none() {
                terminate_group(w.child.id());
            }
        }
        let started = Instant::now();
        for w in &mut self.workers {
            while w.exited().is_none() && started.elapsed() < STOP_DEADLINE {
                std::thread::sleep(Duration::from_millis(50));
            }
            if w.exited().is_none() {
                tracing::warn!("{} ignored SIGTERM for {STOP_DEADLINE:?}; killing it", w.name);
                kill_group(w.child.id());
                let _ = w.child.wait();
            }
        }
        self.workers.clear();
        if let Some(mut c) = self.coordinator.take() {
            if c.exited().is_none() {
                terminate_group(c.child.id());
                let started = Instant::now();
                while c.exited().is_none() && started.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if c.exited().is_none() {
                    kill_group(c.child.id());
                    let _ = c.child.wait();
                }
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn local(args: LocalArgs, quiet: bool) -> anyhow::Result<()> {
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    let spec = JobSpec::load(&args.job)?;
    let workers_per_run =
        args.workers_per_run.unwrap_or_else(|| default_workers_per_run(args.workers, spec.ensemble.runs));
    anyhow::ensure!(
        workers_per_run >= 1 && workers_per_run as usize <= args.workers,
        "--workers-per-run {workers_per_run} must be between 1 and --workers {}",
        args.workers
    );
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&spec.name));
    output::prepare_dir(&out)?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let spec_toml =
        std::fs::read_to_string(&args.job).with_context(|| format!("reading {}", args.job.display()))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (spec_toml, threads) = share_cores(&spec_toml, spec.runtime.threads, cores, args.workers);
    let exe = std::env::current_exe().context("finding the cyclotron binary")?;

    let cluster = Arc::new(Mutex::new(LocalCluster::start(
        &exe,
        args.workers,
        &logs,
        args.lease_ms,
        args.metrics_base_port,
        args.web.as_deref(),
    )?));
    let (addr, token, web) = {
        let c = cluster.lock().unwrap_or_else(|e| e.into_inner());
        (c.addr.clone(), c.token.clone(), c.web.clone())
    };
    let client = Coordinators::with_security(
        std::slice::from_ref(&addr),
        Deadlines::new(Duration::from_secs(5), Duration::from_secs(30)),
        ClientSecurity { token: Some(token.clone()), tls: None },
    )?;
    let mode = if args.json { Mode::Json } else { Mode::Human { quiet } };
    let rt = runtime()?;
    let outcome: anyhow::Result<(String, TrainResults)> = rt.block_on(async {
        let job = submit_spec(&client, spec_toml, workers_per_run, args.max_restarts).await?;
        if let Some(url) = &web {
            // on stderr even with --json (scripts and tests read it there); the link logs the
            // browser in with this cluster's token, which lives no longer than the cluster
            let mut link = url::Url::parse(url).context("the coordinator's web view URL")?.join("login")?;
            link.query_pairs_mut().append_pair("token", token.expose()).append_pair("next", &format!("/jobs/{job}"));
            eprintln!("web view at {link}");
        }
        if !quiet && !args.json {
            eprintln!(
                "job {job}: a coordinator on {addr} and {} workers ({workers_per_run} per run, {threads} thread{} each); logs in {}",
                args.workers,
                if threads == 1 { "" } else { "s" },
                logs.display()
            );
        }
        let health = {
            let cluster = cluster.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Some(why) = cluster.lock().unwrap_or_else(|e| e.into_inner()).casualty() {
                        return why;
                    }
                }
            }
        };
        let end = tokio::select! {
            r = watch::follow(&client, &job, mode) => r?,
            why = health => anyhow::bail!("{why}"),
            _ = interrupted() => anyhow::bail!("interrupted; stopping the local cluster"),
        };
        end.into_result(&job).map_err(|e| anyhow::anyhow!("{e} (logs in {})", logs.display()))?;
        let j = get_job(&client, &job).await?;
        let results: TrainResults = serde_json::from_str(&j.results_json)
            .with_context(|| format!("job {job} succeeded but its results are not readable"))?;
        Ok((job, results))
    });
    // stop everything before reporting, whatever happened
    cluster.lock().unwrap_or_else(|e| e.into_inner()).stop();
    drop(rt);
    let (job, results) = outcome?;
    write_run_dir(&out, &results, &spec.output, &job)?;
    output::print_results(&results, &spec.output, &spec.name, &job);
    Ok(())
}

/// Workers per run when `--workers-per-run` is not given: all `workers` for one run; for
/// `runs` independent runs an equal share (at least 1), so they train at once on separate
/// groups instead of one after another on the whole cluster.
fn default_workers_per_run(workers: usize, runs: usize) -> u32 {
    (workers / runs.max(1)).max(1) as u32
}

/// N workers on one machine share its cores: unless the spec sets `runtime.threads`, each
/// training process gets `cores / N` threads (at least one) instead of all of them (oversubscribed
/// libtorch threads spin against each other). Returns the spec text to submit and the threads.
fn share_cores(spec_toml: &str, threads: Option<usize>, cores: usize, workers: usize) -> (String, usize) {
    if let Some(t) = threads {
        return (spec_toml.to_string(), t);
    }
    let share = (cores / workers.max(1)).max(1);
    let line = format!("threads = {share}");
    let mut out = String::with_capacity(spec_toml.len() + 32);
    let mut inserted = false;
    for l in spec_toml.lines() {
        out.push_str(l);
        out.push('\n');
        if !inserted && l.trim_start().starts_with("[runtime]") {
            out.push_str(&line);
            out.push('\n');
            inserted = true;
        }
    }
    if !inserted {
        out.push_str(&format!("\n[runtime]\n{line}\n"));
    }
    (out, share)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads_of(text: &str) -> Option<usize> {
        let spec = JobSpec::from_toml_str(text, "t").unwrap();
        spec.runtime.threads
    }

    #[test]
    fn independent_runs_split_the_workers_between_them() {
        assert_eq!(default_workers_per_run(2, 1), 2, "one run: data-parallel on every worker");
        assert_eq!(default_workers_per_run(2, 2), 1, "two runs on two workers: one each, side by side");
        assert_eq!(default_workers_per_run(4, 2), 2);
        assert_eq!(default_workers_per_run(5, 2), 2, "a spare worker rather than unequal groups");
        assert_eq!(default_workers_per_run(2, 3), 1, "more runs than workers: one worker each, queued");
    }

    #[test]
    fn workers_share_the_cores_unless_the_spec_says() {
        let base = "name = \"j\"\n[data]\nsource = \"fashion_mnist\"\n[model]\narch = \"small_cnn\"\n[[stage]]\nlr = 0.1\nepochs = 1\n";
        let (text, n) = share_cores(base, None, 16, 2);
        assert_eq!((n, threads_of(&text)), (8, Some(8)));
        let with_section = format!("{base}[runtime]\ndevice = \"cpu\"\n");
        let (text, n) = share_cores(&with_section, None, 2, 4);
        assert_eq!((n, threads_of(&text)), (1, Some(1)));
        assert_eq!(share_cores(&with_section, Some(3), 16, 2), (with_section.clone(), 3));
    }
}
