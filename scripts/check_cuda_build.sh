#!/usr/bin/env bash
# Builds the full CUDA extension without a GPU, as a GPU user would: a throwaway venv outside
# the repository with a CUDA build of torch, `setup.py build_ext` against it (nvcc on PATH),
# then an import of the result (which may stop at the missing driver: the message is shown).
# Usage: scripts/check_cuda_build.sh [VENV]  (default /tmp/cagul-cuda-venv; deleted after).
set -euo pipefail

VENV=${1:-/tmp/cagul-cuda-venv}
TORCH_SPEC=${CAGUL_CUDA_TORCH:-torch==2.14.1}
PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$(mktemp -d /tmp/cagul-cuda-build.XXXXXX)
trap 'rm -rf "$VENV" "$BUILD"' EXIT

command -v nvcc >/dev/null || { echo "check-cuda-build: nvcc is not on PATH" >&2; exit 1; }
free_gb=$(df -Pk "$(dirname "$VENV")" | awk 'NR == 2 {print int($4 / 1048576)}')
if (( free_gb < 12 )); then
  echo "check-cuda-build: needs ~12 GB free next to $VENV, found ${free_gb} GB" >&2
  exit 1
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC" setuptools wheel ninja numpy
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
# Build a copy, so the checkout's own CPU build (cagul_kernels/_C*.so, build/) is untouched.
git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
  (cd "$ROOT" && xargs -0 cp --parents -t "$BUILD")
cd "$BUILD"
MAX_JOBS=${MAX_JOBS:-$(nproc)} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"} \
  "$VENV/bin/python" setup.py build_ext --inplace
ls -l cagul_kernels/_C*.so
"$VENV/bin/python" - <<'PY'
import torch

try:
    import cagul_kernels
except Exception as error:  # noqa: BLE001 - the point is to show what stops the import
    print(f"import cagul_kernels stopped at: {type(error).__name__}: {error}")
    raise SystemExit(0)
op = torch.ops.cagul.cross_modal_importance.default
print("import cagul_kernels: ok;", "CUDA kernels registered:", op.has_kernel_for_dispatch_key("CUDA"))
print("torch.cuda.is_available():", torch.cuda.is_available())
PY
