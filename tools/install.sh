#!/usr/bin/env bash
# Install the OpenMMLab 2.0 stack + iformer_mm into the active Python environment (Python >= 3.10).
#
#   bash tools/install.sh                    # the stack + the package (what the demo needs)
#   bash tools/install.sh --tests            # ... + the test tools: pip install -e ".[tests]"
#   bash tools/install.sh --stack torch2.1   # the oldest supported stack (see below)
#   bash tools/install.sh --stack installed  # keep the torch already installed (e.g. your CUDA build)
#
# Follows the pins that are known to work together (README.md, "Supported versions"). Stacks:
#   torch2.13 (default): torch 2.13.0, torchvision 0.28.0, mmcv 2.1.0 built with its ops;
#   torch2.1: torch 2.1.2, torchvision 0.16.2, "numpy<2" (torch 2.1 was built against NumPy 1),
#             Python <= 3.11; the stack OpenMMLab's prebuilt mmcv 2.1.0 wheels pair with;
#   installed: the torch that is installed (2.1 or newer), its torchvision release, and mmcv
#             built for it (or an mmcv with working ops already installed, e.g. from OpenMMLab).
# All: mmengine 0.10.7, mmdet 3.3.0, mmsegmentation 1.2.2, timm >= 1.0.30,<1.1. Every pip call
# that could otherwise resolve another torch (or NumPy) pins them in the same command. A torch
# of the stack's version that is already installed (e.g. a CPU or CUDA build from PyTorch's own
# index) is kept. After mmcv is installed, `import mmcv.ops` must work with this torch: pip keys
# its wheel cache by mmcv's version, not by the torch a wheel was compiled for, so a cached
# wheel from another stack fails with "undefined symbol"; then mmcv is rebuilt without the cache.
# Idempotent: a second run only checks what is installed (about 20 s).
#
# Environment:
#   PYTHON        interpreter to install into (default: python3)
#   IFORMER_WHEELS extra --find-links folder with a prebuilt mmcv wheel (default: ../shared/wheels
#                 next to the repo for torch2.13, ../shared/wheels/torch2.1 for torch2.1, when it exists)
#   IFORMER_SKIP_STACK=1  only (re)install the package itself
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
with_tests=0
stack=torch2.13
while [ $# -gt 0 ]; do
  case "$1" in
    --tests) with_tests=1 ;;
    --stack) stack="${2:-}"; shift ;;
    --stack=*) stack="${1#--stack=}" ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "[install] unknown option $1 (use --tests, --stack torch2.1|torch2.13|installed)" >&2; exit 2 ;;
  esac
  shift
done
case "$stack" in
  torch2.13) TORCH_VER=2.13.0; TV_VER=0.28.0; PINS=("torch==2.13.0"); wheels_default="$here/../shared/wheels" ;;
  torch2.1) TORCH_VER=2.1.2; TV_VER=0.16.2; PINS=("torch==2.1.2" "numpy<2"); wheels_default="$here/../shared/wheels/torch2.1" ;;
  installed)
    TORCH_VER="$("$PY" -c 'from importlib.metadata import version; print(version("torch").split("+")[0])' 2>/dev/null)" \
      || { echo "[install] --stack installed: no torch is installed in $PY" >&2; exit 2; }
    minor="$(echo "$TORCH_VER" | cut -d. -f2)"
    if [ "${TORCH_VER%%.*}" != 2 ] || [ "$minor" -lt 1 ]; then
      echo "[install] torch $TORCH_VER is older than 2.1, the oldest torch iformer_mm supports" >&2; exit 2
    fi
    TV_VER="0.$((minor + 15)).*"; PINS=("torch==$TORCH_VER"); wheels_default=/nonexistent
    if [ "$minor" -lt 3 ]; then PINS+=("numpy<2"); fi ;;
  *) echo "[install] unknown stack '$stack' (use torch2.1, torch2.13 or installed)" >&2; exit 2 ;;
esac
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
  echo "[install] $("$PY" -V 2>&1): iformer_mm needs Python >= 3.10; use a newer interpreter (PYTHON=python3.11 bash tools/install.sh)" >&2
  exit 1
fi
if [ "$stack" = torch2.1 ] && ! "$PY" -c 'import sys; sys.exit(sys.version_info >= (3, 12))'; then
  echo "[install] $("$PY" -V 2>&1): torch 2.1 has wheels for Python <= 3.11 only; use PYTHON=python3.11 (or the default stack)" >&2
  exit 1
fi

links=()
wheels="${IFORMER_WHEELS:-$wheels_default}"
[ -d "$wheels" ] && links=(--find-links "$wheels")

have() {  # have MODULE VERSION_PREFIX -> 0 when importable metadata matches
  "$PY" - "$1" "$2" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version(sys.argv[1]).startswith(sys.argv[2]) else 1)
PY
}

mmcv_ops_error() {  # prints why `import mmcv.ops` fails with the installed torch (nothing when it works)
  "$PY" -c "import mmcv.ops" >/dev/null 2>"$1" && return 1
  grep -m1 -E "undefined symbol|Error" "$1" | cut -c1-200 || tail -n1 "$1"
}

if [ "${IFORMER_SKIP_STACK:-0}" != 1 ]; then
  if have torch "$TORCH_VER"; then
    echo "[install] 1/6 torch $TORCH_VER: already installed"
  else
    step "1/6 torch $TORCH_VER (a CPU wheel when pip finds one, else PyPI's CUDA build: several GB)" \
      "1-5 min" pip_ "${PINS[@]}"
  fi
  step "2/6 build tools (setuptools<81 keeps pkg_resources for mmcv/mmengine)" "10 s" \
    pip_ "setuptools>=77.0.3,<81" wheel ninja "${PINS[@]}"
  if have mmengine 0.10.7; then
    echo "[install] 3/6 mmengine 0.10.7: already installed"
  else
    step "3/6 mmengine 0.10.7" "20 s" pip_ mmengine==0.10.7 "${PINS[@]}"
  fi
  mmcv_build=(env MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-2}" CFLAGS="-DNDEBUG -O3 -fwrapv -g0"
              "$PY" -m pip install --disable-pip-version-check -q --no-build-isolation)
  if "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
    echo "[install] 4/6 mmcv 2.1.0 with ops: already installed"
  else
    if [ ${#links[@]} -gt 0 ]; then usual="seconds with the wheel in $wheels, else 7-25 min"; else usual="7-25 min: compiling its C++ ops, once; pip caches the wheel"; fi
    step "4/6 mmcv 2.1.0 with ops" "$usual" \
      "${mmcv_build[@]}" ${links[@]+"${links[@]}"} mmcv==2.1.0 "${PINS[@]}"
  fi
  errlog="$(mktemp)"
  if why="$(mmcv_ops_error "$errlog")"; then
    if grep -q "undefined symbol" "$errlog"; then
      echo "[install] mmcv.ops does not load with torch $TORCH_VER: the mmcv wheel (from pip's cache or $wheels) was compiled for another torch (undefined symbol); rebuilding it without the cache"
    else
      echo "[install] mmcv.ops does not load with torch $TORCH_VER ($why); rebuilding mmcv without the cache"
    fi
    # --no-deps: torch and the rest stay as they are; no --find-links: only a fresh build fits.
    step "4/6 mmcv 2.1.0 rebuilt for torch $TORCH_VER" "7-25 min" \
      "${mmcv_build[@]}" --no-cache-dir --force-reinstall --no-deps mmcv==2.1.0
    if why="$(mmcv_ops_error "$errlog")"; then
      echo "[install] mmcv.ops still does not load after the rebuild: $why (python -m iformer_mm.env explains more)" >&2
      rm -f "$errlog"; exit 1
    fi
  fi
  rm -f "$errlog"
  step "5/6 mmdet 3.3.0, mmsegmentation 1.2.2, timm, torchvision $TV_VER, grad-cam" "1-2 min" \
    pip_ mmdet==3.3.0 mmsegmentation==1.2.2 ftfy regex pycocotools \
         "timm>=1.0.30,<1.1" torchvision=="$TV_VER" grad-cam "${PINS[@]}"
fi
# Two environments installed from one checkout at once (CI's two jobs) must not write the
# package's build metadata in the checkout at the same time: the editable step takes a lock.
locked() { if command -v flock >/dev/null 2>&1; then flock "${TMPDIR:-/tmp}/iformer_mm_install.lock" "$@"; else "$@"; fi; }
if [ "$with_tests" = 1 ]; then
  step "6/6 iformer_mm (editable) + test tools: pip install -e \".[tests]\"" "1 min" \
    locked "$PY" -m pip install --disable-pip-version-check -q --no-build-isolation -e "$here[tests]" "${PINS[@]}"
  # mmpretrain's PoolFormer for tests/test_poolformer_crosscheck.py: without its heavy
  # requirements (--no-deps), plus its small pure-Python ones.
  if "$PY" -c "import mmpretrain.models" >/dev/null 2>&1; then
    echo "[install] mmpretrain 1.2.0 (for the PoolFormer cross-check): already installed"
  else
    step "mmpretrain 1.2.0 --no-deps (for the PoolFormer cross-check)" "10 s" \
      pip_ --no-deps mmpretrain==1.2.0
    step "mmpretrain's small requirements" "10 s" pip_ importlib-metadata modelindex einops mat4py "${PINS[@]}"
  fi
else
  step "6/6 iformer_mm (editable)" "10 s" \
    locked "$PY" -m pip install --disable-pip-version-check -q --no-build-isolation --no-deps -e "$here"
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
