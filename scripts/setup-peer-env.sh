#!/usr/bin/env bash
# Creates the virtual environment of the learning benchmark's peer (TRL's GRPOTrainer), apart from zrl's own.
#   bash scripts/setup-peer-env.sh [VENV_DIR]
# On a CPU-only machine it installs the CPU torch wheel first, so no CUDA build is pulled in.
set -euo pipefail
VENV=${1:-.venv-peer}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup-peer-env: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
if ! (command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1); then
  "${PIP[@]}" "torch==2.13.0"
fi
# math-verify and xxhash: the peer is scored by zrl's own evaluation (engine, verifier), imported from the repository.
"${PIP[@]}" "trl==1.16.0" "transformers>=4.56" "datasets" "safetensors" "tokenizers" "math-verify>=0.7" "xxhash>=3" "msgpack>=1.0"
echo "setup-peer-env: done ($VENV)"
