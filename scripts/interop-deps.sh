#!/usr/bin/env bash
# Test-only: fetches the independent Parquet implementation (npm hyparquet + hyparquet-writer)
# used to prove llmc's Parquet files are readable by others. Nothing here is needed to build or
# run llmc; when node/npm or the registry is unavailable the interop tests skip with a message.
set -euo pipefail
cd "$(dirname "$0")/../tests/interop"
command -v node >/dev/null && command -v npm >/dev/null || { echo "interop: node/npm not found"; exit 1; }
if [ -d node_modules/hyparquet ] && [ -d node_modules/hyparquet-writer ]; then exit 0; fi
timeout 120 npm install --no-audit --no-fund --silent >/dev/null 2>&1
