#!/usr/bin/env bash
# GGUF presets on one model: `llmc quantize --method P --output P.gguf --json` for every GGUF
# preset of the method table, plus the lossless bf16 GGUF; prints a table and writes the numbers
# (file bytes vs bf16 tensors, held-out perplexity ratio, KL, top-1, seconds) as JSON.
#   usage: bash bench/gguf.sh [MODEL_DIR] [OUT_JSON]   (default ../shared/models/qwen3-small,
#          bench/results/gguf.json; LLMC=path/to/llmc, EVAL=held-out text)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$ROOT/../shared/models/qwen3-small}
OUT=${2:-$ROOT/bench/results/gguf.json}
LLMC=${LLMC:-$ROOT/build/llmc}
EVAL=${EVAL:-$ROOT/tests/data/eval/heldout.txt}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
"$LLMC" convert --input "$MODEL" --output "$T/bf16.gguf" > /dev/null 2>&1
"$LLMC" eval --model "$T/bf16.gguf" --reference "$MODEL" --ppl "$EVAL" --max-windows 64 --json > "$T/bf16.json" 2> /dev/null
for p in q8_0 q6_k q5_k_m q4_k_m q3_k_m q2_k; do
  "$LLMC" quantize --input "$MODEL" --method "$p" --output "$T/$p.gguf" --eval-data "$EVAL" --json > "$T/$p.json" 2> /dev/null
done
python3 - "$T" "$OUT" "$MODEL" "$(nproc)" <<'PY'
import json, os, sys
t, out, model, cores = sys.argv[1:]
rows = []
for p in ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k"]:
    j = json.load(open(f"{t}/{p}.json"))
    q = j["quality"]
    rows.append({"preset": p, "file_bytes": j["output_bytes"], "bf16_tensor_bytes": j["bf16_bytes"],
                 "size_vs_bf16": j["output_bytes"] / j["bf16_bytes"], "ppl_base": q["ppl_base"],
                 "ppl": q["ppl_quant"], "ppl_ratio": q["ppl_ratio"], "kl": q["kl"], "top1": q["top1"],
                 "tokens": q["tokens"], "quantize_seconds": j["quantize_seconds"]})
bf = json.load(open(f"{t}/bf16.json"))
res = {"model": os.path.basename(model.rstrip("/")), "machine_cores": int(cores), "bf16_gguf": bf, "presets": rows}
json.dump(res, open(out, "w"), indent=2)
print(f"{'preset':8s} {'size/bf16':>9s} {'ppl ratio':>10s} {'KL':>9s} {'top1':>7s} {'s':>6s}")
for r in rows:
    print(f"{r['preset']:8s} {r['size_vs_bf16']:9.3f} {r['ppl_ratio']:10.5f} {r['kl']:9.6f} {r['top1']:7.4f} {r['quantize_seconds']:6.2f}")
PY
