#!/usr/bin/env bash
# The whole GPU benchmark suite in one call, for a machine with one NVIDIA GPU and no network:
#
#   benchmarks/gpu_suite.sh OUT_DIR [--dry-run]
#
# Prints nvidia-smi and versions, builds the C++ extension, installs carried wheels (.whl/), then the
# steps, most wanted first (issue 22's priorities):
#   train_1b          the 1B config, 20 measured steps each: clmap full objective, clmap NTP-only, the
#                     torchtitan-style loop (tokens/s, MFU both ways, peak memory, GPU busy share); the
#                     tokenizer comes carried in .cache/tokenizers/ (never trained here)
#   packing           packed == alone for every attention the trainer can pick (varlen_attn, sdpa, FA2 if
#                     present) with its cost, and the step check: host syncs (sync debug mode "error"),
#                     compiled graphs / recompiles / graph breaks over 12 decoder blocks (step_check.csv)
#   mapping_target    the fused loss at N=16384, H=4096, V=128256 bf16 (fp32 and bf16 accumulation)
#                     against Liger and CCE (wheels carried), time and memory
#   gpu_check, pooled_similarity, mapping_sweep   kernel accuracy and the plots' sweeps
#   train_ab, ablation_gpu                         opt-in: each needs a device call of its own
# Every step appends its CSV rows to OUT_DIR as each measurement finishes, and runs in a process group
# of its own that a timeout kills whole (SIGTERM, then SIGKILL 10 s later): rows already written stay.
# Each step has a timeout inside an overall budget (CLMAP_SUITE_BUDGET_S, default 570 s: one 10-minute
# device call); a step that fails or times out is reported and the suite goes on; the exit status is 1 if
# any step did not succeed. --dry-run runs the same steps on the CPU with tiny sizes (no nvidia-smi, no
# wheel install): what the tests run.
#
# CLMAP_SUITE_ONLY=step,... runs only the named steps (an unknown name: exit 2). ablation_gpu is the
# ablation's GPU preset (`python -m clmap.experiments.ablation --preset gpu`, about 8 minutes on one
# H200: CLMAP_SUITE_ONLY=ablation_gpu CLMAP_SUITE_BUDGET_S=560). It writes OUT_DIR/ablation/: the
# write-up docs/ablation.md refilled with the GPU numbers, ablation_results.{json,md} and the figures.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: $0 OUT_DIR [--dry-run]" >&2
    exit 2
fi
OUT_DIR=$1
DRY=0
if [[ "${2:-}" == "--dry-run" ]]; then DRY=1; fi
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/clmap_suite.XXXXXX")
BUDGET=${CLMAP_SUITE_BUDGET_S:-$([[ $DRY == 1 ]] && echo 900 || echo 570)}
export CLMAP_BENCH_OUT=$OUT_DIR PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# The commit stamped on every row: pass CLMAP_COMMIT where the copy's .git is not the checkout's own
# (a machine that receives the working tree without its history stamps a stale hash otherwise).
export CLMAP_COMMIT=${CLMAP_COMMIT:-}
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
exec > >(tee -a "$OUT_DIR/suite.log") 2>&1

FAILED=()
# The steps, most wanted first (a step the budget skips is the least missed); the opt-in ones run only
# when CLMAP_SUITE_ONLY names them. Each step keeps MIN_STEP_S of the budget for every selected later one.
STEPS="train_1b packing mapping_target gpu_check pooled_similarity mapping_sweep train_ab ablation_gpu"
OPT_IN_STEPS="train_ab ablation_gpu"
MIN_STEP_S=${CLMAP_SUITE_MIN_STEP_S:-15} # seconds kept for each later step
SAMPLER=""
CURRENT_GROUP=""
selected() {
    if [[ -n "${CLMAP_SUITE_ONLY:-}" ]]; then [[ ",$CLMAP_SUITE_ONLY," == *",$1,"* ]]; else [[ " $OPT_IN_STEPS " != *" $1 "* ]]; fi
}
STEPS_LEFT=0
for s in $STEPS; do if selected "$s"; then STEPS_LEFT=$((STEPS_LEFT + 1)); fi; done
if [[ -n "${CLMAP_SUITE_ONLY:-}" ]]; then
    for s in ${CLMAP_SUITE_ONLY//,/ }; do
        if [[ " $STEPS " != *" $s "* ]]; then
            echo "CLMAP_SUITE_ONLY: unknown step '$s'; the steps are: $STEPS" >&2
            exit 2
        fi
    done
fi
cleanup() {
    if [[ -n "$CURRENT_GROUP" ]]; then kill -KILL -- "-$CURRENT_GROUP" 2>/dev/null || true; fi
    if [[ -n "$SAMPLER" ]]; then kill "$SAMPLER" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# run_group T CMD...: CMD in a session (process group) of its own, so a timeout ends all of it: the
# trainer and anything it started, not only the direct child (`timeout` signals just that one, and a
# trainer that catches SIGTERM would outlive it). At T seconds SIGTERM to the group, 10 s later SIGKILL;
# whatever of the group is left when CMD exits is killed too. Exit status 124 on a timeout.
run_group() {
    local t=$1 rc=0 deadline
    shift
    deadline=$((SECONDS + t))
    setsid "$@" &
    CURRENT_GROUP=$!
    while kill -0 "$CURRENT_GROUP" 2>/dev/null && ((SECONDS < deadline)); do sleep 1; done
    if kill -0 "$CURRENT_GROUP" 2>/dev/null; then
        kill -TERM -- "-$CURRENT_GROUP" 2>/dev/null || true
        local grace=$((SECONDS + 10))
        while kill -0 "$CURRENT_GROUP" 2>/dev/null && ((SECONDS < grace)); do sleep 1; done
        kill -KILL -- "-$CURRENT_GROUP" 2>/dev/null || true
        wait "$CURRENT_GROUP" 2>/dev/null || true
        rc=124
    else
        wait "$CURRENT_GROUP" || rc=$?
        kill -KILL -- "-$CURRENT_GROUP" 2>/dev/null || true # leftovers of a finished step
    fi
    CURRENT_GROUP=""
    return "$rc"
}

# step NAME CAP_S CMD...: run CMD under run_group, capped by what the budget leaves for the later steps.
step() {
    local name=$1 cap=$2 start=$SECONDS rc=0
    shift 2
    if ! selected "$name"; then
        echo "=== $name: not selected"
        return 0
    fi
    STEPS_LEFT=$((STEPS_LEFT - 1))
    local left=$((BUDGET - SECONDS - STEPS_LEFT * MIN_STEP_S))
    local t=$((cap < left ? cap : left))
    if ((t < 5)); then
        echo "=== $name: SKIPPED (suite budget of ${BUDGET}s spent)"
        FAILED+=("$name:skipped")
        return 0
    fi
    echo "=== $name (timeout ${t}s, at ${SECONDS}s)"
    run_group "$t" "$@" || rc=$?
    if ((rc == 124)); then
        echo "=== $name: TIMED OUT after ${t}s (its process group killed; rows it finished are kept)"
        FAILED+=("$name:timeout")
    elif ((rc != 0)); then
        echo "=== $name: FAILED (exit $rc)"
        FAILED+=("$name:exit$rc")
    else
        echo "=== $name: ok ($((SECONDS - start))s)"
    fi
}

echo "=== clmap GPU suite $(date -u +%FT%TZ), repo $REPO, out $OUT_DIR, dry run $DRY, budget ${BUDGET}s"
if [[ $DRY == 0 ]]; then
    nvidia-smi || echo "nvidia-smi failed"
    # Utilisation every second in the background, for the whole suite.
    nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw,clocks.sm \
        --format=csv -l 1 >"$OUT_DIR/gpu_util.csv" 2>/dev/null &
    SAMPLER=$!
    DEVICE=cuda
else
    DEVICE=cpu
    export OMP_NUM_THREADS=1 # a small shared CPU: one thread per process oversubscribes it least
fi
"$PY" - "$DEVICE" <<'EOF' || true
import platform, sys
from importlib.metadata import PackageNotFoundError, version
print("python", platform.python_version(), sys.executable)
for name in ("torch", "triton", "transformers", "numpy", "datasets", "sentencepiece", "pybind11",
             "liger-kernel", "cut-cross-entropy"):
    try:
        print(name, version(name))
    except PackageNotFoundError:
        print(name, "not installed")
if sys.argv[1] == "cuda":
    import torch
    print("cuda", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())
EOF

# -- setup: the C++ extension and carried wheels ----------------------------------------------------
if "$PY" -c "import clmap._csrc" 2>/dev/null; then
    echo "=== build_ext: clmap._csrc already importable"
elif timeout 150 "$PY" setup.py -q build_ext --inplace >"$WORK/build.log" 2>&1; then
    echo "=== build_ext: ok"
else
    tail -20 "$WORK/build.log" || true
    echo "=== build_ext: FAILED; the data index falls back to its Python backend where the caller allows it"
    export CLMAP_DATA_BACKEND=python
    FAILED+=("build_ext")
fi
shopt -s nullglob
wheels=(.whl/*.whl)
if ((${#wheels[@]})); then
    if [[ $DRY == 1 ]]; then
        echo "=== wheels: dry run, not installing ${wheels[*]}"
    else
        if "$PY" -c "import datasets" 2>/dev/null; then # keep the image's datasets and its dependencies
            keep=()
            for w in "${wheels[@]}"; do
                case "$(basename "$w")" in datasets-* | dill-* | multiprocess-*) ;; *) keep+=("$w") ;; esac
            done
            wheels=("${keep[@]}")
        fi
        echo "=== wheels: installing ${wheels[*]:-none}"
        if ((${#wheels[@]} == 0)); then
            :
        elif "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "${wheels[@]}"; then
            export PYTHONPATH=$PYTHONPATH:/tmp/site
        else
            echo "=== wheels: install FAILED; peers that need them are skipped"
            FAILED+=("wheels")
        fi
    fi
fi
shopt -u nullglob

# -- sizes ----------------------------------------------------------------------------------------
# The A/B's reference commit (the 100M run measured on another H200 at 95.9k tokens/s); HEAD is this tree.
AB_BASE=${CLMAP_AB_BASE:-2cca9d5}
if [[ $DRY == 1 ]]; then
    MAPPING_TARGET_ARGS=(--device cpu --shapes "256,32,512" --passes fwd+bwd --impls clmap,clmap_deferred,clmap@1
        --rep 1 --profile)
    MAPPING_ARGS=(--device cpu --shapes "128,32,300" --passes fwd --impls naive,clmap --rep 1)
    POOLED_ARGS=(--device cpu --quick --no-reference --threads 1)
    TINY_MODEL=(--model.hidden_size=32 --model.intermediate_size=64 --model.num_layers=2 --model.num_heads=2
        --model.num_kv_heads=1 --model.max_position=64 --data.seq_len=64 --data.max_segment_tokens=12
        --data.pack_window=64 --train.global_batch=4 --train.micro_batch=2 --tokenizer.train_sentences=3000
        --data.languages=en,cs --data.pairs=en-cs)
    CAP_1B=300 CAP_AB=200 CAP_PACKING=300 CAP_MAPPING=120 # a small CPU; the GPU machine's caps are below
    # configs/1b.toml with a tiny model, vocabulary and rows, in fp32 (bf16 on a CPU only costs time)
    TRAIN_1B_ARGS=(--device cpu --config 1b --steps 3 --warmup 1 --profile-steps 1 "${TINY_MODEL[@]}"
        --tokenizer.vocab_size=2000 --train.mixed_precision=fp32)
    TRAIN_AB_ARGS=(--device cpu --config tiny --steps 3 --warmup 1 --profile-steps 1 "${TINY_MODEL[@]}"
        --tokenizer.vocab_size=2000)
    # the GPU preset's command with the recipe cut to two variants, one seed, a few steps of a tiny model
    ABLATION_ARGS=(--preset gpu --device cpu --jobs 2 --base-threads 1 --variants ntp_only,cl_map --seeds 0
        --base-steps 3 --budgets 2,4 --main-budget 2 --splits test --pairs en-cs --eval-limit 4
        --eval-batch-size 4 --max-new-tokens 4)
    for o in "${TINY_MODEL[@]}" --tokenizer.vocab_size=2000 --metrics.eval_every=0 --train.device=cpu \
        --train.mixed_precision=fp32; do
        ABLATION_ARGS+=("--set=${o#--}")
    done
else
    CAP_1B=360 CAP_AB=110 CAP_PACKING=110 CAP_MAPPING=70 # packing: its step check compiles 12 blocks
    # 22 steps: 2 warm-up (compilation), 20 measured, then 1 profiled, for clmap, ntp, titan in turn (a row
    # each as it ends); the 128256-piece tokenizer is the one built beforehand and carried
    # (.cache/tokenizers/, `python -m benchmarks.train_throughput --config 1b --tokenizers .cache/tokenizers
    # --prepare-tokenizers`): never trained on the device's clock
    TRAIN_1B_ARGS=(--device cuda --config 1b --steps 22 --warmup 2 --profile-steps 1
        --tokenizers "$REPO/.cache/tokenizers" --no-train-tokenizer)
    TRAIN_AB_ARGS=(--device cuda --config 100m --steps 16 --warmup 4 --profile-steps 2)
    # The issue's target shape first, with every peer and clmap's variants (mode, logits chunk size);
    # then N at V=32000 and V at N=16384 (H=4096) for the plots, both passes, every peer present.
    MAPPING_TARGET_ARGS=(--device cuda --shapes "16384,4096,128256" --passes fwd+bwd,fwd
        --impls clmap,clmap_bf16acc,liger,liger_fp32,cce,torch_lce,naive,clmap_deferred)
    MAPPING_ARGS=(--device cuda --shapes "4096,4096,32000;16384,4096,32000"
        --impls naive,torch_lce,liger,liger_fp32,cce,clmap,clmap_deferred)
    POOLED_ARGS=(--device cuda --no-reference)
    ABLATION_ARGS=(--preset gpu)
fi
if [[ ",${CLMAP_SUITE_ONLY:-}," == *",ablation_gpu,"* ]]; then # the write-up to refill with this run's numbers
    mkdir -p "$OUT_DIR/ablation" && cp docs/ablation.md "$OUT_DIR/ablation/"
fi

# -- the steps, in the order of $STEPS ------------------------------------------------------------
step train_1b "$CAP_1B" "$PY" -m benchmarks.train_throughput --work "$WORK/throughput" "${TRAIN_1B_ARGS[@]}"
step packing "$CAP_PACKING" "$PY" -m benchmarks.gpu_check --device "$DEVICE" --checks packing,step
step mapping_target "$CAP_MAPPING" "$PY" -m benchmarks.mapping_loss "${MAPPING_TARGET_ARGS[@]}"
step gpu_check 30 "$PY" -m benchmarks.gpu_check --device "$DEVICE" --checks kernels
step pooled_similarity 40 "$PY" -m benchmarks.pooled_similarity "${POOLED_ARGS[@]}"
step mapping_sweep 45 "$PY" -m benchmarks.mapping_loss "${MAPPING_ARGS[@]}"
step train_ab "$CAP_AB" "$PY" -m benchmarks.train_throughput --work "$WORK/throughput" --ab "$AB_BASE,HEAD" \
    "${TRAIN_AB_ARGS[@]}"
step ablation_gpu 540 "$PY" -m clmap.experiments.ablation --protocol continue "${ABLATION_ARGS[@]}" \
    --out "$WORK/ablation" --docs "$OUT_DIR/ablation"
if [[ -f "$OUT_DIR/train_profiles.txt" ]]; then
    grep -E "^(===|GPU busy)" "$OUT_DIR/train_profiles.txt" || true
fi

# -- the end --------------------------------------------------------------------------------------
if [[ -n "$SAMPLER" ]]; then
    kill "$SAMPLER" 2>/dev/null || true
    SAMPLER=""
    "$PY" - "$OUT_DIR/gpu_util.csv" <<'EOF' || true
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), skipinitialspace=True))
key = next((k for k in (rows[0] if rows else {}) if k.startswith("utilization.gpu")), None)
vals = [float(r[key].split()[0]) for r in rows if key and r.get(key, "").split()[:1] != []]
if vals:
    print(f"=== GPU utilisation: {len(vals)} samples, mean {statistics.mean(vals):.0f} %, max {max(vals):.0f} %")
EOF
fi
echo "=== outputs in $OUT_DIR:"
ls -la "$OUT_DIR"
echo "=== suite finished in ${SECONDS}s; ${#FAILED[@]} step(s) not ok${FAILED[*]:+: ${FAILED[*]}}"
if ((${#FAILED[@]})); then exit 1; fi
