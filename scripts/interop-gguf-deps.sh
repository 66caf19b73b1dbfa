#!/usr/bin/env bash
# Test-only: fetches llama.cpp as node-llama-cpp with its prebuilt Linux x64 CPU binary (npm,
# pinned by tests/interop-gguf/package.json + package-lock.json; `npm install`, since the package
# lists optional variants that were never published, which `npm ci` refuses; no install scripts, no CUDA/Vulkan variants,
# ~85 MB) used to prove llama.cpp loads llmc's GGUF files and computes what llmc computes.
# Nothing here is needed to build or run llmc; without node/npm or the registry the GGUF interop
# test skips with a message.
set -euo pipefail
cd "$(dirname "$0")/../tests/interop-gguf"
command -v node >/dev/null && command -v npm >/dev/null || { echo "interop-gguf: node/npm not found"; exit 1; }
have() { [ -d node_modules/node-llama-cpp ] && [ -d node_modules/@node-llama-cpp/linux-x64 ]; }
have && exit 0
timeout 300 npm install --omit=optional --ignore-scripts --no-audit --no-fund --silent >/dev/null 2>&1 || true
have || { echo "interop-gguf: npm install failed in tests/interop-gguf"; exit 1; }
