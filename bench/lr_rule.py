#!/usr/bin/env python3
"""Is the LR-range test's suggestion a good learning rate? (issue 16)

For each example job (shortened so that one training run takes well under a minute on 2 cores) this
trains once with `lr = "auto"` to record the range test's three suggestions (steep, valley,
minimum), then trains the same job at every learning rate of a small log grid and at each
suggestion. It prints a markdown table: each rule's LR and validation score next to the best grid
LR's, and how far (in grid steps and in score) each rule lands from the best. Scores are the last
epoch's validation metric (accuracy, or RMSPE for regression), never the test split.

    python3 bench/lr_rule.py --bin $CARGO_TARGET_DIR/release/cyclotron --out /tmp/lr-rule
"""

import argparse
import json
import math
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

SGD_GRID = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
ADAM_GRID = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]

# (name, example, edits [(regex, replacement)], grid)
CONFIGS = [
    ("small_resnet w16, SGD", "examples/quick.toml", [], SGD_GRID),
    (
        "small_resnet w16, AdamW",
        "examples/quick.toml",
        [(r'kind = "sgd"\nmomentum = 0.9', 'kind = "adamw"')],
        ADAM_GRID,
    ),
    ("small_cnn w16, SGD", "examples/quick.toml", [(r'arch = "small_resnet"', 'arch = "small_cnn"')], SGD_GRID),
    (
        "entity embeddings (txhousing), AdamW",
        "examples/tabular_sales.toml",
        [(r"cycles = 4\ncycle_len = 2\ncycle_mult = 2", "cycles = 2\ncycle_len = 2\ncycle_mult = 1")],
        ADAM_GRID,
    ),
]

RULES = ["steep", "valley", "minimum"]


def spec_text(example, edits, lr, out_url):
    text = (ROOT / example).read_text()
    for pattern, repl in edits:
        text, n = re.subn(pattern, repl, text)
        assert n == 1, f"{example}: {pattern!r} matched {n} times"
    # the first stage's lr (the range test's settings are `start`/`end`, never `lr`)
    value = '"auto"' if lr is None else repr(lr)
    text, n = re.subn(r"(?m)^lr = .*$", f"lr = {value}", text, count=1)
    assert n == 1
    text = re.sub(r'(?m)^output = .*$', "", text)
    text = re.sub(r'(?m)^(name = .*)$', r'\1\noutput = "' + out_url + '"', text, count=1)
    # ~ in data paths is expanded by cyclotron itself
    return text


def score_of(results):
    valid = results["epochs"][-1]["valid"]
    if "accuracy" in valid:
        return "accuracy", valid["accuracy"] * 100.0, True
    if "rmspe" in valid:
        return "RMSPE", valid["rmspe"], False
    return "loss", valid["loss"], False


def train(binary, work, tag, text):
    d = work / tag
    d.mkdir(parents=True, exist_ok=True)
    (d / "job.toml").write_text(text)
    t0 = time.time()
    p = subprocess.run(
        [binary, "train", str(d / "job.toml"), "--out", str(d / "out"), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    secs = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"{tag}: cyclotron train failed ({p.returncode}):\n{p.stderr[-2000:]}")
    results = json.loads((d / "out" / "results.json").read_text())
    return results, secs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("--only", help="substring of the config names to run")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    store = "file://" + str(args.out / "store")
    rows = []
    for ci, (name, example, edits, grid) in enumerate(CONFIGS):
        if args.only and args.only not in name:
            continue
        auto, secs = train(args.bin, args.out, f"c{ci}-auto", spec_text(example, edits, None, store))
        sugg = auto["lr_finds"][0][1]["suggestion"]
        metric, _, higher = score_of(auto)
        scores = {}
        for lr in sorted(set(grid) | {sugg[r] for r in RULES}):
            res, secs = train(args.bin, args.out, f"c{ci}-lr{lr:.3g}", spec_text(example, edits, lr, store))
            scores[lr] = score_of(res)[1]
            print(f"{name}: lr {lr:.3g} → valid {metric} {scores[lr]:.3f} ({secs:.0f}s)", file=sys.stderr, flush=True)
        best_lr = (max if higher else min)(grid, key=lambda lr: scores[lr])
        rows.append(dict(name=name, metric=metric, higher=higher, grid={str(k): v for k, v in scores.items() if k in grid},
                         best_lr=best_lr, best=scores[best_lr],
                         rules={r: dict(lr=sugg[r], score=scores[sugg[r]]) for r in RULES}))
    (args.out / "lr_rule.json").write_text(json.dumps(rows, indent=1))
    print("| job | metric | best grid LR | its score | " + " | ".join(f"{r} LR | {r} score" for r in RULES) + " |")
    print("|---|---|---|---|" + "---|---|" * len(RULES))
    for r in rows:
        cells = [r["name"], f"valid {r['metric']}", f"{r['best_lr']:.3g}", f"{r['best']:.2f}"]
        for rule in RULES:
            x = r["rules"][rule]
            off = math.log10(x["lr"] / r["best_lr"])
            cells += [f"{x['lr']:.3g} ({off:+.1f} dec)", f"{x['score']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    print()
    print("grid scores:")
    for r in rows:
        print(f"- {r['name']}: " + ", ".join(f"{float(k):.3g} → {v:.2f}" for k, v in r["grid"].items()))


if __name__ == "__main__":
    main()
