#!/usr/bin/env python3
"""The text examples side by side in one run (issue 12's "must show"):

1. examples/text_lm.toml: the language model (perplexity vs a unigram model of the same tokens);
2. examples/sentiment.toml (encoder from 1), examples/sentiment_gradual.toml (the same encoder,
   ULMFiT's gradual unfreezing) and examples/sentiment_scratch.toml (no pretraining), same data and
   epochs, for each of --seeds seeds; test accuracy of the final model and of
   the snapshot ensemble;
3. bench/text_baseline.py: a TF-IDF bag-of-words logistic regression on the same split.

    python bench/text_experiment.py --bin bin/cyclotron [--seeds 1,2,3] [--work runs/text-bench]
                                    [--out bench/results/text-cpu-2core-DATE.md]

Writes the markdown table to --out and copies the language model's lr_find.png and validation.png
(perplexity per epoch) and the classifiers' validation.png next to it (bench/results/text/).
"""
import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(argv, cwd, log):
    t = time.monotonic()
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    secs = time.monotonic() - t
    log.write(f"$ {' '.join(argv)}  ({secs:.0f} s, exit {p.returncode})\n{p.stdout}\n{p.stderr[-4000:]}\n")
    log.flush()
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return p, secs


def with_seed(src, dst, seed):
    text = open(src).read()
    text = re.sub(r"(?m)^seed = \d+", f"seed = {seed}", text, count=1)
    open(dst, "w").write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "bin", "cyclotron"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--work", default=os.path.join(ROOT, "runs", "text-bench"))
    day = datetime.date.today().isoformat()
    ap.add_argument("--out", default=os.path.join(HERE, "results", f"text-cpu-2core-{day}.md"))
    a = ap.parse_args()
    binary = os.path.abspath(a.bin)
    seeds = [int(s) for s in a.seeds.split(",") if s]
    os.makedirs(a.work, exist_ok=True)
    pngs = os.path.join(os.path.dirname(os.path.abspath(a.out)), "text")
    os.makedirs(pngs, exist_ok=True)
    log = open(os.path.join(a.work, "commands.log"), "w")
    ex = os.path.join(ROOT, "examples")
    lines = [f"# Text: language model, pretrained vs scratch classifier, bag of words ({day})", ""]
    lines.append(f"Command: `python bench/text_experiment.py --bin bin/cyclotron --seeds {a.seeds}` "
                 f"(2 cores; load average at start {os.getloadavg()[0]:.2f}).")
    lines.append("")

    # 1. the language model
    shutil.copy(os.path.join(ex, "text_lm.toml"), os.path.join(a.work, "text_lm.toml"))
    p, lm_secs = run([binary, "train", "text_lm.toml", "--out", "lm-out", "--run", "lm"], a.work, log)
    lm = json.load(open(os.path.join(a.work, "lm-out", "results.json")))
    m = re.search(r'unigram_perplexity="?([0-9.]+)', p.stderr)
    unigram = float(m.group(1)) if m else float("nan")
    lines += ["## Language model (examples/text_lm.toml)", "",
              f"{lm_secs / 60:.1f} min on 2 cores. Validation perplexity (same tokens, same split):", "",
              "| model | perplexity |", "|---|---|", f"| unigram (token frequencies of the training text) | {unigram:.1f} |"]
    for s in lm["snapshots"]:
        lines.append(f"| snapshot after epoch {s['epoch']} | {s['perplexity']:.1f} |")
    lines.append(f"| ensemble {lm['ensemble']['members']} | {lm['ensemble']['perplexity']:.1f} |")
    lines += ["", "![lr_find](text/lm_lr_find.png) ![perplexity](text/lm_validation.png)", ""]
    for name in ("lr_find.png", "validation.png"):
        shutil.copy(os.path.join(a.work, "lm-out", name), os.path.join(pngs, f"lm_{name}"))

    # 2. classifiers, pretrained and scratch, per seed
    kinds = (("pretrained", "sentiment.toml"), ("gradual", "sentiment_gradual.toml"),
             ("scratch", "sentiment_scratch.toml"))
    rows = {kind: [] for kind, _ in kinds}
    for seed in seeds:
        for kind, spec in kinds:
            name = f"{kind}-{seed}.toml"
            with_seed(os.path.join(ex, spec), os.path.join(a.work, name), seed)
            out = f"{kind}-{seed}-out"
            _, secs = run([binary, "train", name, "--out", out, "--run", f"{kind}-{seed}"], a.work, log)
            r = json.load(open(os.path.join(a.work, out, "results.json")))
            rows[kind].append({"seed": seed, "final": r["final"]["accuracy"], "ensemble": r["ensemble"]["accuracy"],
                               "minutes": secs / 60})
            if seed == seeds[0]:
                shutil.copy(os.path.join(a.work, out, "validation.png"), os.path.join(pngs, f"{kind}_validation.png"))

    # 3. bag of words
    p, _ = run([a.python, os.path.join(HERE, "text_baseline.py")], a.work, log)
    bow = json.loads(p.stdout.strip().splitlines()[-1])

    lines += ["## Sentiment (Rotten Tomatoes snippets, test split of 1,281)", "",
              "| classifier | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |", "|---|" + "---|" * (len(seeds) + 1)]
    labels = {"pretrained": "LM encoder, fine-tuned whole (sentiment.toml)",
              "gradual": "LM encoder, gradual unfreezing (sentiment_gradual.toml)",
              "scratch": "random encoder, same stages (sentiment_scratch.toml)"}
    for kind, _ in kinds:
        for what in ("final", "ensemble"):
            vals = [x[what] for x in rows[kind]]
            lines.append(f"| {labels[kind]}, {what} | " + " | ".join(f"{100 * v:.2f} %" for v in vals)
                         + f" | **{100 * statistics.mean(vals):.2f} %** |")
    lines.append(f"| bag-of-words logistic regression (TF-IDF 1-2 grams, C={bow['C']} chosen on valid) | "
                 + " | ".join("" for _ in seeds) + f" | **{100 * bow['test_accuracy']:.2f} %** |")
    mins = [x["minutes"] for k in rows for x in rows[k]]
    lines += ["", f"Each classifier run took {min(mins):.1f}–{max(mins):.1f} min (lr_find, 4 epochs, ensemble).",
              "", "![pretrained](text/pretrained_validation.png) ![gradual](text/gradual_validation.png) "
              "![scratch](text/scratch_validation.png)", ""]
    open(a.out, "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
