#!/usr/bin/env bash
# The GPU suite: one command for a machine with an NVIDIA GPU.
#
#   bash benchmarks/gpu_suite.sh [OUTDIR] [PHASE ...]
#
# OUTDIR defaults to $OUT, else ./gpu-suite-out. PHASEs (default: all, in this order):
#   build     compile gct_fused._C with the CUDA kernels for this GPU's architecture only
#             (GCT_FUSED_CUDA=1, TORCH_CUDA_ARCH_LIST from the device, MAX_JOBS=16), in place
#   test      the whole test suite (cpu, triton and cuda backends against the float64
#             reference, gradcheck, opcheck, torch.compile, CUDA graphs), then the opt-in
#             >= 2**31-element tests of tests/test_cuda.py (-m large)
#   sanitize  compute-sanitizer memcheck on one forward+backward of every op (backend="cuda";
#             fp32 and bf16, NCHW and channels_last); fails on any reported error
#   bench     python -m gct_fused.bench --device cuda (JSON, markdown table, plot)
# Every requested phase runs even if an earlier one failed; the exit status is non-zero if
# any failed. Installs nothing and needs no network (torch, Triton, nvcc, pytest,
# hypothesis, rich and matplotlib must be present).
#
# OUTDIR receives at most 6 files: summary.md (device, versions, date, result per phase),
# suite.log (build, sanitize and bench output), tests.log, bench.json, bench.md, bench.png.
#
# Environment: PYTHON (default: the first of .venv/bin/python, python3, python that imports
# torch), GCT_BENCH_ARGS (extra arguments for the benchmark, e.g. "--dtype bfloat16
# --no-compile"),
# SANITIZE_TOOLS (default "memcheck"; e.g. "memcheck racecheck synccheck"), and
# per-phase limits in seconds: BUILD_TIMEOUT (300), TEST_TIMEOUT (420),
# SANITIZE_TIMEOUT (240), BENCH_TIMEOUT (420); SUITE_BUDGET (570): the seconds for all the
# requested phases together, since one command on a lent GPU machine may run 600 s at most.
# Each phase's limit is cut so that every later phase still gets its minimum (build 120,
# test 120, sanitize 60, bench 120 s); TEST_WORKERS (8): pytest-xdist workers for the
# test phase where pytest-xdist is installed (the Triton kernels compile in parallel).
#
# With a 15-minute lease (a machine takes a minute or two to start, and stays warm only
# 30 s after a call, keeping the build), the plan is two calls back to back:
#   bash benchmarks/gpu_suite.sh "$OUT" build test sanitize      (timeout_s 600)
#   bash benchmarks/gpu_suite.sh "$OUT" bench                     (the machine still warm)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ALL_PHASES=(build test sanitize bench)

is_phase() {
  local p
  for p in "${ALL_PHASES[@]}"; do [[ "$1" == "$p" ]] && return 0; done
  return 1
}

OUTDIR="${OUT:-./gpu-suite-out}"
if [[ $# -gt 0 ]] && ! is_phase "$1"; then
  OUTDIR="$1"
  shift
fi
PHASES=("$@")
[[ ${#PHASES[@]} -eq 0 ]] && PHASES=("${ALL_PHASES[@]}")
for p in "${PHASES[@]}"; do
  is_phase "$p" || { echo "gpu_suite: unknown phase '$p' (phases: ${ALL_PHASES[*]})" >&2; exit 2; }
done
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
cd "$ROOT"

# The first interpreter that has torch: on the lent GPU machines a plain python3 is the one
# that holds PyTorch, and `python` may be another or missing.
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
else
  PY=python3
  for c in .venv/bin/python python3 python; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c "import torch" 2>/dev/null; then PY="$c"; break; fi
  done
fi

SUITE_LOG="$OUTDIR/suite.log"
TESTS_LOG="$OUTDIR/tests.log"
SUMMARY="$OUTDIR/summary.md"
: >"$SUITE_LOG"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

trim() { sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//'; }
log() { echo "[gpu_suite $(date +%H:%M:%S)] $*" | tee -a "$SUITE_LOG" >&2; }

# CUDA_HOME as setup.py finds it: $CUDA_HOME, $CUDA_PATH, /usr/local/cuda, then nvcc on PATH.
find_cuda_home() {
  local c
  for c in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
    if [[ -n "$c" && -x "$c/bin/nvcc" ]]; then (cd "$c" && pwd -P); return 0; fi
  done
  if command -v nvcc >/dev/null 2>&1; then
    dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")"
    return 0
  fi
  return 1
}
CUDA_HOME_FOUND="$(find_cuda_home || true)"
[[ -n "$CUDA_HOME_FOUND" ]] && export CUDA_HOME="$CUDA_HOME_FOUND"

declare -A RESULT SECONDS_TAKEN NOTE

write_summary() {
  local gpu versions nvcc_version commit p
  gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n1)"
  versions="$("$PY" - <<'EOF' 2>/dev/null
import torch
try:
    import triton
    triton_version = triton.__version__
except Exception as exc:  # noqa: BLE001
    triton_version = f"unavailable ({type(exc).__name__})"
cap = ".".join(map(str, torch.cuda.get_device_capability())) if torch.cuda.is_available() else "n/a"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), Triton {triton_version}, compute capability {cap}")
EOF
)"
  nvcc_version="$("${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>/dev/null | grep -o 'release [0-9.]*' |
    head -n1)"
  commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  {
    echo "# gct_fused GPU suite"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- device: ${gpu:-unknown (nvidia-smi failed)}"
    echo "- versions: ${versions:-torch not importable}; nvcc ${nvcc_version:-not found}"
    echo "- commit: $commit (working tree may differ)"
    echo "- command: \`bash benchmarks/gpu_suite.sh $OUTDIR ${PHASES[*]}\`"
    echo
    echo "| phase | result | seconds | notes |"
    echo "|---|---|---|---|"
    for p in "${PHASES[@]}"; do
      echo "| $p | ${RESULT[$p]:-not run} | ${SECONDS_TAKEN[$p]:-} | ${NOTE[$p]:-} |"
    done
    echo
    echo "Logs: \`suite.log\` (build, sanitize, bench), \`tests.log\` (pytest)."
    if [[ -f "$OUTDIR/bench.md" ]]; then
      echo "Benchmark: \`bench.md\`, \`bench.json\`, \`bench.png\`."
    fi
  } >"$SUMMARY"
}

SUITE_BUDGET="${SUITE_BUDGET:-570}"
SUITE_START=$(date +%s)
declare -A MIN_SECONDS=([build]=120 [test]=120 [sanitize]=60 [bench]=120)

# phase_limit PHASE OWN: OWN seconds, or less where the phases requested after PHASE
# would otherwise not get their MIN_SECONDS out of what is left of SUITE_BUDGET (never
# less than PHASE's own minimum).
phase_limit() {
  local phase="$1" own="$2" later=0 seen=0 p left cap
  for p in "${PHASES[@]}"; do
    (( seen )) && later=$(( later + MIN_SECONDS[$p] ))
    [[ "$p" == "$phase" ]] && seen=1
  done
  left=$(( SUITE_BUDGET - ($(date +%s) - SUITE_START) ))
  cap=$(( left - later ))
  (( cap < MIN_SECONDS[$phase] )) && cap=${MIN_SECONDS[$phase]}
  (( own < cap )) && cap=$own
  echo "$cap"
}

# run_limited SECONDS LOGFILE CMD...: runs CMD with a time limit, appending to LOGFILE.
run_limited() {
  local limit="$1" logfile="$2"
  shift 2
  timeout --kill-after=15 "$limit" "$@" >>"$logfile" 2>&1
  local rc=$?
  [[ $rc -eq 124 || $rc -eq 137 ]] && echo "gpu_suite: timed out after ${limit}s: $*" >>"$logfile"
  return $rc
}

phase_build() {
  if [[ -z "${CUDA_HOME:-}" ]]; then
    NOTE[build]="no nvcc found (set CUDA_HOME)"
    return 1
  fi
  local arch
  arch="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>>"$SUITE_LOG")" || {
    NOTE[build]="torch sees no CUDA device"
    return 1
  }
  NOTE[build]="TORCH_CUDA_ARCH_LIST=$arch, CUDA_HOME=$CUDA_HOME"
  log "build: TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=16 GCT_FUSED_CUDA=1 setup.py build_ext --inplace"
  TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=16 GCT_FUSED_CUDA=1 \
    run_limited "$(phase_limit build "${BUILD_TIMEOUT:-300}")" "$SUITE_LOG" "$PY" setup.py build_ext --inplace ||
    return 1
  # The build must register a CUDA kernel for every op.
  run_limited 120 "$SUITE_LOG" "$PY" -c '
import torch, gct_fused
from gct_fused._backends import OP_NAMES
missing = [n for n in OP_NAMES if not torch._C._dispatch_has_kernel_for_dispatch_key("gct_fused::" + n, "CUDA")]
print("CUDA kernels registered for", [n for n in OP_NAMES if n not in missing])
raise SystemExit(f"no CUDA kernel for {missing}" if missing else 0)'
}

phase_test() {
  : >"$TESTS_LOG"
  local rc=0
  echo "### python -m pytest tests -q" >>"$TESTS_LOG"
  local limit start workers=()
  limit="$(phase_limit test "${TEST_TIMEOUT:-420}")"
  start=$(date +%s)
  if "$PY" -c "import xdist" 2>/dev/null; then workers=(-n "${TEST_WORKERS:-8}"); fi
  # The main run leaves a minute of the phase's limit to the opt-in large tests.
  GCT_FUSED_CUDA=1 run_limited "$(( limit > 120 ? limit - 60 : limit ))" "$TESTS_LOG" \
    "$PY" -m pytest tests -q -p no:cacheprovider ${workers[@]+"${workers[@]}"} || rc=1
  NOTE[test]="$(grep -E '(passed|failed|error)' "$TESTS_LOG" | grep -E ' in [0-9.]+s' | tail -n1 | tr -d '=' | trim)"
  if grep -q "gpu_suite: timed out" "$TESTS_LOG"; then
    NOTE[test]="main run timed out (partial results in tests.log)${workers[*]:+, ${workers[*]}}"
  fi
  echo "### python -m pytest tests/test_cuda.py -q -m large" >>"$TESTS_LOG"
  local rest=$(( limit - ($(date +%s) - start) ))
  GCT_FUSED_CUDA=1 run_limited "$(( rest > 30 ? rest : 30 ))" "$TESTS_LOG" \
    "$PY" -m pytest tests/test_cuda.py -q -m large -p no:cacheprovider ||
    rc=1
  NOTE[test]="${NOTE[test]}; large: $(grep -E ' in [0-9.]+s' "$TESTS_LOG" | tail -n1 | tr -d '=' | trim)"
  return $rc
}

write_sanitize_script() {
  cat >"$WORK/sanitize_ops.py" <<'EOF'
"""One forward + backward of every op with backend="cuda", small shapes, for compute-sanitizer."""
import torch

import gct_fused

dev = torch.device("cuda")
torch.manual_seed(0)


def layout(x, name):
    return x.contiguous(memory_format=torch.channels_last) if name == "channels_last" else x.contiguous()


def run(fn, tensors):
    leaves = [None if t is None else t.detach().requires_grad_(True) for t in tensors]
    y = fn(*leaves)
    y.backward(torch.randn_like(y))
    assert torch.isfinite(y).all(), "non-finite output"


count = 0
# (shape, layouts): rows split along L, odd channel counts (scalar paths), C beyond the
# shared-memory staging of the GCT gates.
cases = [((2, 16, 9, 9), ("nchw", "channels_last")), ((1, 3, 96, 96), ("nchw", "channels_last")),
         ((2, 5, 7, 3), ("nchw", "channels_last")), ((1, 9000, 2, 2), ("channels_last",))]
for shape, layouts in cases:
    C = shape[1]
    for dtype in (torch.float32, torch.bfloat16):
        for lay in layouts:
            x = layout(torch.randn(shape, device=dev, dtype=dtype), lay)
            identity = layout(torch.randn(shape, device=dev, dtype=dtype), lay)
            alpha = torch.rand(C, device=dev, dtype=dtype) + 0.5
            gamma, beta = torch.randn(C, device=dev, dtype=dtype), torch.randn(C, device=dev, dtype=dtype)
            for mode, after_relu in (("l2", False), ("l1", False), ("l1", True)):
                xin = x.abs() if after_relu else x
                run(lambda *t: gct_fused.gct(*t, mode=mode, after_relu=after_relu, backend="cuda"),
                    [xin, alpha, gamma, beta])
                count += 1
            R = max(1, min(C // 4, 64))
            w1 = torch.randn(R, C, device=dev, dtype=dtype) / C ** 0.5
            w2 = torch.randn(C, R, device=dev, dtype=dtype) / R ** 0.5
            b1, b2 = torch.randn(R, device=dev, dtype=dtype), torch.randn(C, device=dev, dtype=dtype)
            run(lambda *t: gct_fused.squeeze_excite(*t, "silu", "hardsigmoid", backend="cuda"), [x, w1, b1, w2, b2])
            run(lambda *t: gct_fused.squeeze_excite(*t, "relu", "sigmoid", backend="cuda"), [x, w1, None, w2, None])
            for after in ("relu", "none"):
                run(lambda *t: gct_fused.se_residual(*t, "relu", "sigmoid", after, backend="cuda"),
                    [x, identity, w1, b1, w2, b2])
            count += 4
# spatial dims that do not merge (one contiguous copy inside the op)
xt = torch.randn(2, 8, 5, 7, device=dev).transpose(2, 3)
run(lambda *t: gct_fused.gct(*t, backend="cuda"), [xt, torch.ones(8, device=dev), torch.randn(8, device=dev),
                                                   torch.randn(8, device=dev)])
torch.cuda.synchronize()
print(f"sanitize_ops: {count + 1} forward+backward calls done")
EOF
}

phase_sanitize() {
  local sanitizer=""
  local c
  local home="${CUDA_HOME:-/usr/local/cuda}"
  for c in "$home/bin/compute-sanitizer" "$home/compute-sanitizer/compute-sanitizer" \
    "$(command -v compute-sanitizer 2>/dev/null)"; do
    if [[ -n "$c" && -x "$c" ]]; then sanitizer="$c"; break; fi
  done
  if [[ -z "$sanitizer" ]]; then
    NOTE[sanitize]="compute-sanitizer not found"
    return 1
  fi
  write_sanitize_script
  local rc=0 tool start
  local notes=()
  for tool in ${SANITIZE_TOOLS:-memcheck}; do
    log "sanitize: $sanitizer --tool $tool"
    start=$(wc -l <"$SUITE_LOG")
    # No caching allocator: every tensor is its own allocation, so overruns are caught.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
      run_limited "$(phase_limit sanitize "${SANITIZE_TIMEOUT:-240}")" "$SUITE_LOG" \
      "$sanitizer" --tool "$tool" --error-exitcode 1 --print-limit 50 "$PY" "$WORK/sanitize_ops.py" || rc=1
    local summary
    summary="$(tail -n +"$((start + 1))" "$SUITE_LOG" | grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' | tail -n1)"
    if tail -n +"$((start + 1))" "$SUITE_LOG" | grep -E '(ERROR|RACECHECK) SUMMARY: [1-9]' >/dev/null; then rc=1; fi
    notes+=("$tool: ${summary:-no summary}")
  done
  NOTE[sanitize]="$(IFS=';'; echo "${notes[*]}")"
  return $rc
}

phase_bench() {
  log "bench: python -m gct_fused.bench --device cuda ${GCT_BENCH_ARGS:-}"
  # shellcheck disable=SC2086
  run_limited "$(phase_limit bench "${BENCH_TIMEOUT:-420}")" "$SUITE_LOG" "$PY" -m gct_fused.bench --device cuda \
    --json "$OUTDIR/bench.json" --markdown "$OUTDIR/bench.md" --plot "$OUTDIR/bench.png" ${GCT_BENCH_ARGS:-}
}

failed=0
for p in "${PHASES[@]}"; do
  log "=== phase $p ==="
  t0=$(date +%s)
  if "phase_$p"; then RESULT[$p]="pass"; else RESULT[$p]="FAIL"; failed=1; fi
  SECONDS_TAKEN[$p]=$(( $(date +%s) - t0 ))
  log "=== phase $p: ${RESULT[$p]} (${SECONDS_TAKEN[$p]} s) ==="
  write_summary  # after every phase, so a run cut short still leaves a summary
done
cat "$SUMMARY"
exit $failed
