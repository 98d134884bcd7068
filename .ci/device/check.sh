# GPU tests and every benchmark's GPU table in one call, each step time-boxed, output into $OUT:
#   bash .ci/device/check.sh [STEP...]   (after `. .ci/device/setup.sh`; default: every step;
#                                          Mamba-1 steps need cuda_selective_scan.txz unpacked too)
# Steps: pytest_cuda (pytest -m cuda); forward_mamba2_issue17 (forward.py at issue #17's setting:
# Mamba-2 d_model 1024, 4 layers, L 4096, batch 4, states at 16 positions); states_mamba2 and
# effective_attention_mamba2; pretrained_scale (2.8B / 2.7B shapes, bf16); grid_scaling (1 GPU vs 2;
# needs the x2 machine); train_step (the paper preset's training step, Mamba-2 against Mamba-1 on mamba_ssm's and
# on the Triton short-sequence scan: the grid's cost per epoch; needs cuda_selective_scan.txz), train_step_composite
# (the same on composite-symmetric, the slowest cell), train_step_share (12 runs on one GPU: processes or streams),
# short_scan (the Mamba-1 training scan alone by length, Triton vs mamba_ssm: the short_scan_max_len crossover).
steps=${*:-pytest_cuda forward_mamba2_issue17 states_mamba2 effective_attention_mamba2 pretrained_scale grid_scaling train_step \
  train_step_composite train_step_share short_scan}
step() {  # step NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  [[ " $steps " == *" $name "* ]] || return 0
  local t0=$(date +%s)
  timeout "$secs" "$@" > "$OUT/$name.txt" 2>&1
  echo "== $name: rc=$? in $(( $(date +%s) - t0 )) s"; tail -25 "$OUT/$name.txt"
  collect "$OUT/$name.txt"
}
# a call returns at most 8 files: each finished step's output (and each test module's) is appended to
# $OUT/check.txt, leaving the benchmarks' JSON files beside it; a step cut by the call's own limit keeps
# its file
collect() {
  local f
  for f in "$@"; do
    [ -e "$f" ] && { echo "######## ${f##*/}"; cat "$f"; echo; rm -f "$f"; } >> "$OUT/check.txt"
  done
}
nvidia-smi -L
# pytest -m cuda one module at a time, each in its own time box and output file (pytest prints tracebacks
# only at the end of a session, so one slow module cut by a single box lost every failure's traceback);
# -v names each outcome as it ends; pytest-timeout (in the device image) fails a test that hangs.
# PYTEST_MODULES / PYTEST_BOX (seconds per module) override the list and the box, e.g. to run the SSD
# tests (whose first calls autotune mamba_ssm's kernels: minutes) before a timing step.
pytest_cuda() {
  # the modules are dealt round-robin to the GPUs (PYTEST_GPUS, e.g. "0 1"; default: every GPU), one lane
  # per GPU, each lane's modules in turn: no test needs two GPUs, and two lanes halve the wall time
  local per_test=() rc=0 m i=0 box=${PYTEST_BOX:-200}
  local gpus=(${PYTEST_GPUS:-$(nvidia-smi --query-gpu=index --format=csv,noheader)})
  local modules=(${PYTEST_MODULES:-test_ssd_states test_triton_scan test_training test_generation test_effective_attention test_cuda_backend})
  local lanes=() pids=()
  (( ${#gpus[@]} )) || { echo "pytest_cuda: no GPU listed by nvidia-smi"; return 1; }
  python3 -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout=$(( box - 20 )))
  for m in "${modules[@]}"; do lanes[i % ${#gpus[@]}]+=" $m"; i=$(( i + 1 )); done
  for i in "${!lanes[@]}"; do
    (
      fail=0
      for m in ${lanes[i]}; do
        # --foreground: stay in this process group, so that the step's own time box also stops pytest
        CUDA_VISIBLE_DEVICES=${gpus[i]} timeout --foreground "$box" python3 -m pytest -v -m cuda \
          -p no:cacheprovider -rfE --tb=short --durations=5 "${per_test[@]}" "tests/$m.py" \
          > "$OUT/pytest_$m.txt" 2>&1 || fail=$?
        echo "-- $m (GPU ${gpus[i]}): $(tail -1 "$OUT/pytest_$m.txt")"
      done
      exit $fail
    ) & pids+=($!)
  done
  for i in "${!pids[@]}"; do wait "${pids[i]}" || rc=$?; done
  return $rc
}
export -f pytest_cuda
step pytest_cuda ${PYTEST_STEP_BOX:-540} env OUT="$OUT" PYTEST_MODULES="${PYTEST_MODULES:-}" PYTEST_BOX="${PYTEST_BOX:-}" \
  PYTEST_GPUS="${PYTEST_GPUS:-}" bash -c pytest_cuda
collect "$OUT"/pytest_test_*.txt  # the modules' outputs (here, so that those of a cut step are kept too)
step forward_mamba2_issue17 150 python3 benchmarks/forward.py --mixer mamba2 --d-model 1024 --layers 4 --batch 4 \
  --lengths 4096 --json "$OUT/forward_mamba2_issue17.json"
step states_mamba2 150 python3 benchmarks/states.py --mixer mamba2 --json "$OUT/states_mamba2.json"
step effective_attention_mamba2 60 python3 benchmarks/effective_attention.py --mixer mamba2 \
  --json "$OUT/effective_attention_mamba2.json"
step pretrained_scale 150 python3 benchmarks/pretrained_scale.py --json "$OUT/pretrained_scale.json"
step grid_scaling 240 python3 benchmarks/grid_scaling.py --epochs 3 --json "$OUT/grid_scaling.json"
step train_step 240 python3 benchmarks/train_step.py --steps 100 --graphed-only --profile --short-scan-max-len 128 \
  --models mamba:mamba2 mamba:mamba1 mamba-bypass:mamba1 transformer:-
step train_step_composite 150 python3 benchmarks/train_step.py --task composite-symmetric --steps 100 --graphed-only \
  --short-scan-max-len 128 --models mamba:mamba2 mamba:mamba1
step train_step_share 300 python3 benchmarks/train_step.py --steps 200 --graphed-only --share 12 --short-scan-max-len 128 \
  --models mamba:mamba1
step short_scan 200 python3 benchmarks/short_scan.py --json "$OUT/short_scan.json"
