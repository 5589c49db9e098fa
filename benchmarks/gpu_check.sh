#!/usr/bin/env bash
# The GPU check (docs/gpu.md): build indis._C with CUDA for sm_90 against this machine's torch, run the CUDA tests,
# measure latency and the fused update's bandwidth; results in $OUT (gpu_check.md, gpu_check.json and three logs).
#
#   OUT=runs/gpu_check bash benchmarks/gpu_check.sh            # on the GPU machine, from a copy of the repository
#   OUT=/tmp/gpu_dry  bash benchmarks/gpu_check.sh --dry-run  # anywhere: CPU stand-ins, tiny sizes, no rebuild
#
# PYTHON selects the interpreter (default python3, the one that holds torch); GPU_CHECK_LIMIT_S the outer time
# limit (default 478 s, dry run 230 s). The stages and their time budgets
# are in indis/bench/gpu_check.py; this wrapper only adds an outer time limit and a summary for the case where
# the Python side could not start at all (no python, a broken torch).
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_check}
LIMIT_S=${GPU_CHECK_LIMIT_S:-}
if [ -z "$LIMIT_S" ]; then
  case " $* " in *" --dry-run "*) LIMIT_S=230 ;; *) LIMIT_S=478 ;; esac
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
rm -f "$OUT/gpu_check.json" "$OUT/gpu_check.md"
timeout -k 5 "$LIMIT_S" "$PY" -m indis.bench.gpu_check --out "$OUT" "$@"
rc=$?
if [ ! -s "$OUT/gpu_check.json" ]; then
  why="the check did not write its summary (exit code $rc; 124 = killed at the outer limit of $LIMIT_S s)"
  printf '# INDIS GPU check: no result\n\n%s.\nInterpreter: %s (%s).\n' "$why" "$PY" "$(command -v "$PY" || echo 'not found')" \
    > "$OUT/gpu_check.md"
  printf '{"check": "indis GPU check (docs/gpu.md)", "stages": {}, "error": "%s"}\n' "$why" > "$OUT/gpu_check.json"
  [ "$rc" -eq 0 ] && rc=1
fi
exit "$rc"
