#!/usr/bin/env bash
# Installs llmc's build and test dependencies from Debian 12 packages.
# Idempotent: runs `apt-get update` once and only when something is missing.
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config
      libopenblas-dev liblapacke-dev nlohmann-json3-dev libcli11-dev
      libzstd-dev libpcre2-dev libutf8proc-dev zlib1g-dev libgtest-dev gcovr)
missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
