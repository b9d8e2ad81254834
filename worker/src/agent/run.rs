//! One assignment, start to end: write the spec, rendezvous with the group, start `cyclotron
//! train` as a child, forward its events as progress reports, and report how it ended.
//!
//! The child command is the single-process path with a static data-parallel launch:
//! `cyclotron train JOB.toml --out DIR --run <job id> --resume --rank R --world-size N
//! --peers a,b,... --generation G --events-jsonl - --parent-watchdog-ms L`. `--resume` makes a
//! restarted group continue from the run's newest committed checkpoint.
//!
//! What it reports, and in which form, is in [`super::report`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cyclotron_core::events::TrainEvent;
use cyclotron_core::spec::JobSpec;
use cyclotron_core::sweep::{Candidate, Probe, SweepChoice};
use cyclotron_proto::v1::worker_service_client::WorkerServiceClient;
use cyclotron_proto::v1::{Assignment, RendezvousRequest, RendezvousResponse};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::Code;

use super::child::{describe_exit, Child, ChildSpec};
use super::client::{Coordinators, Deadlines};
use super::error::{AgentError, Result};
use super::report::{failure, reporter, Report};

/// Which run an assignment is: the coordinator bumps `generation` on every restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunKey {
    pub job: String,
    pub task: u32,
    pub generation: u64,
}

impl RunKey {
    pub fn of(a: &Assignment) -> RunKey {
        RunKey { job: a.job_id.clone(), task: a.task, generation: a.generation }
    }
}

impl std::fmt::Display for RunKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {} task {} generation {}", self.job, self.task, self.generation)
    }
}

/// What every run of this agent shares.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub client: Coordinators,
    pub worker_id: String,
    /// The agent's current session secret (every report and rendezvous carries it).
    pub session: super::Session,
    /// Where this worker lets a spec point it.
    pub sandbox: super::sandbox::Sandbox,
    /// No event and no CPU time for this long: the run is stuck.
    pub stall_timeout: Duration,
    /// The `cyclotron` binary to start (`std::env::current_exe()`).
    pub binary: PathBuf,
    /// Runs' folders (spec, `--out`) go under it.
    pub work_dir: PathBuf,
    /// Working directory of the children (relative store and data paths resolve from it).
    pub child_cwd: Option<PathBuf>,
    /// Passed to the children as `--metrics-addr` (one run at a time, so one port serves them all).
    pub metrics_addr: Option<String>,
    /// Host of the data plane (ring) address; the port is picked per run when `data_port` is 0.
    pub data_host: String,
    pub data_port: u16,
    /// The child exits when the agent has not pinged it for this long.
    pub child_watchdog: Duration,
    /// SIGTERM → SIGKILL.
    pub stop_grace: Duration,
    pub rendezvous_timeout: Duration,
    pub collective_timeout: Duration,
}

/// A run in progress (or finished, until the assignment changes).
pub struct RunHandle {
    pub key: RunKey,
    stop: watch::Sender<bool>,
    pub join: JoinHandle<()>,
    /// Becomes true when the run has ended (its result reported or abandoned).
    pub finished: watch::Receiver<bool>,
}

impl RunHandle {
    /// Ask the run to stop (SIGTERM, then SIGKILL after the grace period); await `join` for the end.
    pub fn stop(self) -> JoinHandle<()> {
        let _ = self.stop.send(true);
        self.join
    }
}

/// Start running `a` once `prev` (a stopping earlier run) has ended.
pub fn start(ctx: Arc<RunContext>, a: Assignment, prev: Option<JoinHandle<()>>) -> RunHandle {
    let key = RunKey::of(&a);
    let (stop, stop_rx) = watch::channel(false);
    let (done, finished) = watch::channel(false);
    let join = tokio::spawn(async move {
        if let Some(p) = prev {
            let _ = p.await;
        }
        if !*stop_rx.borrow() {
            let key = RunKey::of(&a);
            if let Err(e) = run(&ctx, &a, stop_rx).await {
                tracing::warn!(run = %key, "run ended with an agent error: {e}");
            }
        }
        let _ = done.send(true);
    });
    RunHandle { key, stop, join, finished }
}

async fn run(ctx: &RunContext, a: &Assignment, mut stop: watch::Receiver<bool>) -> Result<()> {
    let key = RunKey::of(a);
    let (tx, rx) = mpsc::unbounded_channel();
    let reporter = tokio::spawn(reporter(
        ctx.client.clone(),
        ctx.worker_id.clone(),
        ctx.session.clone(),
        key.clone(),
        rx,
    ));
    // whatever goes wrong from here on is reported (a task is never left "running"); a stop
    // (the assignment withdrawn) abandons what is queued
    let finish = |tx: mpsc::UnboundedSender<Report>, report: Option<Report>| async move {
        match report {
            Some(r) => {
                let _ = tx.send(r);
                drop(tx);
                let _ = tokio::time::timeout(Duration::from_secs(130), reporter).await;
            }
            None => reporter.abort(),
        }
    };
    let prepared = match prepare(ctx, a) {
        Ok(p) => p,
        Err((permanent, message)) => {
            tracing::warn!(run = %key, permanent, "cannot start the run: {message}");
            finish(
                tx,
                Some(failure(permanent, format!("the worker cannot start this run: {message}"), "", &[])),
            )
            .await;
            return Ok(());
        }
    };
    let Prepared { dir, spec_path } = prepared;

    // rendezvous: publish this rank's ring address, learn everyone's and this generation's secret
    let (peers, ring_secret) = if a.world_size > 1 {
        let data_addr = data_addr(&ctx.data_host, ctx.data_port)?;
        tracing::info!(run = %key, rank = a.rank, %data_addr, "rendezvous");
        let rdv = rendezvous(ctx, a, data_addr.clone());
        let answer = tokio::select! {
            r = rdv => r,
            _ = stop.changed() => { finish(tx, None).await; return Ok(()); }
        };
        match answer {
            Ok(answer) => (answer.data_addrs, answer.ring_secret),
            Err(e) => {
                // a stale generation is answered by the next heartbeat; anything else restarts the group
                let stale = matches!(
                    e.code(),
                    Some(Code::FailedPrecondition | Code::NotFound | Code::Aborted | Code::PermissionDenied)
                );
                tracing::warn!(run = %key, "rendezvous failed: {e}");
                let report = (!stale).then(|| failure(false, format!("rendezvous failed: {e}"), "", &[]));
                finish(tx, report).await;
                return Ok(());
            }
        }
    } else {
        (vec![], vec![])
    };
    if a.world_size > 1 && peers.len() != a.world_size as usize {
        let msg = format!("rendezvous returned {} addresses for a group of {}", peers.len(), a.world_size);
        finish(tx, Some(failure(false, msg, "", &[]))).await;
        return Ok(());
    }

    let out = dir.join("out");
    let args = match child_args(ctx, a, &spec_path, &out, &peers, &dir) {
        Ok(args) => args,
        Err(e) => {
            // a task this worker cannot read will not read better elsewhere
            finish(tx, Some(failure(true, e.to_string(), "", &[]))).await;
            return Ok(());
        }
    };
    let mut env = vec![];
    if !ring_secret.is_empty() {
        // the environment, not argv: `ps` shows every user the command line
        env.push((super::RING_SECRET_ENV.to_string(), cyclotron_proto::auth::hex_encode(&ring_secret)));
    }
    let spec = ChildSpec {
        program: ctx.binary.clone(),
        args,
        cwd: ctx.child_cwd.clone(),
        ping_every: Some(ctx.child_watchdog / 4),
        log_prefix: format!("[{} rank {}]", a.job_id, a.rank),
        env,
    };
    let mut child = match Child::spawn(&spec) {
        Ok(c) => c,
        Err(e) => {
            finish(tx, Some(failure(false, format!("the worker cannot start training: {e}"), "", &[]))).await;
            return Ok(());
        }
    };
    tracing::info!(run = %key, rank = a.rank, world = a.world_size, pid = child.pid(), "training started");
    let mut failed: Option<(bool, String)> = None;
    let mut stdout_open = true;
    let mut progress = super::stall::Progress::new(child.pid(), ctx.stall_timeout);
    let mut check = tokio::time::interval(progress.check_every());
    // the events first (stdout closes when the child exits), then the exit status
    while stdout_open {
        tokio::select! {
            e = child.next_event() => match e {
                Some(TrainEvent::Failed { permanent, message }) => failed = Some((permanent, message)),
                Some(e) => {
                    progress.event();
                    log_event(&key, &e);
                    // every rank sees the same epochs; rank 0 speaks for the group (each rank
                    // reports its own step times)
                    if a.rank == 0 || matches!(e, TrainEvent::Steps { .. }) {
                        let _ = tx.send(Report::Progress(e));
                    }
                }
                None => stdout_open = false,
            },
            _ = check.tick() => {
                if let Some(why) = progress.stuck() {
                    tracing::warn!(run = %key, "training is stuck ({why}); stopping it");
                    let s = child.stop(ctx.stop_grace).await?;
                    let report = failure(false, format!("training stuck: {why}"), &describe_exit(&s), &child.stderr_tail());
                    finish(tx, Some(report)).await;
                    return Ok(());
                }
            }
            _ = stop.changed() => {
                let s = child.stop(ctx.stop_grace).await?;
                tracing::info!(run = %key, "stopped the training child ({})", describe_exit(&s));
                finish(tx, None).await;
                return Ok(());
            }
        }
    }
    let status = tokio::select! {
        s = child.wait() => s?,
        _ = stop.changed() => {
            let s = child.stop(ctx.stop_grace).await?;
            tracing::info!(run = %key, "stopped the training child ({})", describe_exit(&s));
            finish(tx, None).await;
            return Ok(());
        }
    };
    for e in child.remaining_events() {
        match e {
            TrainEvent::Failed { permanent, message } => failed = Some((permanent, message)),
            e if a.rank == 0 => {
                let _ = tx.send(Report::Progress(e));
            }
            _ => {}
        }
    }
    let exit = describe_exit(&status);
    let report = if status.success() {
        match read_results(&out, a.rank) {
            Ok(result_json) => {
                Report::Result { ok: true, result_json, error: String::new(), permanent: false }
            }
            Err(e) => failure(false, e, &exit, &child.stderr_tail()),
        }
    } else {
        let (permanent, message) = failed.unwrap_or_else(|| (false, format!("training {exit}")));
        tracing::warn!(run = %key, permanent, "training failed: {message}");
        failure(permanent, message, &exit, &child.stderr_tail())
    };
    tracing::info!(run = %key, "training {exit}");
    // reports are retried until acknowledged or their deadline; a stop abandons them
    tokio::select! {
        _ = finish(tx, Some(report)) => {}
        _ = stop.changed() => {}
    }
    Ok(())
}

struct Prepared {
    dir: PathBuf,
    spec_path: PathBuf,
}

/// The run's folder and spec file, after checking the spec against this worker's sandbox.
/// `Err((permanent, why))`: a spec the worker refuses fails for good; a folder it cannot write
/// (a full disk) is transient.
fn prepare(ctx: &RunContext, a: &Assignment) -> std::result::Result<Prepared, (bool, String)> {
    let spec = JobSpec::from_toml_str(&a.spec_toml, "the assigned spec")
        .and_then(|s| s.validate().map(|()| s))
        .map_err(|e| (true, e.to_string()))?;
    let cwd = match &ctx.child_cwd {
        Some(d) => d.clone(),
        None => std::env::current_dir().map_err(|e| (false, format!("no working directory: {e}")))?,
    };
    let refused = ctx.sandbox.problems(&spec, &cwd);
    if !refused.is_empty() {
        return Err((
            true,
            format!("the spec reaches outside this worker's sandbox: {}", refused.join("; ")),
        ));
    }
    let dir = ctx.work_dir.join(format!("{}-t{}-g{}", sanitize(&a.job_id), a.task, a.generation));
    std::fs::create_dir_all(&dir).map_err(|e| (false, format!("creating {}: {e}", dir.display())))?;
    let spec_path = dir.join("job.toml");
    std::fs::write(&spec_path, &a.spec_toml)
        .map_err(|e| (false, format!("writing {}: {e}", spec_path.display())))?;
    Ok(Prepared { dir, spec_path })
}

/// Rank 0's `results.json`; other ranks have none.
fn read_results(out: &Path, rank: u32) -> std::result::Result<String, String> {
    if rank != 0 {
        return Ok(String::new());
    }
    let path = out.join("results.json");
    std::fs::read_to_string(&path).map_err(|e| format!("training exited cleanly but {}: {e}", path.display()))
}

/// The training child's command line for the assignment's task (`Assignment.order`, built by the
/// coordinator's planner; absent: the whole job as one run); files it needs (the sweep's curve)
/// are written into `dir`. This is the one place a task becomes a command.
pub fn child_args(
    ctx: &RunContext,
    a: &Assignment,
    spec: &Path,
    out: &Path,
    peers: &[String],
    dir: &Path,
) -> Result<Vec<OsString>> {
    use cyclotron_proto::v1::task_order::Kind;
    let invalid = |message: String| AgentError::Invalid {
        what: format!("task {} of job {}", a.task, a.job_id),
        message,
    };
    let choice = |sweep: &Option<cyclotron_proto::v1::SweepChoice>| -> Result<Option<SweepChoice>> {
        sweep.as_ref().map(|c| SweepChoice::try_from(c).map_err(invalid)).transpose()
    };
    let mut args: Vec<OsString> = vec![
        "--quiet".into(),
        "--parent-watchdog-ms".into(),
        ctx.child_watchdog.as_millis().to_string().into(),
    ];
    let mut push = |flag: &str, value: String| {
        args.push(flag.into());
        args.push(value.into());
    };
    let group = match a.order.as_ref().map(|o| o.kind.as_ref()) {
        None | Some(Some(Kind::Run(_))) => {
            let (run, seed, sweep) = match a.order.as_ref().and_then(|o| o.kind.as_ref()) {
                Some(Kind::Run(r)) => (r.run.clone(), Some(r.seed), choice(&r.sweep)?),
                _ => (String::new(), None, None),
            };
            let run = if run.is_empty() { a.job_id.clone() } else { run };
            push("train", spec.display().to_string());
            push("--out", out.display().to_string());
            push("--run", run.clone());
            if run != a.job_id {
                // one of several independent runs: its own seed
                if let Some(seed) = seed {
                    push("--seed", seed.to_string());
                }
            }
            if let Some(choice) = &sweep {
                push("--candidate", json(&choice.candidate));
                let path = dir.join("lr_find.json");
                std::fs::write(&path, json(&choice.report))
                    .map_err(|e| AgentError::Io { what: format!("writing {}", path.display()), source: e })?;
                push("--lr-find-report", path.display().to_string());
            }
            if let Some(addr) = &ctx.metrics_addr {
                push("--metrics-addr", addr.clone());
            }
            args.push("--resume".into());
            args.push("--one-run".into());
            true
        }
        Some(Some(Kind::Sweep(p))) => {
            let probe = p.probe.as_ref().ok_or_else(|| invalid("a sweep point without its probe".into()))?;
            let probe = Probe::try_from(probe).map_err(invalid)?;
            let overrides =
                p.overrides.as_ref().ok_or_else(|| invalid("a sweep point without its candidate".into()))?;
            let overrides = Candidate::try_from(overrides).map_err(invalid)?;
            push("sweep-point", spec.display().to_string());
            push("--out", out.display().to_string());
            push("--probe", json(&probe));
            push("--candidate", json(&overrides));
            true
        }
        Some(Some(Kind::Evaluate(e))) => {
            push("evaluate-runs", spec.display().to_string());
            push("--out", out.display().to_string());
            push("--run", a.job_id.clone());
            push(
                "--runs",
                e.runs.iter().map(|r| format!("{}:{}", r.run, r.seed)).collect::<Vec<_>>().join(","),
            );
            if let Some(choice) = choice(&e.sweep)? {
                push("--candidate", json(&choice.candidate));
            }
            false
        }
        Some(None) => {
            return Err(invalid(
                "a task of a kind this worker does not know; is this worker older than the coordinator?"
                    .into(),
            ))
        }
    };
    args.push("--events-jsonl".into());
    args.push("-".into());
    if group && a.world_size > 1 {
        for (flag, value) in [
            ("--rank", a.rank.to_string()),
            ("--world-size", a.world_size.to_string()),
            ("--peers", peers.join(",")),
            ("--generation", a.generation.to_string()),
            ("--collective-timeout", format!("{}", ctx.collective_timeout.as_secs_f64())),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
    }
    Ok(args)
}

/// The JSON text of what the child reads from its command line (`--candidate`, `--probe`) or a
/// file (`--lr-find-report`).
fn json<T: serde::Serialize>(v: &T) -> String {
    // plain data: serialising cannot fail
    serde_json::to_string(v).unwrap_or_default()
}

/// `host:port` for this run's ring: the configured port, or a free one.
fn data_addr(host: &str, port: u16) -> Result<String> {
    if port != 0 {
        return Ok(format!("{host}:{port}"));
    }
    let l = std::net::TcpListener::bind((host, 0))
        .map_err(|e| AgentError::Io { what: format!("finding a free port on {host}"), source: e })?;
    let addr = l.local_addr().map_err(|e| AgentError::Io { what: "local address".into(), source: e })?;
    Ok(addr.to_string())
}

async fn rendezvous(
    ctx: &RunContext,
    a: &Assignment,
    data_addr: String,
) -> std::result::Result<RendezvousResponse, super::ClientError> {
    let client = ctx.client.with_deadlines(Deadlines::new(
        ctx.rendezvous_timeout,
        ctx.rendezvous_timeout + Duration::from_secs(10),
    ));
    let req = RendezvousRequest {
        job_id: a.job_id.clone(),
        task: a.task,
        generation: a.generation,
        rank: a.rank,
        data_addr,
        nccl_unique_id: vec![],
        worker_id: ctx.worker_id.clone(),
        session: super::session_of(&ctx.session),
    };
    let timeout = ctx.rendezvous_timeout;
    let r = client
        .call(|ch| {
            let req = super::request(req.clone(), timeout);
            async move { WorkerServiceClient::new(ch).rendezvous(req).await }
        })
        .await?;
    Ok(r)
}

fn log_event(key: &RunKey, e: &TrainEvent) {
    match e {
        TrainEvent::Epoch { stage, epoch, train_loss, valid_loss, valid_accuracy, .. } => tracing::info!(
            run = %key,
            "stage {} epoch {epoch}: train loss {train_loss:.4} valid loss {valid_loss:.4} valid accuracy {:.2}%",
            stage + 1,
            100.0 * valid_accuracy
        ),
        TrainEvent::Resumed { stage, epoch, step, checkpoint } => tracing::info!(
            run = %key,
            "resumed from checkpoint {checkpoint} (stage {}, epoch {epoch}, step {step})",
            stage + 1
        ),
        TrainEvent::Snapshot { index, url, .. } => {
            tracing::info!(run = %key, "snapshot {index} saved to {url}")
        }
        _ => {}
    }
}

/// A job id as a folder name.
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use cyclotron_core::lr_range::LrFindReport;
    use cyclotron_proto::v1::task_order::Kind;
    use cyclotron_proto::v1::{EvaluateOrder, RunOrder, RunSeed, SweepOrder, TaskOrder};

    use super::*;

    fn ctx() -> RunContext {
        RunContext {
            client: Coordinators::new(
                &["127.0.0.1:1".into()],
                Deadlines::new(Duration::from_secs(1), Duration::from_secs(1)),
            )
            .unwrap(),
            worker_id: "w".into(),
            session: Default::default(),
            sandbox: Default::default(),
            stall_timeout: Duration::from_secs(600),
            binary: "/bin/true".into(),
            work_dir: "/tmp".into(),
            child_cwd: None,
            metrics_addr: None,
            data_host: "127.0.0.1".into(),
            data_port: 0,
            child_watchdog: Duration::from_millis(4000),
            stop_grace: Duration::from_secs(5),
            rendezvous_timeout: Duration::from_secs(60),
            collective_timeout: Duration::from_secs(30),
        }
    }

    fn assignment(world: u32) -> Assignment {
        Assignment {
            job_id: "j-1".into(),
            task: 0,
            generation: 2,
            rank: 1,
            world_size: world,
            spec_toml: String::new(),
            order: None,
            resume_from: String::new(),
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    fn child_args(
        ctx: &RunContext,
        a: &Assignment,
        spec: &Path,
        out: &Path,
        peers: &[String],
    ) -> Vec<OsString> {
        super::child_args(ctx, a, spec, out, peers, Path::new("/tmp")).unwrap()
    }

    fn order(kind: Kind) -> Option<TaskOrder> {
        Some(TaskOrder { kind: Some(kind) })
    }

    #[test]
    fn sweep_points_runs_and_evaluations_start_their_own_commands() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = assignment(2);
        let overrides = Candidate { batch_size: Some(64), ..Default::default() };
        a.order = order(Kind::Sweep(SweepOrder {
            candidate: 1,
            overrides: Some((&overrides).into()),
            probe: Some((&Probe::Grid { lr: 0.01, steps: 30 }).into()),
        }));
        let peers = ["p0".to_string(), "p1".to_string()];
        let args = strings(
            super::child_args(&ctx(), &a, Path::new("j.toml"), Path::new("o"), &peers, dir.path()).unwrap(),
        )
        .join(" ");
        assert!(args.contains(r#"sweep-point j.toml --out o --probe {"probe":"grid","lr":0.01,"steps":30} --candidate {"batch_size":64} --events-jsonl -"#), "{args}");
        assert!(
            args.contains("--rank 1 --world-size 2 --peers p0,p1"),
            "a sweep point can be data-parallel: {args}"
        );

        let report = LrFindReport {
            lrs: vec![0.1],
            losses: vec![1.0],
            raw_losses: vec![1.0],
            suggestion: None,
            diverged: false,
        };
        let choice =
            SweepChoice { candidate: Candidate { weight_decay: Some(0.01), ..Default::default() }, report };
        a.order = order(Kind::Run(RunOrder {
            stages: 1,
            epochs: 2,
            lr_find: true,
            snapshots: true,
            run: "j-1-r1".into(),
            seed: 43,
            sweep: Some((&choice).into()),
        }));
        let args = strings(
            super::child_args(&ctx(), &a, Path::new("j.toml"), Path::new("o"), &[], dir.path()).unwrap(),
        )
        .join(" ");
        let path = dir.path().join("lr_find.json");
        assert!(
            args.contains(&format!("train j.toml --out o --run j-1-r1 --seed 43 --candidate {{\"weight_decay\":0.01}} --lr-find-report {} --resume --one-run", path.display())),
            "{args}"
        );
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(written["lrs"][0], 0.1);

        let mut one = assignment(1);
        one.order = order(Kind::Evaluate(EvaluateOrder {
            runs: vec![
                RunSeed { run: "j-1-r0".into(), seed: 42 },
                RunSeed { run: "j-1-r1".into(), seed: 43 },
            ],
            sweep: None,
        }));
        let args = strings(
            super::child_args(&ctx(), &one, Path::new("j.toml"), Path::new("o"), &[], dir.path()).unwrap(),
        )
        .join(" ");
        assert!(
            args.contains(
                "evaluate-runs j.toml --out o --run j-1 --runs j-1-r0:42,j-1-r1:43 --events-jsonl -"
            ),
            "{args}"
        );

        // a kind this worker does not know (a newer coordinator), a sweep point missing its probe
        one.order = Some(TaskOrder { kind: None });
        let e = super::child_args(&ctx(), &one, Path::new("j"), Path::new("o"), &[], dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not know") && e.contains("older than the coordinator"), "{e}");
        one.order = order(Kind::Sweep(SweepOrder {
            candidate: 0,
            overrides: Some((&overrides).into()),
            probe: None,
        }));
        let e = super::child_args(&ctx(), &one, Path::new("j"), Path::new("o"), &[], dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("without its probe"), "{e}");
    }

    #[test]
    fn the_child_resumes_the_job_run_with_the_groups_addresses() {
        let peers = vec!["127.0.0.1:5000".to_string(), "127.0.0.1:5001".to_string()];
        let args = strings(child_args(
            &ctx(),
            &assignment(2),
            Path::new("/w/job.toml"),
            Path::new("/w/out"),
            &peers,
        ));
        let joined = args.join(" ");
        assert!(joined.starts_with("--quiet --parent-watchdog-ms 4000 train /w/job.toml --out /w/out --run j-1 --resume --one-run --events-jsonl -"), "{joined}");
        assert!(joined.contains("--rank 1 --world-size 2 --peers 127.0.0.1:5000,127.0.0.1:5001 --generation 2 --collective-timeout 30"), "{joined}");
        let alone =
            strings(child_args(&ctx(), &assignment(1), Path::new("j"), Path::new("o"), &[])).join(" ");
        assert!(!alone.contains("--rank"), "a world of one trains alone: {alone}");
        assert!(!alone.contains("--metrics-addr"));
        let with_metrics = RunContext { metrics_addr: Some("127.0.0.1:9100".into()), ..ctx() };
        let args = strings(child_args(&with_metrics, &assignment(1), Path::new("j"), Path::new("o"), &[]));
        assert!(args.join(" ").contains("--metrics-addr 127.0.0.1:9100"), "{args:?}");
    }

    #[test]
    fn free_ports_are_picked_and_fixed_ones_kept() {
        let a = data_addr("127.0.0.1", 0).unwrap();
        assert!(a.starts_with("127.0.0.1:") && !a.ends_with(":0"), "{a}");
        assert_eq!(data_addr("10.0.0.1", 7000).unwrap(), "10.0.0.1:7000");
        assert_eq!(sanitize("j/1 x"), "j_1_x");
    }
}
