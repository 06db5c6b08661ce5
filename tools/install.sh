#!/usr/bin/env bash
# Install the OpenMMLab 2.0 stack + iformer_mm into the active Python environment.
#
# Follows the pins that are known to work together on CPU machines (see docs/INSTALL.md):
# torch 2.13.0 (CPU), mmengine 0.10.7, mmcv 2.1.0 built with its ops, mmdet 3.3.0,
# mmsegmentation 1.2.2, timm 1.0.x + torchvision 0.28.0. Every pip call that could
# otherwise resolve a newer (CUDA) torch pins torch==2.13.0 in the same command.
# Idempotent: a second run only checks what is installed (a few seconds).
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
pip_() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

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
  echo "[install] torch 2.13.0 (CPU wheel when available)"
  have torch 2.13.0 || pip_ "$TORCH_PIN"
  echo "[install] build tools (setuptools<81 keeps pkg_resources for mmcv/mmengine)"
  pip_ "setuptools>=77.0.3,<81" wheel ninja "$TORCH_PIN"
  echo "[install] mmengine"
  have mmengine 0.10.7 || pip_ mmengine==0.10.7 "$TORCH_PIN"
  if ! "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
    echo "[install] mmcv 2.1.0 with ops (prebuilt wheel if found, else ~7 min build; pip caches it)"
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-2}" CFLAGS="-DNDEBUG -O3 -fwrapv -g0" \
      pip_ --no-build-isolation "${links[@]}" mmcv==2.1.0 "$TORCH_PIN"
  fi
  echo "[install] mmdet, mmsegmentation, timm, test tools"
  pip_ mmdet==3.3.0 mmsegmentation==1.2.2 ftfy regex pycocotools \
       "timm>=1.0.30,<1.1" torchvision==0.28.0 "$TORCH_PIN" \
       pytest pytest-timeout onnx onnxruntime onnxscript
fi
echo "[install] iformer_mm (editable)"
pip_ --no-build-isolation --no-deps -e "$here"

# CPU torch + the registry's CUDA-only torchvision: teach the interpreter to import it
# (a start-up hook that costs nothing until torchvision is imported; see iformer_mm_tvfix.py).
site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ! IFORMER_NO_TVFIX=1 "$PY" -c "import torchvision" >/dev/null 2>&1; then
  # Guarded: if the package is uninstalled later, start-up stays silent.
  echo "import importlib.util as _u; _u.find_spec('iformer_mm_tvfix') and __import__('iformer_mm_tvfix').install_import_hook()" > "$site/iformer_mm_tvfix.pth"
  echo "[install] torchvision's C++ ops cannot load on this torch: installed $site/iformer_mm_tvfix.pth"
fi
"$PY" -c "import timm, torchvision, iformer_mm, mmcv.ops; print('[install] ok: iformer_mm', iformer_mm.__version__, '| timm', timm.__version__)"
