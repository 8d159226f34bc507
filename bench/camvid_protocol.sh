#!/usr/bin/env bash
# The CamVid semi-supervised protocol of issue 16, one run after another at two threads, resumable:
# for each seed, SupOnly (3000 steps, keeping its step-1000 checkpoint), then each semi-supervised
# method with its 1000-step L_s warm-up taken from that checkpoint (train.warmup_from: the same
# steps bit for bit, not trained twice). Run it again after an interruption: finished runs are
# skipped (bench/camvid.py), an unfinished one continues from its last.pt. Every run appends its
# JSON line to results.jsonl and its block to RESULTS.md.
#
#   bash bench/camvid_protocol.sh                              # 1/8, seeds 0 1 2, u2pl_plus selftrain
#   SPLIT=1-16 SEEDS="1 2" METHODS=u2pl_plus bash bench/camvid_protocol.sh
#   RUNS=/work/runs BENCH=/work/main/bench bash bench/camvid_protocol.sh   # from a git worktree
#   WARMUP=own SEEDS=0 bash bench/camvid_protocol.sh   # no SupOnly run: each trains its own warm-up
#   # a recipe variant on seeds whose SupOnly is already recorded: SupOnly only up to its step-1000
#   # checkpoint (not recorded again: it reproduces the recorded curve bit for bit), then the variant
#   SUPONLY=warmup SEEDS="0 2" METHODS=u2pl_plus TAG=_classwise \
#       EXTRA="method.classwise_partition=true" bash bench/camvid_protocol.sh
#
# One run after another at two threads is faster in total than two runs at one thread each on the
# 2-core machine (measured: SupOnly 1/8 ~1.1 s/step alone at two threads, 2.9 s/step at one thread
# beside another training).
set -euo pipefail
cd "$(dirname "$0")/.."
SPLIT=${SPLIT:-1-8}
SEEDS=${SEEDS:-0 1 2}
METHODS=${METHODS:-u2pl_plus selftrain}
RUNS=${RUNS:-runs/bench}
BENCH=${BENCH:-bench}
PY=${PY:-.venv/bin/python}
TAG=${TAG:-}
mkdir -p "$RUNS"
read -r -a EXTRA_SET <<< "${EXTRA:-}"
SET=(train.num_threads=2 data.num_workers=1)
source bench/bench_env.sh

# SupOnly up to its step-1000 checkpoint only, unrecorded (SUPONLY=warmup); returns when the file exists
suponly_warmup() {
    local seed=$1 sup=$2
    [[ -f $sup/step_1000.pt ]] && return
    "$PY" -m u2plus train "configs/camvid/suponly_$SPLIT.yaml" seed="$seed" out_dir="$sup" resume=auto \
        "${SET[@]}" 'train.save_at=[1000]' > "$sup.warmup.log" 2>&1 &
    local pid=$!
    while [[ ! -f $sup/step_1000.pt ]] && kill -0 $pid 2>/dev/null; do sleep 10; done
    kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
    [[ -f $sup/step_1000.pt ]] || { echo "SupOnly seed $seed stopped before step 1000: $sup.warmup.log" >&2; exit 1; }
}
for seed in $SEEDS; do
    sup=$RUNS/suponly_${SPLIT}_it3000_s$seed
    if [[ ${WARMUP:-suponly} == own ]]; then
        warm=(); from="its own"
    elif [[ -f $sup/metrics.json && ! -f $sup/step_1000.pt ]]; then
        echo "$sup finished without a step-1000 checkpoint: the semi-supervised runs train their own warm-up"
        warm=(); from="its own"
    elif [[ ${SUPONLY:-full} == warmup ]]; then
        suponly_warmup "$seed" "$sup"
        warm=("train.warmup_from=$sup/step_1000.pt"); from="SupOnly seed $seed's step 1000"
    else
        "$PY" bench/camvid.py "configs/camvid/suponly_$SPLIT.yaml" --seeds "$seed" --tag _it3000 \
            --set "${SET[@]}" 'train.save_at=[1000]' --runs "$RUNS" --bench-dir "$BENCH" \
            --note "SupOnly $SPLIT, 3000 steps of 8 (camvid_protocol.sh), seed $seed"
        warm=("train.warmup_from=$sup/step_1000.pt"); from="SupOnly seed $seed's step 1000"
    fi
    for method in $METHODS; do
        "$PY" bench/camvid.py "configs/camvid/${method}_$SPLIT.yaml" --seeds "$seed" --tag "_it3000$TAG" \
            --set "${SET[@]}" "${warm[@]}" "${EXTRA_SET[@]}" --runs "$RUNS" --bench-dir "$BENCH" \
            --note "$method $SPLIT, ${EXTRA:-the default recipe} (3000 steps, 8 + 4, 1000-step L_s warm-up: $from; camvid_protocol.sh), seed $seed"
    done
done
