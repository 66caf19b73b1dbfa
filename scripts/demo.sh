#!/usr/bin/env bash
# The README's main job: installs dependencies, builds llmc and runs it on the embedded default
# (the bundled qwen3-tiny model and calibration text): quantize to INT4 GPTQ and FP8, print the
# quality/memory report, then convert to Parquet and inspect. Outputs land in ./out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLMC_TESTS=OFF -DLLMC_BENCH=OFF >/dev/null
cmake --build build -j"$(nproc)" --target llmc
LLMC=./build/llmc
mkdir -p out
set -x
$LLMC quantize --input models/qwen3-tiny --output out/qwen3-tiny-int4-gptq --method int4_gptq
$LLMC quantize --input models/qwen3-tiny --output out/qwen3-tiny-fp8-static --method fp8_static
$LLMC convert --input out/qwen3-tiny-int4-gptq --output out/qwen3-tiny-int4-gptq.parquet --format parquet
$LLMC inspect out/qwen3-tiny-int4-gptq.parquet
$LLMC generate --model out/qwen3-tiny-int4-gptq --prompt "The king said" --max-tokens 24
