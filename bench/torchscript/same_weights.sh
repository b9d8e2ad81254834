#!/usr/bin/env bash
# Runtime only: torchvision's ResNet-18 (3-channel stem, grey images repeated to 3 channels inside
# its forward, as Cyclotron's `resnet18` does) exported as TorchScript, and Cyclotron's own
# `resnet18` started from the very same weights (`model.pretrained` = the module's state_dict as
# safetensors). Same data order (seed), same schedule: the two runs differ only in who runs the model.
#   bench/torchscript/same_weights.sh [LIMIT_TRAIN] [EPOCHS] [SEED]   (repository root, after `make setup`)
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/job.sh"   # write_job
LIMIT=${1:-10000}
EPOCHS=${2:-3}
SEED=${3:-1}
BIN=${CYCLOTRON_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/cyclotron/target}/release/cyclotron}
PY=${CYCLOTRON_VENV:-$HOME/.cache/cyclotron/torch-2.11.0}/bin/python
WORK=$(mktemp -d)
cd "$WORK"
cat > make.py <<'PY'
import torch, torchvision
from safetensors.torch import save_file
class GreyResNet(torchvision.models.ResNet):
    def forward(self, x):
        return self._forward_impl(x.expand(-1, 3, -1, -1))
torch.manual_seed(0)
m = GreyResNet(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2], num_classes=10)
torch.jit.script(m).save("ts.pt")
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, "init.safetensors")
PY
"$PY" make.py   # from a file: torch.jit.script reads the source of forward
for model in builtin ts; do
  if [ "$model" = builtin ]; then m="arch = \"resnet18\"
pretrained = \"file://$WORK/init.safetensors\""; else m="arch = \"torchscript\"
torchscript = \"file://$WORK/ts.pt\"
torchscript_groups = [[\"conv1\", \"bn1\", \"layer1\", \"layer2\"], [\"layer3\", \"layer4\"]]"; fi
  write_job "$model.toml" "ts-same-$model" "$SEED" "$m"
  "$BIN" train "$model.toml" --out "out-$model" --run r1 > "train-$model.log" 2>&1 || { cat "train-$model.log"; exit 1; }
  grep "stage 1 epoch" "train-$model.log" | sed "s/^/$model: /"
done
"$PY" - <<'PY'
import json
rows = {}
print("| model (same initial weights, same data order) | last snapshot acc | ensemble acc | train steps/s |")
print("|---|---|---|---|")
for m, name in [("builtin", "Cyclotron `resnet18`"), ("ts", "TorchScript torchvision resnet18")]:
    r = json.load(open(f"out-{m}/results.json"))
    sps = r["epochs"][-1]["step"] / sum(e["seconds"] for e in r["epochs"])
    rows[m] = (r["final"]["accuracy"], sps)
    print(f"| {name} | {r['final']['accuracy']*100:.2f}% | {r['ensemble']['accuracy']*100:.2f}% | {sps:.2f} |")
print(f"\naccuracy TorchScript − built-in: {(rows['ts'][0]-rows['builtin'][0])*100:+.2f} points; "
      f"step throughput ratio {rows['ts'][1]/rows['builtin'][1]:.3f}")
PY
echo "work folder: $WORK"
