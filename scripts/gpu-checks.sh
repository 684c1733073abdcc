#!/usr/bin/env bash
# Every GPU measurement of the project in one command, for a machine with one CUDA GPU, most
# informative first (a GPU job may end before the last part):
#   1. benchmarks/conv_forms.py --device cuda    (every convolution of the step as cuDNN's and as a
#      matrix product, vwe.dense_conv: which form each layer should take; about 30 s)
#   2. benchmarks/throughput.py --device cuda    (BENCHMARKS.md: the training-step variants,
#      augmentation, features, linear probe, the throughput goals; prints each row as measured)
#   3. the CUDA tests of tests/test_fast_step.py (the fast step matches plain fp32, the graph)
#   4. benchmarks/profile_step.py                (the step's kernels, heaviest first, and wall time
#      against kernel time; then the same for the supervised baseline's step, 23 min of the table)
#   5. only with TABLE_S > 0: the results table, `paper` profile on Shapes at CIFAR-100 scale
#      (50 000 + 10 000 images) for a few epochs: its per-row times predict the full CIFAR-100 run
# Each part runs under its own time limit and writes its log to $OUT; one failing does not stop
# the others. Usage (from the repository root):
#   OUT=runs/gpu bash scripts/gpu-checks.sh
# Variables: OUT (default runs/gpu), PYTHON (default python3), BENCH_VARIANTS (default: the
# benchmark's own list), TABLE_EPOCHS (2), TABLE_PROBE_EPOCHS (5), TABLE_ROWS (default: all), and
# the per-part limits in seconds CONV_S (60), BENCH_S (280), TESTS_S (120), PROFILE_S (90),
# TABLE_S (0: skipped): 9 min 10 s in all, inside one 10-minute GPU job. On a fresh machine (no
# compile cache) each compiled variant or test costs about a minute of compilation (H200, run 2).
# $OUT gets 7 files (8 with the table): a GPU job brings back at most 8.
set -u
OUT=${OUT:-runs/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export VWE_DATA_DIR=${VWE_DATA_DIR:-/tmp/vwe-data}

part() {  # part NAME LIMIT_S COMMAND...: run COMMAND under a time limit into $OUT/NAME.log
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "=== $name: $*"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    tail -n "${TAIL:-60}" "$OUT/$name.log"
    echo "=== $name: exit $rc after $((SECONDS - t0)) s (limit $limit s)"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)"
    git rev-parse --short HEAD 2>/dev/null
} 2>&1 | tee "$OUT/env.txt"

part conv-forms "${CONV_S:-60}" "$PY" benchmarks/conv_forms.py --device cuda --json "$OUT/conv-forms.json"
part bench "${BENCH_S:-280}" "$PY" benchmarks/throughput.py --device cuda --json "$OUT/bench.json" \
    ${BENCH_VARIANTS:+--variants "$BENCH_VARIANTS"}
part tests "${TESTS_S:-120}" "$PY" -m pytest tests/test_fast_step.py -q -k cuda -p no:cacheprovider
TAIL=90 part profile "${PROFILE_S:-90}" bash -c '"$0" benchmarks/profile_step.py --device cuda --top 20;
    "$0" benchmarks/profile_step.py --device cuda --supervised --top 20' "$PY"
[ "${TABLE_S:-0}" -gt 0 ] || exit 0
TABLE_DIR=/tmp/vwe-table
TABLE_ARGS=(--profile paper --dataset shapes --n-train 50000 --n-test 10000 --epochs "${TABLE_EPOCHS:-2}"
            --probe-epochs "${TABLE_PROBE_EPOCHS:-5}" --out-dir "$TABLE_DIR" --no-progress)
if [ -n "${TABLE_ROWS:-}" ]; then  # e.g. TABLE_ROWS="context-resnet32-noaug context-conv4-aug"
    # shellcheck disable=SC2086
    part table "$TABLE_S" "$PY" -m vwe table --rows $TABLE_ROWS "${TABLE_ARGS[@]}"
else  # the method's own row first (its compiled step is warm from the benchmark), then the rest
    part table "$TABLE_S" bash -c '"$0" -m vwe table --rows context-resnet32-aug "${@}" &&
        "$0" -m vwe table "${@}"' "$PY" "${TABLE_ARGS[@]}"
fi
# per-epoch seconds of every pretraining run, for the cost projection, and the table's JSON: into
# table.log, since a GPU job brings back at most 8 files (7 without the table, 8 with it)
for d in "$TABLE_DIR"/*/; do
    [ -f "$d/metrics.jsonl" ] && echo "$(basename "$d") $(tr '\n' ' ' <"$d/metrics.jsonl")"
done | tee -a "$OUT/table.log"
cat "$TABLE_DIR/results.json" >>"$OUT/table.log" 2>/dev/null
