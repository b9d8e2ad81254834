"""make bench: wall time of the coordinator's parallel LR grid against one sequential range test.

Same job, same model, same data, same number of training steps (K grid points x S steps = one
ramp of K*S steps), same machine:
- parallel: `cyclotron local --workers W --workers-per-run 1` (each worker gets cores/W threads);
  the sweep's wall time runs from the first sweep task starting to the coordinator concluding it
  (every point pays for its own process start and data load), then the cluster is stopped with
  ctrl-c (its training stage is not part of the measure);
- sequential: `cyclotron lr-find` of K*S steps on one process with every core, whole process.
Prints a table and writes JSON.
"""

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time

JOB = """name = "sweep-bench"
seed = 3
output = "file://./store"
[data]
source = "fashion_mnist"
batch_size = {batch}
limit_train = {limit}
limit_eval = 500
[model]
arch = "small_resnet"
width = 16
[lr_find]
start = 1e-4
end = 3.0
steps = {ramp_steps}
grid = {grid}
grid_steps = {steps}
[[stage]]
lr = "auto"
epochs = 1
[ensemble]
members = 1
[runtime]
device = "cpu"
"""


def parallel(binary, workers, job_dir, deadline):
    p = subprocess.Popen(
        [binary, "local", "--workers", str(workers), "--workers-per-run", "1", "job.toml", "--out", "out"],
        cwd=job_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    t0 = time.monotonic()
    first = done = None
    lines = []
    try:
        for line in p.stderr:
            lines.append(line)
            now = time.monotonic()
            if first is None and "task 0 started on" in line:
                first = now
            if "LR sweep done" in line:
                done = now
                break
            if now - t0 > deadline:
                break
    finally:
        p.send_signal(signal.SIGINT)  # ctrl-c: the local cluster stops every process it started
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
    if first is None or done is None:
        raise SystemExit("the parallel sweep did not finish:\n" + "".join(lines[-30:]))
    return done - first, done - t0


def sequential(binary, job_dir, deadline):
    t0 = time.monotonic()
    subprocess.run([binary, "--quiet", "lr-find", "job.toml", "--out", "out"], cwd=job_dir,
                   check=True, timeout=deadline, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    ramp = a.grid * a.steps
    # the ramp is capped at one epoch: the training split must hold all of its batches
    text = JOB.format(batch=a.batch, limit=ramp * a.batch, ramp_steps=ramp, grid=a.grid, steps=a.steps)
    best_par = best_seq = None
    for _ in range(2):  # alternate, keep each one's best
        with tempfile.TemporaryDirectory() as d:
            open(os.path.join(d, "job.toml"), "w").write(text)
            sweep_s, total_s = parallel(a.bin, a.workers, d, 600)
            if best_par is None or sweep_s < best_par[0]:
                best_par = (sweep_s, total_s)
        with tempfile.TemporaryDirectory() as d:
            open(os.path.join(d, "job.toml"), "w").write(text.replace("grid = ", "# grid = "))
            s = sequential(a.bin, d, 600)
            best_seq = s if best_seq is None else min(best_seq, s)
    cores = os.cpu_count()
    print(f"{'':<58} {'wall s':>8}")
    print(f"{f'sequential range test, {ramp} steps, 1 process x {cores} threads':<58} {best_seq:>8.2f}")
    print(f"{f'parallel grid {a.grid} x {a.steps} steps on {a.workers} workers (sweep)':<58} {best_par[0]:>8.2f}")
    print(f"{'  … from starting the cluster':<58} {best_par[1]:>8.2f}")
    print(f"sequential / parallel: {best_seq / best_par[0]:.2f}x (sweep), {best_seq / best_par[1]:.2f}x (with cluster start)")
    json.dump({
        "grid": a.grid, "steps_per_point": a.steps, "workers": a.workers, "batch": a.batch, "cores": cores,
        "sequential_range_test_s": best_seq, "parallel_sweep_s": best_par[0],
        "parallel_with_cluster_start_s": best_par[1], "speedup": best_seq / best_par[0],
        "speedup_with_cluster_start": best_seq / best_par[1],
    }, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
