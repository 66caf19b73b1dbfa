#!/bin/bash
# bench/moe_quality.sh — every method on the mixture-of-experts fixture (models/qwen3-moe-tiny)
# with the dense qwen3-tiny beside it: `llmc quantize` with 128 calibration windows x 256 tokens
# of the bundled data/calibration.txt (the defaults), then `llmc eval` of the output and of the
# base model on ../shared/data/eval/heldout.txt (472 windows of 256, 120360 predicted tokens, the
# reference.json protocol). int4 uses group 32: g128 does not divide the experts' down_proj
# in_features (moe_intermediate_size 96). Prints a table and writes bench/results/moe.json.
#
# Usage: bench/moe_quality.sh [WORKDIR (default /tmp/llmc-moe-bench)] [--assemble-only]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/llmc-moe-bench}
LLMC=${LLMC:-./build/llmc}
H=../shared/data/eval/heldout.txt
mkdir -p "$W"
RUNS=(
  "moe-int8_dynamic qwen3-moe-tiny int8_dynamic"
  "moe-fp8_static qwen3-moe-tiny fp8_static"
  "moe-fp8_dynamic qwen3-moe-tiny fp8_dynamic"
  "moe-int8 qwen3-moe-tiny int8"
  "moe-fp16 qwen3-moe-tiny fp16"
  "moe-int2-g32 qwen3-moe-tiny int2 --group-size 32"
  "moe-int4_gptq-g32 qwen3-moe-tiny int4_gptq --group-size 32"
  "moe-int4_awq-g32 qwen3-moe-tiny int4_awq --group-size 32"
  "moe-int4_rtn-g32 qwen3-moe-tiny int4_gptq --group-size 32 --method-opt solver=rtn"
  "moe-int4_gptq-g32-allexperts qwen3-moe-tiny int4_gptq --group-size 32 --moe-calib all-experts"
  "moe-int4_awq-g32-allexperts qwen3-moe-tiny int4_awq --group-size 32 --moe-calib all-experts"
  "moe-fp8_static-allexperts qwen3-moe-tiny fp8_static --moe-calib all-experts"
  "dense-int8_dynamic qwen3-tiny int8_dynamic"
  "dense-fp8_static qwen3-tiny fp8_static"
  "dense-int4_gptq-g32 qwen3-tiny int4_gptq --group-size 32"
  "dense-int4_awq-g32 qwen3-tiny int4_awq --group-size 32"
  "dense-int4_rtn-g32 qwen3-tiny int4_gptq --group-size 32 --method-opt solver=rtn"
)
ev() { "$LLMC" eval --model "$1" --ppl "$H" --json > "$2"; }
if [ "${2:-}" != "--assemble-only" ]; then
  ev models/qwen3-moe-tiny "$W/moe-base.eval.json"
  ev models/qwen3-tiny "$W/dense-base.eval.json"
  for r in "${RUNS[@]}"; do
    set -- $r
    name=$1 model=$2 method=$3; shift 3
    "$LLMC" quantize --input models/$model --method $method -o "$W/out-$name" --overwrite --no-eval \
      --json "$@" > "$W/$name.json"
    ev "$W/out-$name" "$W/$name.eval.json"
  done
fi
rows="[]"
printf '%-32s %-16s %10s %10s %9s\n' run method ppl ratio minutes
for r in "${RUNS[@]}"; do
  set -- $r
  name=$1 model=$2 method=$3; shift 3
  kind=${name%%-*}
  base=$(jq .ppl.ppl "$W/$kind-base.eval.json")
  ppl=$(jq .ppl.ppl "$W/$name.eval.json")
  row=$(jq -n --arg name "$name" --arg model "$model" --arg method "$method" --arg args "$*" \
    --argjson base "$base" --argjson ppl "$ppl" --slurpfile q "$W/$name.json" \
    '{run: $name, model: $model, method: $method, extra_args: $args, ppl_base: $base, ppl: $ppl,
      ppl_ratio: ($ppl / $base), layout: $q[0].layout, quantize_seconds: $q[0].quantize_seconds,
      quantized_linears: $q[0].quantized_linears, output_bytes: $q[0].output_bytes}')
  rows=$(jq -n --argjson a "$rows" --argjson r "$row" '$a + [$r]')
  printf '%-32s %-16s %10.4f %10.5f\n' "$name" "$method" "$ppl" "$(jq -n "$ppl / $base")"
done
jq -n --argjson rows "$rows" --arg date "$(date -u +%FT%TZ)" --arg cpu "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" \
  --arg cores "$(nproc)" \
  '{benchmark: "moe_quality", date: $date, machine: {cpu: $cpu, cores: ($cores | tonumber)},
    calibration: {file: "data/calibration.txt (bundled)", num_samples: 128, seq_len: 256},
    eval: {file: "../shared/data/eval/heldout.txt", ctx: 256, windows: 472, predicted: 120360},
    note: "int4 at group 32: 128 does not divide moe_intermediate_size 96",
    runs: $rows}' > bench/results/moe.json
echo "wrote bench/results/moe.json"
