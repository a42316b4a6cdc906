#!/usr/bin/env bash
# The README's GPU section in one command: llava-1.5-7b's shapes (random weights, float16) on one
# CUDA device, the random checkpoint built once for every benchmark (--checkpoint), the most telling
# benchmarks first, each under its own time limit so that a short device lease still returns the
# ones that finished. Every JSON line is appended to $RESULTS/bench_*.jsonl (default: $OUT when the
# device tool sets it, else benchmarks/results); `python figures/bench_tables.py` then adds the
# llava-7b rows to the README table.
#
#   bash benchmarks/gpu.sh                      # forward, steer, sweep, collect
#   BENCHES="forward steer" bash benchmarks/gpu.sh
#
# Environment: CHECKPOINT (default /tmp/vlminterp-bench-llava7b; building it takes ~30 GB of RAM and
# ~28 GB of disk, deleted at the end unless KEEP_CHECKPOINT=1), BENCH_TIMEOUT (seconds per
# benchmark, default 300; the first one also builds the checkpoint), PYTHON. Not for a CPU machine.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
RESULTS=${RESULTS:-${OUT:-benchmarks/results}}
CHECKPOINT=${CHECKPOINT:-/tmp/vlminterp-bench-llava7b}
mkdir -p "$RESULTS"
failed=0
for bench in ${BENCHES:-forward steer sweep collect}; do
    echo "=== bench_$bench ($(date -u +%T))"
    # --malloc current: one process (the host allocator's two settings are a CPU question).
    if ! timeout "${BENCH_TIMEOUT:-300}" "$PYTHON" "benchmarks/bench_$bench.py" --device cuda \
        --shapes llava-7b --malloc current --checkpoint "$CHECKPOINT" \
        --record "$RESULTS/bench_$bench.jsonl"; then
        echo "bench_$bench did not finish (exit status above); the next benchmark runs"
        failed=1
    fi
done
# A build cut by the time limit leaves its staging folder (.NAME-*) beside the checkpoint.
rm -rf "$(dirname "$CHECKPOINT")/.$(basename "$CHECKPOINT")-"*
[ "${KEEP_CHECKPOINT:-0}" = 1 ] || rm -rf "$CHECKPOINT"
exit $failed
