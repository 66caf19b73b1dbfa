#!/usr/bin/env bash
# Installs dependencies, builds llmc with coverage instrumentation, runs every test, prints
# line coverage of src/, then runs a short smoke of every fuzz target (scripts/fuzz.sh).
# Usage: bash scripts/test.sh   (the README's test command)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
BUILD=${LLMC_TEST_BUILD:-build-test}
JOBS=$(nproc)
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLMC_COVERAGE=ON -DLLMC_BENCH=OFF
cmake --build "$BUILD" -j"$JOBS"
find "$BUILD" -name '*.gcda' -delete
bash scripts/interop-deps.sh || echo "interop: independent Parquet tools unavailable; those tests will skip"
bash scripts/interop-gguf-deps.sh || echo "interop-gguf: llama.cpp (node-llama-cpp) unavailable; the GGUF interop test will skip"
ctest --test-dir "$BUILD" --output-on-failure -j"$JOBS"
echo "== line coverage of src/ =="
gcovr -r . --filter 'src/' --object-directory "$BUILD" --gcov-ignore-parse-errors --print-summary \
  -o "$BUILD/coverage.txt" | tail -n 3
# The whole unit-test suite again under ASan + UBSan (gcc, scripts/sanitize.sh; measured on the
# 2-core dev machine under load: build 667 s, tests 202 s).
echo "== unit tests under ASan + UBSan =="
bash scripts/sanitize.sh
# Fuzz smoke: each libFuzzer target (fuzz/) for LLMC_FUZZ_SECONDS (default 15 s) from its seeds;
# skips with a message when clang/libFuzzer cannot be installed (scripts/fuzz-deps.sh).
echo "== fuzz smoke =="
bash scripts/fuzz-deps.sh || echo "fuzz: could not install clang/libFuzzer"
bash scripts/fuzz.sh "${LLMC_FUZZ_SECONDS:-15}"
