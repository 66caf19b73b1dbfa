#!/usr/bin/env bash
# GGUF presets on one model: for every GGUF preset of the method table and both roundings
# (rtn: plain; hdiag: scale search weighted by the Hessian diagonal from calibration), `llmc
# quantize --no-eval --json` then `llmc eval` of the file on held-out text; prints a table and
# writes the numbers (file bytes vs the bf16 tensors, perplexity and its ratio to the bf16 model,
# seconds) as JSON. The bf16 GGUF (llmc convert) is evaluated too (its ratio must be 1).
#   usage: bash bench/gguf.sh [MODEL_DIR] [OUT_JSON]   (default ../shared/models/qwen3-small,
#          bench/results/gguf.json; LLMC=path/to/llmc, EVAL=held-out text, WINDOWS=64 x 256 tokens,
#          SAMPLES=64 calibration windows x 256 tokens)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$ROOT/../shared/models/qwen3-small}
OUT=${2:-$ROOT/bench/results/gguf.json}
LLMC=${LLMC:-$ROOT/build/llmc}
EVAL=${EVAL:-$ROOT/tests/data/eval/heldout.txt}
WINDOWS=${WINDOWS:-64}
SAMPLES=${SAMPLES:-64}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
ev() { "$LLMC" eval --model "$1" --ppl "$EVAL" --max-windows "$WINDOWS" --json 2> /dev/null; }
ev "$MODEL" > "$T/base.json"
"$LLMC" convert --input "$MODEL" --output "$T/bf16.gguf" > /dev/null 2>&1
ev "$T/bf16.gguf" > "$T/bf16.eval.json"
for p in q8_0 q6_k q5_k_m q4_k_m q3_k_m q2_k; do
  for r in rtn hdiag; do
    "$LLMC" quantize --input "$MODEL" --method "$p" --method-opt rounding=$r --num-samples "$SAMPLES" \
      --output "$T/$p-$r.gguf" --no-eval --json > "$T/$p-$r.json" 2> /dev/null
    ev "$T/$p-$r.gguf" > "$T/$p-$r.eval.json"
    rm -f "$T/$p-$r.gguf"
  done
done
python3 - "$T" "$OUT" "$MODEL" "$(nproc)" "$WINDOWS" "$SAMPLES" <<'PY'
import json, os, sys
t, out, model, cores, windows, samples = sys.argv[1:]
def ppl(f):
    j = json.load(open(f))
    return j["ppl"]["ppl"]
base = ppl(f"{t}/base.json")
rows = []
for p in ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k"]:
    for r in ["rtn", "hdiag"]:
        j = json.load(open(f"{t}/{p}-{r}.json"))
        q = ppl(f"{t}/{p}-{r}.eval.json")
        rows.append({"preset": p, "rounding": r, "file_bytes": j["output_bytes"], "bf16_tensor_bytes": j["bf16_bytes"],
                     "size_vs_bf16": j["output_bytes"] / j["bf16_bytes"], "ppl": q, "ppl_ratio": q / base,
                     "quantize_seconds": j["quantize_seconds"]})
res = {"model": os.path.basename(model.rstrip("/")), "machine_cores": int(cores),
       "eval_tokens": int(windows) * 256, "calibration": f"{samples} x 256 tokens (bundled calibration text)",
       "ppl_base": base, "bf16_gguf_ppl_ratio": ppl(f"{t}/bf16.eval.json") / base, "presets": rows}
json.dump(res, open(out, "w"), indent=2)
print(f"base ppl {base:.4f}; bf16 GGUF ratio {res['bf16_gguf_ppl_ratio']:.6f}")
print(f"{'preset':8s} {'rounding':8s} {'size/bf16':>9s} {'ppl ratio':>10s} {'s':>7s}")
for r in rows:
    print(f"{r['preset']:8s} {r['rounding']:8s} {r['size_vs_bf16']:9.3f} {r['ppl_ratio']:10.5f} {r['quantize_seconds']:7.2f}")
PY
