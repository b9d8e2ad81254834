//! `cyclotron`: the one binary. Today: `lr-find`, `train`, `plot` and `check` on one process;
//! `coordinator`, `worker`, `local`, `submit`, `status` and `watch` arrive with the cluster.

mod output;
mod plot;
mod progress;

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
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the LR-range test of a job; writes OUT/lr_find.json and OUT/lr_find.png.
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
        /// Run name in the checkpoint store (default: run-<unix time>).
        #[arg(long)]
        run: Option<String>,
    },
    /// Regenerate the plots of a run folder from its JSON files.
    Plot { run_dir: PathBuf },
    /// Parse and validate a job spec without running it.
    Check { job: PathBuf },
    /// Time the engine's training step on synthetic data (what `make bench` compares to PyTorch).
    #[command(hide = true)]
    BenchStep {
        #[arg(long, default_value = "small_resnet")]
        model: String,
        #[arg(long, default_value_t = 32)]
        width: i64,
        #[arg(long, default_value_t = 128)]
        batch_size: i64,
        #[arg(long, default_value_t = 2)]
        threads: i32,
        #[arg(long, default_value_t = 50)]
        steps: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Write the result as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    cyclotron_worker::allocator::tune_for_training();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Check { job } => {
            let spec = JobSpec::load(&job)?;
            println!(
                "{}: ok ({} stages, {} epochs)",
                job.display(),
                spec.stages.len(),
                spec.stages.iter().map(|s| s.total_epochs()).sum::<u64>()
            );
            Ok(())
        }
        Cmd::LrFind { job, out } => {
            let spec = JobSpec::load(&job)?;
            output::prepare_dir(&out)?;
            let report = job::run_lr_find(&spec, &mut progress::Progress::new(cli.quiet))?;
            output::write_json(&out.join("lr_find.json"), &report)?;
            plot::lr_find_png(&report, &out.join("lr_find.png")).context("plotting lr_find.png")?;
            output::print_lr_find(&report);
            Ok(())
        }
        Cmd::Train { job, out, run } => {
            let spec = JobSpec::load(&job)?;
            output::prepare_dir(&out)?;
            let run = run.unwrap_or_else(output::default_run_id);
            let results = job::run_train(&spec, &run, &mut progress::Progress::new(cli.quiet))?;
            output::write_json(&out.join("results.json"), &results)?;
            if let Some((_, first)) = results.lr_finds.first() {
                output::write_json(&out.join("lr_find.json"), first)?;
            }
            for path in plot::plot_run_dir(&out).context("plotting")? {
                tracing::debug!(path = %path.display(), "plot written");
            }
            output::print_results(&results, &spec.output, &spec.name, &run);
            Ok(())
        }
        Cmd::BenchStep { model, width, batch_size, threads, steps, warmup, json } => {
            let r =
                cyclotron_worker::bench::step_throughput(&model, width, batch_size, threads, steps, warmup)?;
            println!("cyclotron {model} batch {batch_size} threads {threads}: {:.1} samples/s (median step {:.2} ms)", r.samples_per_s, r.step_ms_median);
            if let Some(path) = json {
                output::write_json(&path, &r)?;
            }
            Ok(())
        }
        Cmd::Plot { run_dir } => {
            for path in plot::plot_run_dir(&run_dir)? {
                println!("{}", path.display());
            }
            Ok(())
        }
    }
}
