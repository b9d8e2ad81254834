#!/usr/bin/env bash
# make bench: Cyclotron against its peers, measured in the same run on the same machine.
# Prints a side-by-side table and writes bench/results/<name>.json.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
. "$here/env.sh"
cd "$root"
bin="$CARGO_TARGET_DIR/release/cyclotron"
py="$CYCLOTRON_VENV/bin/python"
out="bench/results"
mkdir -p "$out"
threads="${BENCH_THREADS:-$(nproc)}"
steps="${BENCH_STEPS:-40}"

printf '\n== single-process training step: Cyclotron vs PyTorch eager (same model, batch, threads, libtorch) ==\n'
printf '%-14s %6s %8s %16s %16s %8s\n' model batch threads "cyclotron s/s" "pytorch s/s" ratio
rows=()
for cfg in "small_resnet 32 128" "small_resnet 16 256" "resnet18 0 64"; do
  set -- $cfg
  model=$1 width=$2 batch=$3
  tag="${model}-w${width}-b${batch}"
  # alternate the two twice and keep each one's best run, so neither is favoured by warm caches
  for round in 1 2; do
    "$bin" bench-step --model "$model" --width "$width" --batch-size "$batch" --threads "$threads" \
      --steps "$steps" --json "$out/step-$tag-cyclotron-$round.json" >/dev/null
    "$py" bench/pytorch_step.py --model "$model" --width "$width" --batch-size "$batch" --threads "$threads" \
      --steps "$steps" --json "$out/step-$tag-pytorch-$round.json" >/dev/null 2>&1
  done
  row=$("$py" - "$out" "$tag" <<'PY'
import json, sys
out, tag = sys.argv[1], sys.argv[2]
best = lambda who: max(json.load(open(f"{out}/step-{tag}-{who}-{r}.json"))["samples_per_s"] for r in (1, 2))
c, p = best("cyclotron"), best("pytorch")
print(f"{c:.1f} {p:.1f} {c / p:.3f}")
PY
)
  set -- $row
  printf '%-14s %6s %8s %16s %16s %8s\n' "$model" "$batch" "$threads" "$1" "$2" "$3"
  rows+=("{\"model\":\"$model\",\"width\":$width,\"batch\":$batch,\"threads\":$threads,\"cyclotron_samples_per_s\":$1,\"pytorch_samples_per_s\":$2,\"ratio\":$3}")
done
printf '[%s]\n' "$(IFS=,; echo "${rows[*]}")" > "$out/step.json"
printf '\ntarget: ratio >= 1.0; written to %s/step.json\n' "$out"
