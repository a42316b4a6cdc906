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
#   DEVICE=cpu SHAPES=quick DTYPE=float16 RESULTS=/tmp/rehearsal bash benchmarks/gpu.sh
#
# The last line rehearses the whole script on a CPU in a few minutes, half precision included
# (`make test-slow` runs it), so that a device lease is not spent on a broken script.
#
# Environment: CHECKPOINT (the checkpoints' folder, default /tmp/vlminterp-bench-llava7b; building
# llava-7b's takes ~30 GB of RAM and ~28 GB of disk; deleted at the end unless KEEP_CHECKPOINT=1),
# BENCH_TIMEOUT (seconds per benchmark, default 300; the first one also builds the checkpoint),
# PYTHON, DEVICE (cuda), SHAPES (llava-7b), DTYPE (the shapes' default: float16 for llava-7b),
# BENCH_ARGS (more options for every benchmark, e.g. "--repeats 1"). llava-7b shapes are not for a
# CPU machine.
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
    # shellcheck disable=SC2086  # BENCH_ARGS: several options
    if ! timeout "${BENCH_TIMEOUT:-300}" "$PYTHON" "benchmarks/bench_$bench.py" --device "${DEVICE:-cuda}" \
        --shapes "${SHAPES:-llava-7b}" ${DTYPE:+--dtype "$DTYPE"} --malloc current \
        --checkpoint "$CHECKPOINT" --record "$RESULTS/bench_$bench.jsonl" ${BENCH_ARGS:-}; then
        echo "bench_$bench did not finish (exit status above); the next benchmark runs"
        failed=1
    fi
done
# Only what the benchmarks built goes: the staging folders a build cut by the time limit leaves
# (.bench-llava-*), the checkpoints (bench-llava-*, unless KEEP_CHECKPOINT=1), then the folder if
# that empties it. The benchmarks refuse a CHECKPOINT folder holding anything else.
rm -rf "$CHECKPOINT"/.bench-llava-*
[ "${KEEP_CHECKPOINT:-0}" = 1 ] || rm -rf "$CHECKPOINT"/bench-llava-*
rmdir "$CHECKPOINT" 2>/dev/null
exit $failed
