#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (clang, ASan + UBSan, LLMC_FUZZ=ON) in build-fuzz/ and
# runs each for SECONDS (default 60) from its seed corpus (fuzz/corpus/<target> plus fixture
# directories). Prints one line per target and writes the numbers (execs, time, corpus size,
# crashes/leaks/timeouts/ooms) as JSON to $LLMC_FUZZ_RESULTS (default build-fuzz/fuzz-results.json).
# Findings are saved under build-fuzz/artifacts/<target>/; the exit status is 1 when there is one.
# Skips (exit 0, with a message) when clang++ or libFuzzer is unavailable (bash scripts/fuzz-deps.sh).
#   usage: bash scripts/fuzz.sh [SECONDS] [TARGET...]     (targets: names without fuzz_)
#   env:   LLMC_FUZZ_BUILD=dir  LLMC_FUZZ_RESULTS=file.json  LLMC_FUZZ_JOBS=N (targets run at once)
#          LLMC_FUZZ_SKIP_BUILD=1 (run the targets already built)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
[ $# -gt 0 ] && shift
BUILD=${LLMC_FUZZ_BUILD:-build-fuzz}
RESULTS=${LLMC_FUZZ_RESULTS:-$BUILD/fuzz-results.json}
JOBS=${LLMC_FUZZ_JOBS:-1}
CXX=$(command -v clang++ || true)
if [ -z "$CXX" ]; then
  echo "fuzz: clang++ not found; skipping the fuzz targets (bash scripts/fuzz-deps.sh installs clang and libFuzzer)"
  exit 0
fi
probe=$(mktemp -d)
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' > "$probe/p.cpp"
if ! "$CXX" -fsanitize=fuzzer,address,undefined "$probe/p.cpp" -o "$probe/p" 2>/dev/null; then
  rm -rf "$probe"
  echo "fuzz: $CXX cannot link -fsanitize=fuzzer (libFuzzer missing); skipping (bash scripts/fuzz-deps.sh)"
  exit 0
fi
rm -rf "$probe"
CC=$(command -v clang || echo "${CXX%++}")
ALL=(safetensors_header shard_index config_json tokenizer_json parquet_tensor parquet_string_column
     calib_jsonl calib_file layout_gptq layout_awq layout_ct layout_fp8 gguf)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")
if [ "${LLMC_FUZZ_SKIP_BUILD:-0}" != 1 ]; then
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE=-O1 -DCMAKE_C_FLAGS_RELEASE=-O1 \
  -DCMAKE_CXX_COMPILER="$CXX" -DCMAKE_C_COMPILER="$CC" -DLLMC_FUZZ=ON -DLLMC_TESTS=OFF -DLLMC_BENCH=OFF \
  -DLLMC_CUDA=OFF >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target $(printf 'fuzz_%s ' "${TARGETS[@]}")
fi

# Seed directories of each target (first: generated seeds checked in; then fixtures used in place).
seeds() {
  local t=$1 d=(fuzz/corpus/$1)
  case $t in
    parquet_tensor) d+=(tests/interop/fixtures) ;;
    parquet_string_column) d=(tests/data/calib-parquet tests/interop/fixtures) ;;
  esac
  for x in "${d[@]}"; do [ -d "$x" ] && echo "$x"; done
}

run_one() {
  local t=$1 work=$BUILD/corpus/$1 art=$BUILD/artifacts/$1/ log=$BUILD/logs/$1.log
  mkdir -p "$work" "$art" "$(dirname "$log")"
  local seed_dirs
  mapfile -t seed_dirs < <(seeds "$t")
  local rc=0
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$BUILD/fuzz/fuzz_$t" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=3072 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$art" "$work" "${seed_dirs[@]}" >"$log" 2>&1 || rc=$?
  echo "$rc" > "$BUILD/logs/$t.rc"
}

rm -rf "$BUILD/artifacts"
running=0
for t in "${TARGETS[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n || true; running=$((running - 1)); fi
done
wait || true

python3 - "$BUILD" "$RESULTS" "$SECS" "${TARGETS[@]}" <<'PY'
import json, os, re, sys, glob
build, out, secs, targets = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
rows, bad = [], 0
for t in targets:
    log = open(f"{build}/logs/{t}.log", errors="replace").read()
    rc = int(open(f"{build}/logs/{t}.rc").read())
    stat = lambda k: int(m.group(1)) if (m := re.search(rf"stat::{k}:\s+(\d+)", log)) else None
    art = [os.path.basename(p) for p in glob.glob(f"{build}/artifacts/{t}/*")]
    kinds = {k: sum(a.startswith(k + "-") for a in art) for k in ("crash", "leak", "timeout", "oom", "slow-unit")}
    corpus = len(os.listdir(f"{build}/corpus/{t}"))
    r = {"target": t, "seconds": secs, "execs": stat("number_of_executed_units"),
         "execs_per_sec": stat("average_exec_per_sec"), "peak_rss_mb": stat("peak_rss_mb"),
         "corpus_units": corpus, "exit_code": rc, "crashes": kinds["crash"], "leaks": kinds["leak"], "timeouts": kinds["timeout"],
         "ooms": kinds["oom"], "slow_units": kinds["slow-unit"],
         "artifacts": art}
    ok = rc == 0 and not any(kinds[k] for k in ("crash", "leak", "timeout", "oom"))
    bad += not ok
    rows.append(r)
    print(f"fuzz_{t:24s} {'ok  ' if ok else 'FAIL'} execs {r['execs']} ({r['execs_per_sec']}/s) "
          f"corpus {corpus} crashes {kinds['crash']} leaks {kinds['leak']} timeouts {kinds['timeout']} ooms {kinds['oom']}"
          + ("" if ok else f"  (log: {build}/logs/{t}.log)"))
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
import datetime, subprocess
clang = subprocess.run(["clang++", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
        "compiler": clang, "sanitizers": "address,undefined (libFuzzer, -O1)",
        "jobs": int(os.environ.get("LLMC_FUZZ_JOBS", "1"))}
json.dump({**meta, "seconds_per_target": secs, "targets": rows}, open(out, "w"), indent=2)
sys.exit(1 if bad else 0)
PY
