# Sourced by the Makefile's recipes and .ci/run: where the torch venv and the build live.
# Override CYCLOTRON_VENV / CARGO_TARGET_DIR before sourcing to move them.
export CYCLOTRON_CACHE="${CYCLOTRON_CACHE:-$HOME/.cache/cyclotron}"
export CYCLOTRON_VENV="${CYCLOTRON_VENV:-$CYCLOTRON_CACHE/torch-2.11.0}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CYCLOTRON_CACHE/target}"
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH_BYPASS_VERSION_CHECK=0
export PATH="$CYCLOTRON_VENV/bin:$PATH"
