#!/usr/bin/env bash
# GGUF presets and size budgets on one model. For every GGUF preset of the method table and each
# rounding (rtn: plain encoders; hdiag: scale search weighted by the Hessian diagonal, llama.cpp's
# imatrix statistic; gptq: GPTQ error feedback on the type's grid, the default), `llmc quantize
# --no-eval --json`, then `llmc eval` of the file against the base model on held-out text
# (perplexity ratio, KL, top-1). Then size budgets: `--target-size` set to the size of uniform Q3_K
# and of Q3_K_M, and `--target-size` 27.5 %, so the mix can be compared at equal bytes. Prints a
# table and writes JSON (file bytes vs the bf16 tensors, ratios, KL, seconds).
#   usage: bash bench/gguf.sh [MODEL_DIR] [OUT_JSON]   (default ../shared/models/qwen3-small,
#          bench/results/gguf.json; LLMC=path/to/llmc, EVAL=held-out text (../shared/data/eval/heldout.txt),
#          WINDOWS=max eval windows of 256 (default all), SAMPLES=calibration windows x 256 (128),
#          WORK=directory that keeps the per-run JSON (re-runs skip what it holds; default a temp dir))
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$ROOT/../shared/models/qwen3-small}
OUT=${2:-$ROOT/bench/results/gguf.json}
LLMC=${LLMC:-$ROOT/build/llmc}
EVAL=${EVAL:-$ROOT/../shared/data/eval/heldout.txt}
WINDOWS=${WINDOWS:-0}
SAMPLES=${SAMPLES:-128}
PRESETS="q8_0 q6_k q5_k_m q4_k_m q3_k_m q3_k q2_k"
ROUNDINGS="rtn hdiag gptq"
if [ -n "${WORK:-}" ]; then T=$WORK; mkdir -p "$T"; else T=$(mktemp -d); trap 'rm -rf "$T"' EXIT; fi
win() { [ "$WINDOWS" -gt 0 ] && echo "--max-windows $WINDOWS"; }
run() {  # tag, quantize args...
  local tag=$1; shift
  [ -s "$T/$tag.eval.json" ] && return
  "$LLMC" quantize --input "$MODEL" --num-samples "$SAMPLES" --output "$T/$tag.gguf" --overwrite --no-eval --json "$@" \
    > "$T/$tag.json" 2> /dev/null
  "$LLMC" eval --model "$T/$tag.gguf" --reference "$MODEL" --ppl "$EVAL" $(win) --json > "$T/$tag.eval.json" 2> /dev/null
  rm -f "$T/$tag.gguf"
}
[ -s "$T/bf16.eval.json" ] || { "$LLMC" convert --input "$MODEL" --output "$T/bf16.gguf" --overwrite > /dev/null 2>&1
  "$LLMC" eval --model "$T/bf16.gguf" --reference "$MODEL" --ppl "$EVAL" $(win) --json > "$T/bf16.eval.json" 2> /dev/null
  rm -f "$T/bf16.gguf"; }
for p in $PRESETS; do for r in $ROUNDINGS; do run "$p-$r" --method "$p" --method-opt rounding=$r; done; done
share() { python3 -c "import json;j=json.load(open('$T/$1.json'));print('%.6f'%(j['output_bytes']/j['bf16_bytes']))"; }
run "budget-q3_k" --method q3_k --target-size "$(share q3_k-gptq)"
run "budget-q3_k_m" --method q3_k_m --target-size "$(share q3_k_m-gptq)"
run "budget-27.5" --method q3_k --target-size 27.5%
python3 - "$T" "$OUT" "$MODEL" "$(nproc)" "$SAMPLES" "$PRESETS" "$ROUNDINGS" <<'PY'
import json, os, sys
t, out, model, cores, samples, presets, roundings = sys.argv[1:]
def load(tag):
    q = json.load(open(f"{t}/{tag}.json")) if os.path.exists(f"{t}/{tag}.json") else {}
    c = json.load(open(f"{t}/{tag}.eval.json"))["compare"]
    return q, c
rows = []
def row(tag, **k):
    q, c = load(tag)
    r = dict(k, file_bytes=q["output_bytes"], bf16_tensor_bytes=q["bf16_bytes"],
             size_vs_bf16=q["output_bytes"] / q["bf16_bytes"], ppl=c["model"]["ppl"], ppl_ratio=c["ppl_ratio"],
             kl=c["kl"]["mean"], top1=c["top1_agreement"], quantize_seconds=q["quantize_seconds"])
    if "mix" in q.get("gguf", {}): r["types"] = q["gguf"]["type_counts"]; r["bpw"] = q["gguf"]["mix"]["bpw"]
    rows.append(r)
for p in presets.split():
    for r in roundings.split(): row(f"{p}-{r}", preset=p, rounding=r)
for b, what in [("budget-q3_k", "size of uniform q3_k"), ("budget-q3_k_m", "size of q3_k_m"), ("budget-27.5", "27.5 %")]:
    row(b, preset="--target-size " + what, rounding="gptq")
_, bf = load("bf16")
res = {"model": os.path.basename(model.rstrip("/")), "machine_cores": int(cores),
       "eval_tokens": bf["positions"], "calibration": f"{samples} x 256 tokens (bundled calibration text)",
       "ppl_base": bf["reference"]["ppl"], "bf16_gguf_ppl_ratio": bf["ppl_ratio"], "bf16_gguf_kl": bf["kl"]["mean"],
       "rows": rows}
json.dump(res, open(out, "w"), indent=2)
print(f"base ppl {res['ppl_base']:.4f}; bf16 GGUF ratio {bf['ppl_ratio']:.6f}, KL {bf['kl']['mean']:.2e}")
print(f"{'preset':34s} {'rounding':8s} {'size/bf16':>9s} {'ppl ratio':>10s} {'KL':>9s} {'top1':>7s} {'s':>6s}")
for r in rows:
    print(f"{r['preset']:34s} {r['rounding']:8s} {r['size_vs_bf16']:9.4f} {r['ppl_ratio']:10.5f} {r['kl']:9.6f} "
          f"{r['top1']:7.4f} {r['quantize_seconds']:6.1f}")
PY
