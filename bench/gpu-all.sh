#!/usr/bin/env bash
# Every GPU benchmark in sequence, each under its own time limit, with its output logged to
# $OUT/<name>.log (or runs/bench-logs/ when OUT is unset); each benchmark also appends its line to
# bench/RESULTS.md and writes $OUT/<name>.json, and a copy of RESULTS.md lands in the log folder.
#
#   bash bench/gpu-all.sh                       all of them: gemm memory attention host train decode
#   bash bench/gpu-all.sh gemm decode           only those
#
# Needs Node.js and a built dist/ (npx tsc -p .). On the GPU machine:
#   device run: command "source .gpu/boot.sh && bash bench/gpu-all.sh" carry [".gpu", "dist"]
# Set DSV3_COMMIT to the commit's short hash where the copy of the tree has no .git.
# Exits non-zero when any benchmark failed, timed out or was missing.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
log_dir="${OUT:-$root/runs/bench-logs}"
mkdir -p "$log_dir"

if ! command -v node >/dev/null 2>&1; then
  echo "gpu-all: node is not on PATH (on the GPU machine: source .gpu/boot.sh first)" >&2
  exit 1
fi
if [[ ! -f dist/bench/gpu-gemm.js ]]; then
  if [[ -x node_modules/.bin/tsc ]]; then
    echo "gpu-all: dist/ is missing; building with tsc"
    node_modules/.bin/tsc -p . || { echo "gpu-all: the build failed" >&2; exit 1; }
  else
    echo "gpu-all: dist/ is missing and there is no TypeScript here: build with 'npx tsc -p .' and carry \"dist\"" >&2
    exit 1
  fi
fi
if [[ -z "${DSV3_COMMIT:-}" ]] && commit="$(git rev-parse --short HEAD 2>/dev/null)"; then
  export DSV3_COMMIT="$commit"
fi
export PYTHONUNBUFFERED=1

selected=("$@")
[[ ${#selected[@]} -eq 0 ]] && selected=(gemm memory attention host train decode)

failed=()
passed=()
# run NAME LIMIT_SECONDS COMMAND...
run() {
  local name=$1 limit=$2
  shift 2
  echo "=== ${name}: $* (limit ${limit} s) ==="
  local start=$SECONDS
  timeout --signal=TERM --kill-after=20 "$limit" "$@" 2>&1 | tee "$log_dir/$name.log"
  local rc=${PIPESTATUS[0]}
  local took=$((SECONDS - start))
  if [[ $rc -eq 0 ]]; then
    passed+=("$name (${took} s)")
  elif [[ $rc -eq 124 || $rc -eq 137 ]]; then
    echo "gpu-all: ${name} did not finish within ${limit} s" | tee -a "$log_dir/$name.log"
    failed+=("$name (timed out after ${limit} s)")
  else
    echo "gpu-all: ${name} exited with status ${rc}" | tee -a "$log_dir/$name.log"
    failed+=("$name (exit ${rc}, ${took} s)")
  fi
}

for name in "${selected[@]}"; do
  case "$name" in
    gemm) run gpu-gemm 420 node dist/bench/gpu-gemm.js ;;
    memory) run memory-bound 360 node dist/bench/memory-bound.js ;;
    attention)
      if [[ -f dist/bench/attention.js ]]; then
        run attention 300 node dist/bench/attention.js
      else
        echo "=== attention: dist/bench/attention.js is not there (not written or not built): skipped ==="
      fi
      ;;
    host) run host-overhead 120 node dist/bench/host-overhead.js ;;
    train) run train-step 600 node dist/bench/train-step.js ;;
    decode) run decode 540 node dist/bench/decode.js ;;
    *)
      echo "gpu-all: unknown benchmark '${name}' (gemm, memory, attention, host, train, decode)" >&2
      failed+=("$name (unknown)")
      ;;
  esac
done

[[ -f bench/RESULTS.md && -n "${OUT:-}" ]] && cp bench/RESULTS.md "$log_dir/RESULTS.md"
echo "=== gpu-all: logs in ${log_dir} ==="
for p in "${passed[@]}"; do echo "  ok      $p"; done
for f in "${failed[@]}"; do echo "  FAILED  $f"; done
[[ ${#failed[@]} -eq 0 ]]
