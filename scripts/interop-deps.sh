#!/usr/bin/env bash
# Test-only: fetches the independent Parquet implementation (npm hyparquet, hyparquet-writer and
# hyparquet-compressors, pinned by tests/interop/package-lock.json) used to prove llmc's Parquet
# files are readable by others and that llmc reads theirs. Nothing here is needed to build or
# run llmc; when node/npm or the registry is unavailable the interop tests skip with a message.
set -euo pipefail
cd "$(dirname "$0")/../tests/interop"
command -v node >/dev/null && command -v npm >/dev/null || { echo "interop: node/npm not found"; exit 1; }
have() { [ -d node_modules/hyparquet ] && [ -d node_modules/hyparquet-writer ] && [ -d node_modules/hyparquet-compressors ]; }
have && exit 0
if [ -f package-lock.json ]; then
  timeout 180 npm ci --no-audit --no-fund --silent >/dev/null 2>&1 || true
fi
have || timeout 180 npm install --no-audit --no-fund --silent >/dev/null 2>&1 || true
have || { echo "interop: npm install failed in tests/interop"; exit 1; }
