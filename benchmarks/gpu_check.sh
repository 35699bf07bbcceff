#!/usr/bin/env bash
# gpu_check.sh -- every GPU check of the CuPy/CUDA backend in one run, results as JSON + Markdown.
#
#   benchmarks/gpu_check.sh [--dry-run]
#
# Steps (env STEPS selects a subset, in this order):
#   env      versions, nvidia-smi
#   wheels   pip install --no-index --no-deps --target /tmp/sjr_site $WHEELS/*.whl (spikingjelly 2.0.0, loguru)
#   warm     python -m benchmarks.gpu.warm_cache: every CUDA module compiled in parallel into CUPY_CACHE_DIR
#   tests    pytest -m gpu (tests/gpu and every gpu-marked test of the suite) with SJR_REQUIRE_GPU=1: a skip fails
#   index64  python -m benchmarks.gpu.stress_checks index64: bf16, T=2, n = 2^30+4 (vector) and 2^30+1 (scalar),
#            first and last 2^20 neurons of each step vs the torch backend
#   flips    python -m benchmarks.gpu.stress_checks flips: continuous inputs, learned per-channel decay, every
#            surrogate, fp32/bf16: spike flips vs the float64 reference (none allowed away from the threshold)
#   memcheck compute-sanitizer --tool memcheck on benchmarks/gpu/memcheck_run.py (torch caching + CuPy pool
#            off), plus a planted out-of-bounds launch that memcheck must catch
#   neurons  python -m benchmarks.neurons on cuda: ours cupy/torch vs SJ LIFNode(Rect), LIFNode(ATan) (Triton),
#            FlexSN; T in {2,4,8,16}, 2^24 neurons, fp32/bf16/fp16, copy bandwidth in the same run
#   kernels  python -m benchmarks.gpu.kernel_bench: kernel roofline (fwd/infer/fp16-state/bwd phases and a node
#            fwd+bwd after reset_net) + the targets (uses the neurons JSON)
# Env: OUT (default ./gpu_out), DRY=1 (same as --dry-run), STEPS, WHEELS (default .whl), PY (default python3),
#      CUPY_CACHE_DIR (default .cupy_cache in the working tree: carry it to the next run and nothing recompiles).
# --dry-run runs end to end on a CPU machine: GPU-only steps are skipped, benchmarks use tiny CPU sizes.
# Exit status: 0 when every step that ran succeeded.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
DRY=${DRY:-0}
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
STEPS=${STEPS:-"env wheels warm tests index64 flips memcheck neurons kernels"}
WHEELS=${WHEELS:-.whl}
PY=${PY:-python3}
LOG="$OUT/gpu_check.log"
: >"$LOG"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
[[ $DRY -eq 1 ]] || export SJR_REQUIRE_GPU=1  # a real run: a skipped gpu test is a failure
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-$REPO/.cupy_cache}
STATUS=0
SUMMARY=()

want() { [[ " $STEPS " == *" $1 "* ]]; }

run_step() {  # run_step NAME CMD...: log the output, record the exit code
    local name=$1
    shift
    echo "=== $name: $*" | tee -a "$LOG"
    local t0=$SECONDS
    "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: rc=$rc ($((SECONDS - t0)) s)" | tee -a "$LOG"
    SUMMARY+=("| $name | $rc | $((SECONDS - t0)) s |")
    [[ $rc -eq 0 ]] || STATUS=1
    return 0
}

skip_step() {
    echo "=== $1: skipped ($2)" | tee -a "$LOG"
    SUMMARY+=("| $1 | skipped: $2 | |")
}

step_env() {
    $PY - <<'PY'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for mod in ("cupy", "triton", "spikingjelly"):
    try:
        m = __import__(mod)
        print(mod, getattr(m, "__version__", "?"))
    except Exception as exc:
        print(mod, "not importable:", exc)
PY
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
        --format=csv
    return 0
}

step_wheels() {
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sjr_site \
        "$WHEELS"/*.whl || return 1
    $PY -c "import sys; sys.path.insert(0, '/tmp/sjr_site'); import spikingjelly, loguru; print('spikingjelly ok')"
}

find_sanitizer() {
    command -v compute-sanitizer 2>/dev/null && return 0
    for d in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer /opt/nvidia/compute-sanitizer; do
        [[ -x "$d/compute-sanitizer" ]] && { echo "$d/compute-sanitizer"; return 0; }
    done
    return 1
}

step_memcheck() {
    local cs
    cs=$(find_sanitizer) || { echo "compute-sanitizer not found"; return 1; }
    local pad=()
    "$cs" --help 2>/dev/null | grep -q -- "--padding" && pad=(--padding 4096)
    "$cs" --version | tail -n 1
    # --padding puts a guard buffer after every allocation, so an overrun into a neighbouring tensor is caught too
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool memcheck --error-exitcode 3 "${pad[@]}" --leak-check no \
        "$PY" -m benchmarks.gpu.memcheck_run || return 1
    echo "--- planted out-of-bounds launch (memcheck must report it):"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool memcheck --error-exitcode 3 "${pad[@]}" --leak-check no \
        "$PY" -m benchmarks.gpu.memcheck_run --plant
    local rc=$?
    if [[ $rc -eq 3 ]]; then echo "planted error caught"; return 0; fi
    echo "planted error NOT caught (rc=$rc)"
    return 1
}

newest_neurons_json() { ls -t "$OUT"/neurons-*.json 2>/dev/null | head -n 1; }

if [[ -d "$WHEELS" ]] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then HAVE_WHEELS=1; else HAVE_WHEELS=0; fi
echo "gpu_check: out=$OUT dry=$DRY steps=[$STEPS]" | tee -a "$LOG"

want env && run_step env step_env
if want wheels; then
    if [[ $DRY -eq 1 ]]; then
        skip_step wheels "dry run uses the local environment"
    elif [[ $HAVE_WHEELS -eq 1 ]]; then
        run_step wheels step_wheels
        export PYTHONPATH="/tmp/sjr_site:$PYTHONPATH"
    else
        skip_step wheels "no $WHEELS/*.whl"
    fi
fi
if want warm; then
    if [[ $DRY -eq 1 ]]; then skip_step warm "needs a GPU"; else run_step warm "$PY" -m benchmarks.gpu.warm_cache; fi
fi
if want tests; then
    if [[ $DRY -eq 1 ]]; then
        run_step tests "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/gpu
    else
        run_step tests "$PY" -m pytest -q -p no:cacheprovider -m gpu tests
    fi
fi
for check in index64 flips; do
    if want "$check"; then
        if [[ $DRY -eq 1 ]]; then
            run_step "$check" "$PY" -m benchmarks.gpu.stress_checks "$check" --out "$OUT" --dry-run
        else
            run_step "$check" "$PY" -m benchmarks.gpu.stress_checks "$check" --out "$OUT"
        fi
    fi
done
if want memcheck; then
    if [[ $DRY -eq 1 ]]; then skip_step memcheck "needs a GPU"; else run_step memcheck step_memcheck; fi
fi
if want neurons; then
    if [[ $DRY -eq 1 ]]; then
        run_step neurons "$PY" -m benchmarks.neurons --device cpu --quick --impls ours_torch,sj_rect \
            --T 2,4 --dtypes fp32 --rounds 3 --no-peak --out-dir "$OUT" --no-plots
    else
        run_step neurons "$PY" -m benchmarks.neurons --device cuda --T 2,4,8,16 --base-neurons 24 --neurons 24 \
            --base-T 8 --dtypes fp32,bf16,fp16 --rounds 7 --time-budget-s 10 --out-dir "$OUT" --no-plots
    fi
fi
if want kernels; then
    NJ=$(newest_neurons_json)
    args=(--out "$OUT")
    [[ -n "$NJ" ]] && args+=(--neurons-json "$NJ")
    [[ $DRY -eq 1 ]] && args+=(--dry-run)
    run_step kernels "$PY" -m benchmarks.gpu.kernel_bench "${args[@]}"
fi

{
    echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), dry run: $DRY)"
    echo
    echo "| step | exit code | time |"
    echo "|---|---|---|"
    printf '%s\n' "${SUMMARY[@]}"
    for md in index64 flips kernels; do
        if [[ -f "$OUT/$md.md" ]]; then echo; cat "$OUT/$md.md"; fi
    done
} >"$OUT/summary.md"
echo "gpu_check: status=$STATUS; wrote $OUT/summary.md" | tee -a "$LOG"
exit $STATUS
