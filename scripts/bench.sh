#!/usr/bin/env bash
# make bench: Cyclotron against its peers, measured in the same run on the same machine.
# One build for the whole run: the binary is built once (with the in-process S3 server of the
# checkpoint benchmark) and copied aside, so no later build, here or in another worktree sharing
# the target folder, changes it part-way. bench/run.py then runs every section with its rounds
# alternating and prints median / worst of each figure; it writes bench/results/<section>.json,
# summary.json and last-run.md (the printed report).
#   BENCH_ROUNDS (5), BENCH_SECTIONS (all: step,step_bf16,metrics,head,lm,tabular,torchscript,allreduce,ddp,checkpoint,sweep,coordinator),
#   BENCH_THREADS (nproc), BENCH_STEPS and the other BENCH_* knobs of bench/*.py
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
. "$here/env.sh"
cd "$root"
cargo build --release -p cyclotron --features s3-bench
frozen="$(mktemp -d "${TMPDIR:-/tmp}/cyclotron-bench.XXXXXX")"
trap 'rm -rf "$frozen"' EXIT
cp "$CARGO_TARGET_DIR/release/cyclotron" "$frozen/cyclotron"
printf 'benchmarking %s (a copy of the binary just built; %s)\n' "$frozen/cyclotron" \
  "$(sha256sum "$frozen/cyclotron" | cut -c1-16)"
"$CYCLOTRON_VENV/bin/python" bench/run.py --bin "$frozen/cyclotron" --python "$CYCLOTRON_VENV/bin/python" \
  --out bench/results "$@"
