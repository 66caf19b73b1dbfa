#!/usr/bin/env bash
# Fails when a file under src/ includes a header of a higher layer (docs/architecture.md):
#   core <- formats <- tokenizer <- backend <- model <- calib <- quant <- loader <- eval <- cli
# Each folder may include only its own and lower folders (src/backend/cpu and src/backend/cuda
# are backend). Checks every `#include "folder/..."` line of .h/.cpp/.cu/.cuh files.
# Usage: bash scripts/check-layers.sh [SRC_DIR]   (run by ctest as Layers.IncludesGoDown)
#        bash scripts/check-layers.sh --self-test  (a tree with one upward include must fail)
set -euo pipefail
if [ "${1:-}" = "--self-test" ]; then
  t=$(mktemp -d); trap 'rm -rf "$t"' EXIT
  mkdir -p "$t/src/core" "$t/src/backend/cuda" "$t/src/quant"
  printf '#include "core/a.h"\n#include <vector>\n' > "$t/src/quant/q.h"
  printf '#include "backend/cuda/k.h"\n#include "core/a.h"\n' > "$t/src/backend/b.h"
  : > "$t/src/core/a.h"; : > "$t/src/backend/cuda/k.h"
  bash "$0" "$t/src" > "$t/ok.log" || { echo "self-test: a downward tree failed:"; cat "$t/ok.log"; exit 1; }
  printf '#include "quant/q.h"\n' >> "$t/src/backend/cuda/k.h"
  if bash "$0" "$t/src" > "$t/bad.log"; then echo "self-test: an upward include passed"; exit 1; fi
  grep -q 'src/backend/cuda/k.h:1 includes "quant/q.h": backend may not use quant' "$t/bad.log" ||
    { echo "self-test: unexpected message:"; cat "$t/bad.log"; exit 1; }
  echo "check-layers self-test: passed"; exit 0
fi
SRC=${1:-"$(dirname "$0")/../src"}
LAYERS=(core formats tokenizer backend model calib quant loader eval cli)
rank() {
  local i
  for i in "${!LAYERS[@]}"; do
    if [ "${LAYERS[$i]}" = "$1" ]; then echo "$i"; return; fi
  done
  echo -1
}
bad=0 files=0
while IFS= read -r -d '' f; do
  rel=${f#"$SRC"/}
  own=${rel%%/*}
  r_own=$(rank "$own")
  if [ "$r_own" -lt 0 ]; then
    echo "check-layers: $rel: folder '$own' is not a layer (${LAYERS[*]})"; bad=1; continue
  fi
  files=$((files + 1))
  while IFS= read -r line; do
    n=${line%%:*}
    inc=${line#*:}
    inc=${inc#*\"}
    inc=${inc%%\"*}
    case "$inc" in */*) ;; *) continue ;; esac  # same-folder includes ("x.h") are fine
    dep=${inc%%/*}
    r_dep=$(rank "$dep")
    [ "$r_dep" -lt 0 ] && continue  # not a src/ folder (e.g. a system header with a path)
    if [ "$r_dep" -gt "$r_own" ]; then
      echo "check-layers: src/$rel:$n includes \"$inc\": $own may not use $dep (layers: ${LAYERS[*]})"
      bad=1
    fi
  done < <(grep -n -E '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f" || true)
done < <(find "$SRC" -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) -print0)
if [ "$files" -eq 0 ]; then echo "check-layers: no sources under $SRC"; exit 1; fi
if [ "$bad" -ne 0 ]; then exit 1; fi
echo "check-layers: $files files, every include goes down"
