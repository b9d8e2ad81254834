#!/usr/bin/env python3
"""How steady is `lr = "auto"` from seed to seed? (issue 16)

Runs the LR-range test alone (no training after it) of several jobs at several seeds, one process
and, for the demo spec, a data-parallel group of 2 ranks on loopback, and prints a markdown table:
for each job, the `minimum` suggestion's median, its spread across seeds (max - min and standard
deviation of log10, in decades), and the rate `minimum_or_valley` chose on each seed, for

- the rule before 2026-12-03 night ("EMA"): fastai's `minimum/10` read off the EMA-smoothed curve,
  and the valley fallback judged on that curve (recomputed here from the report's `losses`);
- the binary's rule ("centred"): `minimum/3` of the centred (lag-free) smoothing of the raw
  losses, the fallback judged on it (read from what the binary printed).

Every range test takes 5-20 s on 2 cores; the whole table about 5 minutes.

    python3 bench/lr_rule_seeds.py --bin $CARGO_TARGET_DIR/release/cyclotron --out /tmp/lr-seeds
"""

import argparse
import json
import math
import pathlib
import re
import statistics
import subprocess

import lr_rule

ROOT = pathlib.Path(__file__).resolve().parent.parent

# (key, title, example, edits [(regex, replacement)], batch_size or None, ranks)
JOBS = [
    ("qsgd", "small_resnet w16, SGD (quick.toml)", "examples/quick.toml", [], None, 1),
    ("qadam", "small_resnet w16, AdamW (quick.toml)", "examples/quick.toml",
     [(r'kind = "sgd"\nmomentum = 0.9', 'kind = "adamw"')], None, 1),
    ("qcnn", "small_cnn w16, SGD (quick.toml)", "examples/quick.toml",
     [(r'arch = "small_resnet"', 'arch = "small_cnn"')], None, 1),
    ("tab", "entity embeddings, AdamW (tabular_sales.toml)", "examples/tabular_sales.toml",
     [(r'suggestion = "valley"\n', "")], None, 1),
    ("p128", "demo spec, 1 process, batch 128", "examples/fashion_mnist.toml", [], 128, 1),
    ("p256", "demo spec, 1 process, batch 256", "examples/fashion_mnist.toml", [], 256, 1),
    ("dp2", "demo spec, 2 ranks x 128 (data-parallel)", "examples/fashion_mnist.toml", [], 128, 2),
]


def spec_text(example, edits, seed, batch, ranks, store):
    """lr_rule.py's job text (edits applied, `lr = "auto"`, output in `store`), at `seed`, with
    `batch` per process and, for a group, one thread per rank."""
    text = lr_rule.spec_text(example, edits, None, store)
    text, n = re.subn(r"(?m)^seed = .*$", f"seed = {seed}", text)
    assert n == 1, f"{example}: no seed line"
    if batch:
        text, n = re.subn(r"(?m)^(global_)?batch_size = .*$", f"batch_size = {batch}", text)
        assert n == 1
    if ranks > 1:
        text += "\n[runtime]\nthreads = 1\n"  # as `cyclotron local` shares 2 cores between 2 workers
    return text


def run(binary, work, key, seed, text, ranks):
    d = work / f"{key}-{seed}"
    d.mkdir(parents=True, exist_ok=True)
    job = d / "job.toml"
    job.write_text(text)
    if ranks == 1:
        p = subprocess.run([binary, "lr-find", str(job), "--out", str(d / "out")], cwd=ROOT,
                           capture_output=True, text=True, timeout=900)
        out = [p]
        report = json.loads((d / "out" / "lr_find.json").read_text())
    else:
        port = 29600 + 2 * seed
        peers = ",".join(f"127.0.0.1:{port + r}" for r in range(ranks))
        procs = [subprocess.Popen([binary, "sweep-point", str(job), "--out", str(d / f"out{r}"),
                                   "--probe", '{"probe":"range"}', "--rank", str(r), "--world-size",
                                   str(ranks), "--peers", peers], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for r in range(ranks)]
        out = []
        for pr in procs:
            stdout, stderr = pr.communicate(timeout=900)
            out.append(subprocess.CompletedProcess(pr.args, pr.returncode, stdout, stderr))
        report = json.loads((d / "out0" / "results.json").read_text())["report"]
    for p in out:
        if p.returncode != 0:
            raise SystemExit(f"{key} seed {seed}: exit {p.returncode}\n{p.stderr[-2000:]}")
    line = re.search(r"suggests (\S+) \(([^)]*)\)", out[0].stdout + out[0].stderr)
    return report, float(line.group(1)), line.group(2)


def ema_rule(report):
    """The rule before: minimum/10 of the EMA curve; valley when that curve was still falling."""
    lrs = report["lrs"]
    losses = [x if x is not None else math.nan for x in report["losses"]]
    n = max((i + 1 for i, x in enumerate(losses) if math.isfinite(x)), default=0)
    best = min(range(n), key=lambda i: losses[i])
    minimum = lrs[best] / 10.0
    falling = n == len(losses) and best + max(n // 20, 2) >= n and losses[n - 1] - losses[best] <= 0.5 * abs(losses[best])
    return minimum, (report["suggestion"]["valley"] if falling else minimum), falling


def spread(values):
    logs = [math.log10(v) for v in values]
    return 10 ** statistics.median(logs), max(logs) - min(logs), statistics.pstdev(logs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--only", help="comma-separated job keys")
    ap.add_argument("--table-only", action="store_true", help="print the table of OUT/lr_rule_seeds.json")
    args = ap.parse_args()
    if args.table_only:
        return table(json.loads((args.out / "lr_rule_seeds.json").read_text()))
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    store = "file://" + str(args.out / "store")
    rows = []
    for key, title, example, edits, batch, ranks in JOBS:
        if args.only and key not in args.only.split(","):
            continue
        per_seed = []
        for seed in seeds:
            report, chosen, why = run(args.bin, args.out, key, seed, spec_text(example, edits, seed, batch, ranks, store), ranks)
            old_min, old_chosen, old_falling = ema_rule(report)
            per_seed.append(dict(seed=seed, old_min=old_min, old_chosen=old_chosen, old_falling=old_falling,
                                 new_min=report["suggestion"]["minimum"], new_chosen=chosen,
                                 new_falling=why.startswith("minimum_or_valley: valley")))
            print(f"{key} seed {seed}: EMA minimum/10 {old_min:.3g} chose {old_chosen:.3g}; centred minimum/3 "
                  f"{per_seed[-1]['new_min']:.3g} chose {chosen:.3g} ({why})", flush=True)
        rows.append((title, per_seed))
    (args.out / "lr_rule_seeds.json").write_text(json.dumps(rows, indent=1))
    table(rows)


def table(rows):
    print()
    print("| job | seeds | EMA `minimum/10`: median | spread: range / sd (dec) | centred `minimum/3`: median | spread | chosen per seed, EMA → centred (ᵛ: valley fallback) |")
    print("|---|---|---|---|---|---|---|")
    for title, ps in rows:
        om, orng, osd = spread([p["old_min"] for p in ps])
        nm, nrng, nsd = spread([p["new_min"] for p in ps])
        chosen = ", ".join(f"{p['old_chosen']:.2g}{'ᵛ' if p['old_falling'] else ''} → {p['new_chosen']:.2g}{'ᵛ' if p['new_falling'] else ''}" for p in ps)
        print(f"| {title} | {len(ps)} | {om:.3g} | {orng:.2f} / {osd:.2f} | {nm:.3g} | {nrng:.2f} / {nsd:.2f} | {chosen} |")
    ratios = [p["old_min"] * 10 / (p["new_min"] * 3) for _, ps in rows for p in ps]
    print(f"\nEMA minimum / centred minimum: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} curves")


if __name__ == "__main__":
    main()
