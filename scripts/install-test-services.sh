#!/usr/bin/env bash
# Installs the system services the tests use (redis-server, Slurm, munge) with apt, when run as root; otherwise
# says what is missing (the tests that need them then skip, or fail under ZRL_REQUIRE_REAL=1).
#   bash scripts/install-test-services.sh
set -euo pipefail

install_system_packages() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v slurmctld >/dev/null || missing+=(slurmctld slurmd slurm-client munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-test-services: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or the tests that need them skip" >&2
    return 0
  fi
  echo "install-test-services: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_system_packages
