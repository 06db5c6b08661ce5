#!/usr/bin/env bash
# Install the OpenMMLab 2.0 stack + iformer_mm into the active Python environment (Python >= 3.10).
#
#   bash tools/install.sh            # the stack + the package (what the demo needs)
#   bash tools/install.sh --tests    # ... + the test tools: pip install -e ".[tests]"
#
# Follows the pins that are known to work together on CPU machines (README.md, "Install"):
# torch 2.13.0, mmengine 0.10.7, mmcv 2.1.0 built with its ops, mmdet 3.3.0,
# mmsegmentation 1.2.2, timm >= 1.0.30 + torchvision 0.28.0. Every pip call that could
# otherwise resolve a newer torch pins torch==2.13.0 in the same command. A torch 2.13.0 that is
# already installed (e.g. the CPU build from PyTorch's own index) is kept.
# Idempotent: a second run only checks what is installed (about 20 s).
#
# Environment:
#   PYTHON        interpreter to install into (default: python3)
#   IFORMER_WHEELS extra --find-links folder with a prebuilt mmcv wheel
#                 (default: ../shared/wheels next to the repo, when it exists)
#   IFORMER_SKIP_STACK=1  only (re)install the package itself
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
TORCH_PIN="torch==2.13.0"
with_tests=0
for arg in "$@"; do
  case "$arg" in
    --tests) with_tests=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "[install] unknown option $arg (use --tests or nothing)" >&2; exit 2 ;;
  esac
done
pip_() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# step "what" "usual duration" cmd... : run a quiet step, showing the elapsed time every 30 s
# (pip -q prints nothing while it downloads or compiles; errors still show).
step() {
  local what="$1" usual="$2"; shift 2
  local t0=$SECONDS next=30
  echo "[install] $what (usually $usual) ..."
  "$@" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if (( SECONDS - t0 >= next )); then
      echo "[install]   ... $what: $(( (SECONDS - t0) / 60 )) min $(( (SECONDS - t0) % 60 )) s"
      next=$(( next + 30 ))
    fi
  done
  wait "$pid"
  echo "[install]   done in $(( SECONDS - t0 )) s"
}

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "[install] $("$PY" -V 2>&1): torch 2.13 needs Python >= 3.10; use a newer interpreter (PYTHON=python3.11 bash tools/install.sh)" >&2
  exit 1
fi

links=()
wheels="${IFORMER_WHEELS:-$here/../shared/wheels}"
[ -d "$wheels" ] && links=(--find-links "$wheels")

have() {  # have MODULE VERSION_PREFIX -> 0 when importable metadata matches
  "$PY" - "$1" "$2" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version(sys.argv[1]).startswith(sys.argv[2]) else 1)
PY
}

if [ "${IFORMER_SKIP_STACK:-0}" != 1 ]; then
  if have torch 2.13.0; then
    echo "[install] 1/6 torch 2.13.0: already installed"
  else
    step "1/6 torch 2.13.0 (a CPU wheel when pip finds one, else PyPI's CUDA build: several GB)" \
      "1-5 min" pip_ "$TORCH_PIN"
  fi
  step "2/6 build tools (setuptools<81 keeps pkg_resources for mmcv/mmengine)" "10 s" \
    pip_ "setuptools>=77.0.3,<81" wheel ninja "$TORCH_PIN"
  if have mmengine 0.10.7; then
    echo "[install] 3/6 mmengine 0.10.7: already installed"
  else
    step "3/6 mmengine 0.10.7" "20 s" pip_ mmengine==0.10.7 "$TORCH_PIN"
  fi
  if "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
    echo "[install] 4/6 mmcv 2.1.0 with ops: already installed"
  else
    if [ ${#links[@]} -gt 0 ]; then usual="seconds with the wheel in $wheels, else 7-25 min"; else usual="7-25 min: compiling its C++ ops, once; pip caches the wheel"; fi
    step "4/6 mmcv 2.1.0 with ops" "$usual" \
      env MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-2}" CFLAGS="-DNDEBUG -O3 -fwrapv -g0" \
      "$PY" -m pip install --disable-pip-version-check -q --no-build-isolation ${links[@]+"${links[@]}"} \
      mmcv==2.1.0 "$TORCH_PIN"
  fi
  step "5/6 mmdet 3.3.0, mmsegmentation 1.2.2, timm, torchvision 0.28.0, grad-cam" "1-2 min" \
    pip_ mmdet==3.3.0 mmsegmentation==1.2.2 ftfy regex pycocotools \
         "timm>=1.0.30,<1.1" torchvision==0.28.0 grad-cam "$TORCH_PIN"
fi
if [ "$with_tests" = 1 ]; then
  step "6/6 iformer_mm (editable) + test tools: pip install -e \".[tests]\"" "1 min" \
    pip_ --no-build-isolation -e "$here[tests]" "$TORCH_PIN"
  # mmpretrain's PoolFormer for tests/test_poolformer_crosscheck.py: without its heavy
  # requirements (--no-deps), plus its small pure-Python ones.
  if "$PY" -c "import mmpretrain.models" >/dev/null 2>&1; then
    echo "[install] mmpretrain 1.2.0 (for the PoolFormer cross-check): already installed"
  else
    step "mmpretrain 1.2.0 --no-deps (for the PoolFormer cross-check)" "10 s" \
      pip_ --no-deps mmpretrain==1.2.0
    step "mmpretrain's small requirements" "10 s" pip_ importlib-metadata modelindex einops mat4py
  fi
else
  step "6/6 iformer_mm (editable)" "10 s" pip_ --no-build-isolation --no-deps -e "$here"
fi

# CPU torch + the registry's CUDA-only torchvision: teach the interpreter to import it
# (a start-up hook that costs nothing until torchvision is imported; see iformer_mm_torchvision_shim.py).
site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ! IFORMER_NO_TVFIX=1 "$PY" -c "import torchvision" >/dev/null 2>&1; then
  # Guarded: if the package is uninstalled later, start-up stays silent.
  rm -f "$site/iformer_mm_tvfix.pth"  # the hook's earlier name
  echo "import importlib.util as _u; _u.find_spec('iformer_mm_torchvision_shim') and __import__('iformer_mm_torchvision_shim').install_import_hook()" > "$site/iformer_mm_torchvision_shim.pth"
  echo "[install] torchvision's C++ ops cannot load on this torch: installed $site/iformer_mm_torchvision_shim.pth"
fi
"$PY" -W ignore -c "import timm, torchvision, iformer_mm, mmcv.ops; print('[install] ok: iformer_mm', iformer_mm.__version__, '| timm', timm.__version__)"
