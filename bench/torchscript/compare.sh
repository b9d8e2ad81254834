#!/usr/bin/env bash
# The must-show of issue 13: torchvision's ResNet-18 exported as TorchScript against Cyclotron's own
# `resnet18` on Fashion-MNIST, the same job (data, batch, schedule, seed, threads) apart from [model].
# Three models:
#   builtin       Cyclotron's resnet18 (grey images repeated to 3 channels; tch's default init:
#                 Kaiming-uniform fan-in)
#   ts            examples/export_model.py as a user runs it (1-channel conv1; torchvision's init:
#                 Kaiming-normal fan-out)
#   ts_same_init  the same module with every convolution re-initialised as the built-in one is
#                 (Kaiming-uniform fan-in, ReLU gain), so only the runtime differs
# Prints each run's test accuracy (last snapshot, ensemble) and training steps/s, and the ratios.
#   bench/torchscript/compare.sh [LIMIT_TRAIN] [EPOCHS] [SEEDS]   (repository root, after `make setup`)
# LR=auto: every run takes the rate its own LR-range test suggests (default 0.1 for all).
# EXPORT_SEED=job: each seed also exports the module with that seed (its initial weights vary as
# the built-in model's do); default 0 for every seed (only the data order varies for the modules).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/job.sh"   # write_job
LIMIT=${1:-10000}
EPOCHS=${2:-3}
SEEDS=${3:-1}
BIN=${CYCLOTRON_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/cyclotron/target}/release/cyclotron}
PY=${CYCLOTRON_VENV:-$HOME/.cache/cyclotron/torch-2.11.0}/bin/python
ROOT=$(pwd)
WORK=$(mktemp -d)
cd "$WORK"
export_module() {  # export_module SEED: ts-SEED.pt and ts_same_init-SEED.pt
"$PY" "$ROOT/examples/export_model.py" "ts-$1.pt" "$1"
SEED=$1 "$PY" - <<'PY'
import os
import torch
from torch import nn
seed = int(os.environ["SEED"])
m = torch.jit.load(f"ts-{seed}.pt")
torch.manual_seed(seed)
with torch.no_grad():
    for name, p in m.named_parameters():
        if p.dim() == 4:  # convolutions: as tch's default (PyTorch's kaiming_uniform_, fan_in, relu)
            nn.init.kaiming_uniform_(p, mode="fan_in", nonlinearity="relu")
m.save(f"ts_same_init-{seed}.pt")
PY
}
[ "${EXPORT_SEED:-0}" = job ] || export_module "${EXPORT_SEED:-0}"
TS_GROUPS='torchscript_groups = [["conv1", "bn1", "layer1", "layer2"], ["layer3", "layer4"]]'
for seed in $SEEDS; do
[ "${EXPORT_SEED:-0}" = job ] && export_module "$seed"
xs=${EXPORT_SEED:-0}; [ "$xs" = job ] && xs=$seed
for model in ${MODELS:-builtin ts ts_same_init}; do
  if [ "$model" = builtin ]; then m='arch = "resnet18"'; else m="arch = \"torchscript\"
torchscript = \"file://$WORK/$model-$xs.pt\"
$TS_GROUPS"; fi
  write_job "$model-$seed.toml" "ts-bench-$model" "$seed" "$m"
  "$BIN" train "$model-$seed.toml" --out "out-$model-$seed" --run "s$seed" > "train-$model-$seed.log" 2>&1 \
    || { cat "train-$model-$seed.log"; exit 1; }
done
done
SEEDS="$SEEDS" MODELS="${MODELS:-builtin ts ts_same_init}" "$PY" - <<'PY'
import json, os
seeds = os.environ["SEEDS"].split()
models = os.environ["MODELS"].split()
names = {"builtin": "Cyclotron `resnet18`", "ts": "TorchScript torchvision resnet18 (torchvision init)",
         "ts_same_init": "TorchScript torchvision resnet18 (built-in's init)"}
print("| model | seed | last snapshot acc | ensemble acc | train steps/s | train s |")
print("|---|---|---|---|---|---|")
agg = {}
names = {m: n for m, n in names.items() if m in models}
for m in names:
    for s in seeds:
        r = json.load(open(f"out-{m}-{s}/results.json"))
        steps = r["epochs"][-1]["step"]
        secs = sum(e["seconds"] for e in r["epochs"])
        a, e, sps = r["final"]["accuracy"], r["ensemble"]["accuracy"], steps / secs
        agg.setdefault(m, []).append((a, e, sps))
        print(f"| {names[m]} | {s} | {a*100:.2f}% | {e*100:.2f}% | {sps:.2f} | {r['train_seconds']:.1f} |")
mean = lambda m, i: sum(x[i] for x in agg[m]) / len(agg[m])
print()
for m in [m for m in ["ts", "ts_same_init"] if m in models]:
    print(f"{names[m]} vs built-in, mean over seeds {seeds}: accuracy {(mean(m,0)-mean('builtin',0))*100:+.2f} points "
          f"(ensemble {(mean(m,1)-mean('builtin',1))*100:+.2f}), step throughput ratio {mean(m,2)/mean('builtin',2):.3f}")
PY
echo "work folder: $WORK"
