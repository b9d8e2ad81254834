"""make bench: Cyclotron against its peers, measured in the same run on the same machine.

    python bench/run.py --bin PATH [--rounds 5] [--sections step,allreduce,...] [--out bench/results]

Every comparison runs its variants in alternating order for `--rounds` rounds (each round starts
with the next variant), and every figure is printed as "median / worst" over the rounds; a ratio's
median and worst are over the rounds' paired ratios. One binary serves the whole run
(scripts/bench.sh builds it once and copies it). Each section's summary goes to OUT/<section>.json,
every run's own JSON to OUT/raw/, and the printed report to OUT/last-run.md.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import sections_train  # noqa: E402
import sections_system  # noqa: E402

SECTIONS = {
    "step": sections_train.step,
    "step_bf16": sections_train.step_bf16,
    "metrics": sections_train.metrics,
    "head": sections_train.head,
    "lm": sections_train.lm,
    "tabular": sections_train.tabular,
    "torchscript": sections_train.torchscript,
    "allreduce": sections_system.allreduce,
    "ddp": sections_train.ddp,
    "checkpoint": sections_system.checkpoint,
    "sweep": sections_system.sweep,
    "coordinator": sections_system.coordinator,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="the cyclotron binary (built with --features s3-bench)")
    ap.add_argument("--python", default=sys.executable, help="the Python with torch, for the peers")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 5)))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", os.cpu_count())))
    ap.add_argument("--sections", default=os.environ.get("BENCH_SECTIONS", ",".join(SECTIONS)))
    ap.add_argument("--out", default="bench/results")
    a = ap.parse_args()
    if a.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    wanted = [s for s in a.sections.split(",") if s]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    os.makedirs(a.out, exist_ok=True)
    report = h.Report()
    with open(os.path.join(a.out, "raw-commands.log"), "w") as log:
        runner = h.Runner(a.bin, a.python, os.path.join(a.out, "raw"), a.threads, a.rounds, log)
        head = h.header(a.bin, a.python)
        report(f"# make bench, {head['date_utc']}, commit {head['commit']}")
        report(f"CPU: {head['cpu']} ({head['cores']} cores, {head['cpu_flags'].strip()}), "
               f"{head['memory_gib']} GiB, kernel {head['kernel']}, torch {head['torch']}")
        report(f"load average at start (1/5/15 min): {head['load_average_at_start']}; "
               f"busiest processes: {head['busiest_processes_at_start']}")
        report(f"every figure: median / worst of {a.rounds} rounds, variants alternating; "
               f"{a.threads} threads unless stated")
        summary = {"header": head, "rounds": a.rounds, "sections": {}}
        started = time.monotonic()
        for name in wanted:
            load = h.load_average()
            report()
            t0 = time.monotonic()
            result = SECTIONS[name](runner, report)
            result["load_average_at_start"] = [round(x, 2) for x in load]
            result["seconds"] = round(time.monotonic() - t0, 1)
            summary["sections"][name] = result
            with open(os.path.join(a.out, f"{name}.json"), "w") as f:
                json.dump(result, f, indent=2)
            report(f"({name}: {result['seconds']:.0f} s, load average at its start {result['load_average_at_start'][0]})")
        end_load = [round(x, 2) for x in h.load_average()]
        summary["load_average_at_end"] = end_load
        report()
        report(f"load average at end: {end_load}; whole run {time.monotonic() - started:.0f} s")
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(a.out, "last-run.md"), "w") as f:
        f.write("```\n" + "\n".join(report.lines) + "\n```\n")


if __name__ == "__main__":
    main()
