#!/usr/bin/env bash
# The dip after the warm-up (issue 16): U2PL+ 1/8 runs that start from SupOnly's step-1000 checkpoint
# and stop right after the evaluation at step STOP (default 1250, 250 semi-supervised steps), one
# per variant (a quoted list of overrides; "-" for none), one after another at two threads. Each
# prints the teacher's val mIoU there; compare with the recorded full run of the same seed (its
# curve in results.jsonl: u2pl_plus 1/8 seed 1 has 51.45 at step 1250). ~12 min per variant.
#
#   WARMUP=runs/suponly_1-8_it3000_s1/step_1000.pt bash bench/camvid_dip_probe.sh \
#       "method.unsup_rampup_steps=500" "method.ema_ramp=false" "method.name=selftrain"
set -euo pipefail
cd "$(dirname "$0")/.."
: "${WARMUP:?WARMUP=<a SupOnly step_1000.pt of the same split and seed>}"
SPLIT=${SPLIT:-1-8}; SEED=${SEED:-1}; STOP=${STOP:-1250}; RUNS=${RUNS:-runs/dip_probe}; PY=${PY:-.venv/bin/python}
source bench/bench_env.sh
mkdir -p "$RUNS"
for variant in "$@"; do
    name=$(echo "$variant" | tr ' =/' '_-_'); out=$RUNS/${SPLIT}_s${SEED}_${name}
    [[ $variant == - ]] && variant=""
    rm -rf "$out"; mkdir -p "$out"
    # shellcheck disable=SC2086
    "$PY" -m u2plus train "configs/camvid/u2pl_plus_$SPLIT.yaml" seed="$SEED" out_dir="$out" \
        train.warmup_from="$WARMUP" train.num_threads=2 data.num_workers=1 $variant > "$out/train.log" 2>&1 &
    pid=$!
    until grep -aq "step $STOP: val mIoU" "$out/train.log" || ! kill -0 $pid 2>/dev/null; do sleep 5; done
    kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
    echo "$SPLIT seed $SEED ${variant:-(none)}: $(grep -ao "step [0-9]*: val mIoU [0-9.]*" "$out/train.log" | tr '\n' ' ')"
done
