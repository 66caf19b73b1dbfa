#!/usr/bin/env bash
# Fuzzing-only: installs clang and libFuzzer from Debian 12 packages (clang-14 is Debian 12's
# clang; libfuzzer-14-dev is its libFuzzer). Not needed to build or test llmc; scripts/fuzz.sh
# skips with a message when they are missing. Idempotent; exits 1 when it cannot install.
set -euo pipefail
PKGS=(clang libfuzzer-14-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "fuzz-deps: installing ${missing[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
