//! `cyclotron`: the one binary. On one process: `lr-find`, `train`, `plot` and `check`; on a
//! cluster: `worker`, `submit`, `status`, `watch`, `cancel` and `local` (a whole cluster on this
//! machine) in [`cluster_cmd`]; `coordinator` in [`coordinator_cmd`].

mod cluster_cmd;
mod coordinator_cmd;
mod error_text;
mod metrics;
mod output;
mod plot;
mod predict_cmd;
mod predict_rows;
mod predict_text;
mod progress;
mod task_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cyclotron_core::spec::JobSpec;
use cyclotron_worker::job;

#[derive(Parser)]
#[command(
    name = "cyclotron",
    version,
    about = "Training on libtorch: LR-range tests, SGDR with snapshots, snapshot ensembles"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// No progress bars or per-epoch lines.
    #[arg(long, global = true)]
    quiet: bool,
    /// Exit when stdin closes (the supervising process died) or, if > 0, stays silent this long.
    #[arg(long, global = true, hide = true)]
    parent_watchdog_ms: Option<u64>,
}

#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Coordinator(coordinator_cmd::CoordinatorCmd),
    /// Run the LR-range test of a job; writes OUT/lr_find.json and OUT/lr_find.png. With
    /// `[lr_find] grid` or candidates, every sweep point in turn; also OUT/sweep.json and sweep.png.
    LrFind {
        job: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Run every stage of a job; writes OUT/results.json, lr_find.json and plots, prints the results table.
    Train {
        job: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Run name in the checkpoint store (default: run-<unix time>-<pid>; the ranks of a group
        /// started by hand should all be given the same one).
        #[arg(long)]
        run: Option<String>,
        /// Continue the run (`--run`) from its newest valid checkpoint.
        #[arg(long, requires = "run")]
        resume: bool,
        /// Stop after this many epochs once their checkpoints are committed (for tests).
        #[arg(long, hide = true)]
        stop_after_epochs: Option<u64>,
        /// Write one JSON object per stage start, LR-range test, epoch, snapshot and resume to
        /// this file (`-`: stdout), for the worker agent.
        #[arg(long, hide = true)]
        events_jsonl: Option<String>,
        #[command(flatten)]
        group: GroupArgs,
        /// Serve Prometheus metrics at http://ADDR/metrics while the job runs (host:port; port 0
        /// picks a free one, logged at start). Off by default, or with `off`.
        #[arg(long, value_name = "ADDR", value_parser = metrics::parse)]
        metrics_addr: Option<metrics::MetricsAddr>,
        #[command(flatten)]
        task: task_cmd::TaskArgs,
        /// The job's first LR-range test, already run by the cluster's sweep (lr_find.json form):
        /// stage 1 takes it instead of running [lr_find].
        #[arg(long, hide = true)]
        lr_find_report: Option<PathBuf>,
    },
    /// One point of a parallel LR sweep (started by a worker for the coordinator): writes
    /// OUT/results.json.
    #[command(hide = true)]
    SweepPoint {
        job: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// `{"probe":"range"}` or `{"probe":"grid","lr":0.01,"steps":30}`.
        #[arg(long)]
        probe: String,
        #[command(flatten)]
        task: task_cmd::TaskArgs,
        #[arg(long)]
        events_jsonl: Option<String>,
        #[command(flatten)]
        group: GroupArgs,
    },
    /// Evaluate every snapshot of several independent runs of a job, alone and averaged (started
    /// by a worker for the coordinator): writes OUT/results.json and prints the table.
    #[command(hide = true)]
    EvaluateRuns {
        job: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Where the job's results go in the store (the job id).
        #[arg(long)]
        run: String,
        /// The runs, `RUN:SEED,…`.
        #[arg(long, value_delimiter = ',', required = true)]
        runs: Vec<String>,
        #[command(flatten)]
        task: task_cmd::TaskArgs,
        #[arg(long)]
        events_jsonl: Option<String>,
    },
    /// Apply a finished run's model to new images: its ensemble (with test-time augmentation when
    /// the job used it) or one snapshot; prints each input's most probable classes.
    Predict(predict_cmd::PredictArgs),
    /// Run a worker: register with the coordinators and train what they assign.
    Worker(cluster_cmd::WorkerArgs),
    /// Submit a job spec to the cluster; prints the job id.
    Submit(cluster_cmd::SubmitArgs),
    /// The cluster's jobs, or one job in detail.
    Status(cluster_cmd::StatusArgs),
    /// Follow a job's progress until it ends; exits non-zero unless it succeeded.
    Watch(cluster_cmd::WatchArgs),
    /// Cancel a job.
    Cancel(cluster_cmd::CancelArgs),
    /// Run a job on a cluster of this machine: a coordinator and N worker processes, all stopped at the end.
    Local(cluster_cmd::LocalArgs),
    /// Time checkpoints (`make bench`): training stall per checkpoint, restore vs raw get. With the
    /// `s3-bench` feature the store is an in-process S3 server; without it, a temporary folder.
    #[command(hide = true)]
    BenchCheckpoint {
        #[arg(long, default_value = "resnet50")]
        model: String,
        #[arg(long, default_value_t = 16)]
        batch_size: i64,
        #[arg(long, default_value_t = 64)]
        side: i64,
        #[arg(long, default_value_t = 2)]
        threads: i32,
        #[arg(long, default_value_t = 4)]
        checkpoints: usize,
        #[arg(long, default_value_t = 3)]
        steps_between: usize,
        /// Rounds of restore vs raw get (which goes first alternates).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Regenerate the plots of a run folder from its JSON files.
    Plot {
        run_dir: PathBuf,
        /// A tabular snapshot folder (`runs/<job>/<run>/snapshots/cycle-<i>`): also draw the PCA of
        /// a categorical column's learned embedding as RUN_DIR/embeddings.png.
        #[arg(long)]
        embeddings: Option<PathBuf>,
        /// The column of `--embeddings` (default: the first with at least three levels).
        #[arg(long)]
        column: Option<String>,
    },
    /// Parse and validate a job spec without running it.
    Check { job: PathBuf },
    /// Time the engine's training step on synthetic data (what `make bench` compares to PyTorch).
    #[command(hide = true)]
    BenchStep {
        #[arg(long, default_value = "small_resnet")]
        model: String,
        #[arg(long, default_value_t = 32)]
        width: i64,
        /// small_resnet's residual blocks per stage (`[model] blocks`)
        #[arg(long, default_value_t = 1)]
        blocks: i64,
        #[arg(long, default_value_t = 128)]
        batch_size: i64,
        #[arg(long, default_value_t = 2)]
        threads: i32,
        #[arg(long, default_value_t = 50)]
        steps: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// cpu or cuda (a GPU step syncs once per step to read the loss, as the peer does)
        #[arg(long, default_value = "cpu")]
        device: String,
        /// With `--model torchscript`: the module's file (it takes [B, 3, 32, 32], 10 classes).
        #[arg(long)]
        torchscript: Option<PathBuf>,
        /// fp32, or bf16 (autocast around the forward pass and loss, as `[runtime] precision`)
        #[arg(long, default_value = "fp32")]
        precision: cyclotron_core::spec::Precision,
        /// contiguous or channels_last, as `[runtime] memory_format`
        #[arg(long, default_value = "contiguous")]
        memory_format: cyclotron_core::spec::MemoryFormat,
        /// Write the result as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Time the language model's training step (tokens/s; bench/pytorch_lm.py is the peer).
    #[command(hide = true)]
    BenchLm {
        #[arg(long, default_value_t = 8000)]
        vocab: i64,
        #[arg(long, default_value_t = 200)]
        emb: i64,
        #[arg(long, default_value_t = 400)]
        hidden: i64,
        #[arg(long, default_value_t = 2)]
        layers: i64,
        #[arg(long, default_value_t = 32)]
        batch: i64,
        #[arg(long, default_value_t = 70)]
        bptt: i64,
        #[arg(long, default_value_t = 2)]
        threads: i32,
        #[arg(long, default_value_t = 30)]
        steps: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Write the result as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Time a tabular job's training epochs (rows/s; bench/pytorch_tabular.py is the peer).
    #[command(hide = true)]
    BenchTabular {
        #[arg(default_value = "examples/tabular_sales.toml")]
        job: PathBuf,
        #[arg(long, default_value_t = 2)]
        threads: i32,
        /// Timed epochs.
        #[arg(long, default_value_t = 5)]
        epochs: usize,
        /// Untimed epochs first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value_t = 3e-3)]
        lr: f64,
        /// Write the result as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The cost of metrics on the training step: the learner alternately with and without them.
    #[command(hide = true)]
    BenchMetrics {
        #[arg(long, default_value = "small_resnet")]
        model: String,
        #[arg(long, default_value_t = 16)]
        width: i64,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        #[arg(long, default_value_t = 2)]
        threads: i32,
        /// Steps per timed epoch.
        #[arg(long, default_value_t = 30)]
        steps: u64,
        /// Pairs of epochs (one without, one with metrics).
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// All-reduce bus bandwidth of the TCP ring, one process per rank (peer: bench/gloo_allreduce.py).
    #[command(hide = true)]
    BenchAllreduce {
        #[command(flatten)]
        group: GroupArgs,
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
        sizes_mb: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        iters: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Data-parallel training throughput, one process per rank (peer: bench/pytorch_ddp.py).
    #[command(hide = true)]
    BenchDdp {
        #[command(flatten)]
        group: GroupArgs,
        #[arg(long, default_value = "small_resnet")]
        model: String,
        #[arg(long, default_value_t = 16)]
        width: i64,
        #[arg(long, default_value_t = 64)]
        batch_size: i64,
        #[arg(long, default_value_t = 1)]
        threads: i32,
        #[arg(long, default_value_t = 30)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long)]
        /// cpu or cuda (on cuda the group reduces with NCCL when built with it; CYCLOTRON_COLLECTIVE overrides)
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Time head training with a frozen body: full forward pass vs precomputed features.
    #[command(hide = true)]
    BenchHead {
        #[arg(long, default_value = "resnet34")]
        model: String,
        #[arg(long, default_value_t = 64)]
        size: i64,
        #[arg(long, default_value_t = 64)]
        batch_size: i64,
        #[arg(long, default_value_t = 2)]
        threads: i32,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// Static launch of one data-parallel rank (like torchrun's static mode).
#[derive(clap::Args)]
struct GroupArgs {
    /// This process's rank in the data-parallel group.
    #[arg(long, default_value_t = 0)]
    rank: usize,
    /// Number of processes in the group; each trains data.batch_size items per step.
    #[arg(long, default_value_t = 1)]
    world_size: usize,
    /// host:port of every rank, in rank order; this rank listens on its own.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Deadline of every collective call and of connecting, in seconds.
    #[arg(long, default_value_t = 60.0)]
    collective_timeout: f64,
    /// The rendezvous generation (set by the worker agent; a restart bumps it).
    #[arg(long, default_value_t = 0, hide = true)]
    generation: u64,
}

impl GroupArgs {
    /// `None` for a plain single-process run.
    fn spec(&self) -> anyhow::Result<Option<cyclotron_worker::distributed::GroupSpec>> {
        if self.world_size == 1 && self.rank == 0 && self.peers.len() <= 1 {
            return Ok(None);
        }
        anyhow::ensure!(self.collective_timeout > 0.0, "--collective-timeout must be positive");
        let mut g =
            cyclotron_worker::distributed::GroupSpec::new(self.rank, self.world_size, self.peers.clone());
        g.timeout = std::time::Duration::from_secs_f64(self.collective_timeout);
        g.generation = self.generation;
        g.backend = cyclotron_worker::distributed::Backend::from_env()?;
        g.validate()?;
        Ok(Some(g))
    }
}

/// `--device` of the benchmarks.
fn parse_device(name: &str) -> anyhow::Result<tch::Device> {
    match name {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
        "cuda" => anyhow::bail!("--device cuda: no CUDA device is visible"),
        other => anyhow::bail!("--device {other:?}: use cpu or cuda"),
    }
}

/// Output read by another program that stops reading (`status | head`) ends the command quietly,
/// as `ls` does, instead of a panic in `println!`. SIGPIPE itself stays ignored: network clients
/// and training children must get EPIPE from a closed socket or pipe, not die of the signal.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.starts_with("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(141); // 128 + SIGPIPE, what a shell reports for `ls | head`
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    cyclotron_worker::allocator::tune_for_training();
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(ms) = cli.parent_watchdog_ms {
        let silence = (ms > 0).then(|| std::time::Duration::from_millis(ms));
        cyclotron_worker::agent::watchdog::exit_with_parent(silence);
    }
    match cli.cmd {
        Cmd::Coordinator(cmd) => coordinator_cmd::run(cmd),
        Cmd::Check { job } => {
            let spec = JobSpec::load(&job)?;
            let tasks = cyclotron_coordinator::plan::plan(&spec.name, &spec);
            let count = |kind: &str| tasks.iter().filter(|t| t.task.kind() == kind).count();
            let on_cluster = if tasks.len() > 1 {
                format!(
                    "; on a cluster: {} LR sweep points, then {} runs in parallel{}",
                    count("sweep"),
                    count("run"),
                    if count("evaluate") > 0 { ", then their evaluation" } else { "" }
                )
            } else {
                String::new()
            };
            println!(
                "{}: ok ({} stages, {} epochs per run{on_cluster})",
                job.display(),
                spec.stages.len(),
                spec.stages.iter().map(|s| s.total_epochs()).sum::<u64>()
            );
            Ok(())
        }
        Cmd::LrFind { job, out } => {
            let spec = JobSpec::load(&job)?;
            output::prepare_dir(&out)?;
            let rule = spec.lr_find.as_ref().map(|f| f.suggestion).unwrap_or_default();
            let mut bars = progress::Progress::new(cli.quiet).with_suggestion(rule);
            let swept = spec
                .lr_find
                .as_ref()
                .is_some_and(|f| f.grid > 0 || cyclotron_core::sweep::candidates(f).len() > 1);
            let report = if swept {
                // a grid or several candidates: every point here, one after another
                let sweep = cyclotron_worker::sweep::sweep_in_order(&spec, &mut bars)?;
                output::write_json(&out.join("sweep.json"), &sweep)?;
                if let Err(e) = plot::sweep_png(&sweep, &out.join("sweep.png")) {
                    tracing::warn!("sweep.png skipped: {e:#}");
                }
                for c in &sweep.candidates {
                    let lr = c.lr.map_or("no suggestion".into(), |l| format!("lr {l:.3e}"));
                    println!("{:<40} best loss {:.4}  {lr}", c.label, c.best_loss);
                }
                println!("best: {}", sweep.chosen().label);
                if let (Some(s), true) = (sweep.chosen().report.suggestion, sweep.grid > 0) {
                    println!(
                        "suggested learning rates (grid): steep {:.3e}  valley {:.3e}  minimum (best point) {:.3e}",
                        s.steep, s.valley, s.minimum
                    );
                }
                sweep.chosen().report.clone()
            } else {
                job::run_lr_find(&spec, &mut bars)?
            };
            output::write_json(&out.join("lr_find.json"), &report)?;
            if let Err(e) = plot::lr_find_png(&report, &out.join("lr_find.png")) {
                tracing::warn!("lr_find.png skipped: {e:#}; `cyclotron plot {}` redraws it", out.display());
            }
            if !swept || spec.lr_find.as_ref().is_some_and(|f| f.grid == 0) {
                output::print_lr_find(&report);
            }
            Ok(())
        }
        Cmd::SweepPoint { job, out, probe, task, events_jsonl, group } => {
            let group = group.spec()?;
            task_cmd::sweep_point(&job, &out, &probe, &task, events_jsonl.as_deref(), group, cli.quiet)
        }
        Cmd::EvaluateRuns { job, out, run, runs, task, events_jsonl } => {
            task_cmd::evaluate_runs(&job, &out, &run, &runs, &task, events_jsonl.as_deref(), cli.quiet)
        }
        Cmd::Train {
            job,
            out,
            run,
            resume,
            stop_after_epochs,
            events_jsonl,
            group,
            metrics_addr,
            task,
            lr_find_report,
        } => {
            let mut events = match &events_jsonl {
                Some(target) => Some(
                    cyclotron_worker::agent::events::EventsJsonl::open(target)
                        .with_context(|| format!("--events-jsonl {target}"))?,
                ),
                None => None,
            };
            let loaded = task.load(&job).and_then(|spec| {
                let report = match &lr_find_report {
                    Some(path) => Some(
                        serde_json::from_str(&std::fs::read_to_string(path)?)
                            .with_context(|| format!("--lr-find-report {}", path.display()))?,
                    ),
                    None => None,
                };
                Ok((spec, report))
            });
            let (spec, lr_find) = match loaded {
                Ok(s) => s,
                Err(e) => {
                    let e = cyclotron_worker::Error::Invalid {
                        what: job.display().to_string(),
                        message: error_text::error_chain(&e),
                    };
                    events.iter_mut().for_each(|ev| ev.failed(&e));
                    return Err(e.into());
                }
            };
            let group = group.spec()?;
            let writer = group.as_ref().is_none_or(|g| g.is_writer());
            if writer {
                output::prepare_dir(&out)?;
            }
            let run = run.unwrap_or_else(|| output::default_run_id(group.is_none()));
            let rank = group.as_ref().map_or(0, |g| g.rank);
            let (metrics, _server) = metrics::serve(metrics_addr, &spec.name, rank)?;
            let opts = job::TrainOptions { resume, stop_after_epochs, group, metrics, lr_find };
            let rule = spec.lr_find.as_ref().map(|f| f.suggestion).unwrap_or_default();
            let mut bars = progress::Progress::new(cli.quiet).with_suggestion(rule);
            // a sweep or several runs: every task here in turn, unless the cluster runs this one alone
            let in_order = !task.one_run && cyclotron_worker::sweep::needs_tasks(&spec);
            let train = |obs: &mut dyn cyclotron_worker::event::Observer| {
                if in_order {
                    cyclotron_worker::sweep::train_in_order(&spec, &run, &opts, obs)
                } else {
                    job::run_train_with(&spec, &run, &opts, obs)
                }
            };
            let trained = match &mut events {
                Some(ev) => train(&mut cyclotron_worker::agent::events::Both(&mut bars, ev)),
                None => train(&mut bars),
            };
            let results = match trained {
                Err(e @ cyclotron_worker::Error::Stopped { .. }) => {
                    println!("{e}; continue with --run {run} --resume");
                    return Ok(());
                }
                Err(e) => {
                    events.iter_mut().for_each(|ev| ev.failed(&e));
                    return Err(e.into());
                }
                Ok(r) => r,
            };
            if !writer {
                println!("rank done; rank 0 writes the results");
                return Ok(());
            }
            cluster_cmd::write_run_dir(&out, &results, &spec.output, &run)?;
            output::print_results(&results, &spec.output, &spec.name, &run);
            Ok(())
        }
        Cmd::Predict(args) => predict_cmd::predict(args),
        Cmd::Worker(args) => cluster_cmd::worker(args),
        Cmd::Submit(args) => cluster_cmd::submit(args),
        Cmd::Status(args) => cluster_cmd::status(args),
        Cmd::Watch(args) => cluster_cmd::watch(args, cli.quiet),
        Cmd::Cancel(args) => cluster_cmd::cancel(args),
        Cmd::Local(args) => cluster_cmd::local(args, cli.quiet),
        Cmd::BenchStep {
            model,
            width,
            blocks,
            batch_size,
            threads,
            steps,
            warmup,
            device,
            torchscript,
            precision,
            memory_format,
            json,
        } => {
            let device = parse_device(&device)?;
            let module = match (&torchscript, model == cyclotron_core::spec::TORCHSCRIPT_ARCH) {
                (Some(path), true) => {
                    Some(std::fs::read(path).with_context(|| format!("--torchscript {}", path.display()))?)
                }
                (None, false) => None,
                _ => anyhow::bail!(
                    "bench-step: --torchscript FILE goes with --model torchscript, and only with it"
                ),
            };
            let r = cyclotron_worker::bench::step_throughput(
                &model,
                (width, blocks),
                batch_size,
                threads,
                steps,
                warmup,
                device,
                module.as_deref(),
                (precision, memory_format),
            )?;
            let layout = if r.channels_last { "channels-last" } else { "contiguous" };
            println!("cyclotron {model} batch {batch_size} threads {threads} {precision:?} {layout}: {:.1} samples/s (median step {:.2} ms)", r.samples_per_s, r.step_ms_median);
            if let Some(path) = json {
                output::write_json(&path, &r)?;
            }
            Ok(())
        }
        Cmd::BenchTabular { job, threads, epochs, warmup, lr, json } => {
            if epochs == 0 || threads < 1 {
                anyhow::bail!("bench-tabular: --epochs and --threads must be at least 1");
            }
            let spec = JobSpec::load(&job)?;
            let r = cyclotron_worker::bench::tabular_throughput(&spec, threads, epochs, warmup, lr)?;
            println!(
                "cyclotron tabular {} rows batch {} threads {threads}: {:.0} rows/s median, {:.0} worst (of {epochs} epochs)",
                r.rows, r.batch_size, r.rows_per_s_median, r.rows_per_s_worst
            );
            if let Some(path) = json {
                output::write_json(&path, &r)?;
            }
            Ok(())
        }
        Cmd::BenchLm { vocab, emb, hidden, layers, batch, bptt, threads, steps, warmup, device, json } => {
            let device = parse_device(&device)?;
            let r = cyclotron_worker::bench::lm_throughput(
                (vocab, emb, hidden, layers),
                batch,
                bptt,
                threads,
                steps,
                warmup,
                device,
            )?;
            println!(
                "cyclotron lstm lm emb {emb} hidden {hidden} vocab {vocab} batch {batch} bptt {bptt} threads {threads}: {:.0} tokens/s (median step {:.1} ms)",
                r.tokens_per_s, r.step_ms_median
            );
            if let Some(path) = json {
                output::write_json(&path, &r)?;
            }
            Ok(())
        }
        Cmd::BenchMetrics { model, width, batch_size, threads, steps, rounds, json } => {
            let r =
                cyclotron_worker::bench::metrics_overhead(&model, width, batch_size, threads, steps, rounds)?;
            println!(
                "cyclotron {model} w{width} batch {batch_size} threads {threads}: step {:.2} ms without metrics, {:.2} ms with; overhead {:+.2}% (median of {rounds} pairs); recording alone {:.3} us/step = {:.4}% of a step",
                r.step_ms_off,
                r.step_ms_on,
                100.0 * r.overhead,
                r.record_us_per_step,
                100.0 * r.record_fraction_of_step
            );
            if let Some(path) = json {
                output::write_json(&path, &r)?;
            }
            Ok(())
        }
        Cmd::BenchAllreduce { group, sizes_mb, iters, json } => {
            let g =
                group.spec()?.unwrap_or_else(|| cyclotron_worker::distributed::GroupSpec::new(0, 1, vec![]));
            let rows = cyclotron_worker::distributed::bench::allreduce_bandwidth(&g, &sizes_mb, iters)?;
            if g.is_writer() {
                for r in &rows {
                    println!(
                        "cyclotron ring {} MB x{}: busbw {:.2} GB/s ({:.2} ms)",
                        r.mb,
                        r.world_size,
                        r.busbw_gb_s,
                        1e3 * r.seconds
                    );
                }
                if let Some(path) = json {
                    output::write_json(&path, &rows)?;
                }
            }
            Ok(())
        }
        Cmd::BenchDdp { group, model, width, batch_size, threads, steps, warmup, device, json } => {
            let device = parse_device(&device)?;
            let mut g =
                group.spec()?.unwrap_or_else(|| cyclotron_worker::distributed::GroupSpec::new(0, 1, vec![]));
            g.backend = cyclotron_worker::distributed::Backend::from_env()?;
            let r = cyclotron_worker::bench::ddp_throughput(
                &g,
                (&model, width),
                batch_size,
                threads,
                (steps, warmup),
                device,
            )?;
            if g.is_writer() {
                println!(
                    "cyclotron ddp {model} x{} batch {batch_size}/rank: {:.1} samples/s",
                    r.world_size, r.samples_per_s
                );
                if let Some(path) = json {
                    output::write_json(&path, &r)?;
                }
            }
            Ok(())
        }
        Cmd::BenchHead { model, size, batch_size, threads, steps, json } => {
            let r = cyclotron_worker::bench::head_throughput(&model, size, batch_size, threads, steps)?;
            println!(
                "cyclotron {model} {size}px batch {batch_size} threads {threads}: head training {:.1} samples/s full, {:.1} precomputed (cache filled at {:.1} samples/s)",
                r.full_samples_per_s, r.cached_samples_per_s, r.precompute_samples_per_s
            );
            if let Some(path) = json {
                output::write_json(&path, &r)?;
            }
            Ok(())
        }
        Cmd::BenchCheckpoint {
            model,
            batch_size,
            side,
            threads,
            checkpoints,
            steps_between,
            rounds,
            json,
        } => {
            let dir = tempfile::tempdir().context("temporary folder")?;
            let options = cyclotron_core::checkpoint::StoreOptions::default();
            #[cfg(feature = "s3-bench")]
            let (_server, store) = {
                use cyclotron_core::checkpoint::{test_server::S3TestServer, CheckpointStore, StoreOptions};
                let server = S3TestServer::start(dir.path(), &["bench"], "bench-key", "bench-secret")?;
                let options =
                    StoreOptions { s3: server.options("bench-key", "bench-secret"), ..options.clone() };
                let store = CheckpointStore::open_with("s3://bench/ckpt", &options)?;
                (server, store)
            };
            #[cfg(not(feature = "s3-bench"))]
            let store = cyclotron_core::checkpoint::CheckpointStore::open_with(
                &format!("file://{}", dir.path().display()),
                &options,
            )?;
            let r = cyclotron_worker::checkpoint::bench::run(
                &store,
                &model,
                batch_size,
                side,
                threads,
                checkpoints,
                steps_between,
                (rounds, options.blob_concurrency),
            )?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            if let Some(path) = json {
                output::write_json(&path, &r)?;
            }
            Ok(())
        }
        Cmd::Plot { run_dir, embeddings, column } => {
            for path in plot::plot_run_dir(&run_dir)? {
                println!("{}", path.display());
            }
            if let Some(snapshot) = embeddings {
                let png = run_dir.join("embeddings.png");
                plot::embeddings_png(&snapshot, column.as_deref(), &png)?;
                println!("{}", png.display());
            }
            Ok(())
        }
    }
}
