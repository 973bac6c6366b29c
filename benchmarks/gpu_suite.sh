#!/usr/bin/env bash
# The GPU node's figures in one command (issue 13, section 3), on one H100/H200 with 16 cores:
#   learner_update  learner updates/s, official DrQ-v2 update vs ours, batch 256 and 512, fp32
#                   and mixed precision (benchmarks/learner_update.py)
#   memory_drqv2    peak GPU memory of DrQ-v2 at batch 256 (`distdrq bench memory`)
#   memory_nano     the same for the nano profile (configs/nano_cheetah_run.yaml)
#   replay          replay sampling (benchmarks/replay.py, through cmd_replay below)
#   sdpg            one SDPG iteration's time split (benchmarks/sdpg_iteration.py)
#   launch          a 4-minute `distdrq launch` on walker_walk with 14 actors at the preset's
#                   replay ratio: frames/s, updates/s, measured samples per insert, stop time
#                   (benchmarks/throughput.py --mode end-to-end: the launch's final counters)
# Every step runs under `timeout` (the limits add up to 530 s, so the suite ends within 9
# minutes); a failing or timed-out step is recorded with its error and the others still run.
#
#   benchmarks/gpu_suite.sh [--dry-run] [--out FILE.json] [--work DIR] [--no-append]
#
# Writes FILE.json (default benchmarks/results/gpu_suite-<time>.json) and FILE.md, a RESULTS.md
# section, which a GPU run also appends to benchmarks/RESULTS.md (unless --no-append; a dry
# run never does). Step logs and raw outputs go under --work (default runs/gpu_suite-<time>;
# the launch's run directory, checkpoints and replay snapshots included).
#
# --dry-run runs every step at tiny sizes on the CPU in about a minute, so that the script
# cannot rot (tests/integration/test_gpu_suite.py runs it); its figures measure nothing.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" # measure this checkout's code
export MUJOCO_GL=${MUJOCO_GL:-egl}
PY=${PYTHON:-python}
COMMAND="benchmarks/gpu_suite.sh $*"
STAMP=$(date +%Y%m%d-%H%M%S)
MODE=gpu OUT="" WORK="" APPEND=1
USAGE="benchmarks/gpu_suite.sh [--dry-run] [--out FILE.json] [--work DIR] [--no-append]"
while (($#)); do
  case $1 in
  --dry-run) MODE=dry-run ;;
  --out) OUT=${2:?--out needs a file} && shift ;;
  --work) WORK=${2:?--work needs a directory} && shift ;;
  --no-append) APPEND=0 ;;
  -h | --help) echo "usage: $USAGE" && exit 0 ;;
  *) echo "gpu_suite: unknown argument '$1'; usage: $USAGE" >&2 && exit 2 ;;
  esac
  shift
done

declare -A LIMIT=([learner_update]=60 [memory_drqv2]=40 [memory_nano]=40 [replay]=50 [sdpg]=50
  [launch]=290)

if [[ $MODE == gpu ]]; then
  WORK=${WORK:-runs/gpu_suite-$STAMP} OUT=${OUT:-benchmarks/results/gpu_suite-$STAMP.json}
  DEVICE=cuda
  LEARNER_ARGS=(--batch-sizes 256,512 --updates 200 --warmup 20)
  MEMORY_ARGS=(--updates 2) DRQV2_BATCH=256 NANO_ARGS=()
  REPLAY_ARGS=(--tasks walker_walk --codecs lz4d-star32 --episodes 2 --copies 100 --reps 40 --no-disk)
  LAUNCH_ARGS=(--e2e-actors 14 --shards 2 --minutes 4 replay.disk_codec=stored)
  if ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "gpu_suite: no CUDA device here; run it on a GPU node, or pass --dry-run for the CPU check" >&2
    exit 2
  fi
else
  WORK=${WORK:-${TMPDIR:-/tmp}/gpu_suite-dry-$STAMP-$$} OUT=${OUT:-$WORK/gpu_suite.json} APPEND=0
  DEVICE=cpu
  LEARNER_ARGS=(--batch-sizes 4,8 --updates 1 --warmup 1 --threads 1 --image-size 32)
  MEMORY_ARGS=(--updates 1) DRQV2_BATCH=8 NANO_ARGS=(--batch-size 8)
  REPLAY_ARGS=(--tasks walker_walk --codecs lz4d-star32 --episodes 1 --copies 1 --reps 3 --no-disk)
  LAUNCH_ARGS=(--e2e-actors 1 --shards 1 --frames 400 --minutes 3 --samples-per-insert 8
    replay.disk_codec=stored env.image_size=32 env.fast_render=true agent.batch_size=8
    agent.hidden_dim=32 agent.feature_dim=16 train.seed_frames=200
    train.eval_every_frames=1000000 distributed.evaluator=false distributed.dashboard=false)
fi
# SDPG's iteration time split (single process): the command gets the JSON file to write as its
# last argument, holding {"iteration_seconds": s, "phases": {"<phase>": s, ...}}. Empty: the step
# records "not built".
if [[ $MODE == gpu ]]; then
  SDPG_ARGS=(--iterations 3 sdpg.nominals=16 sdpg.clones=15)  # pixels, the published window
else
  SDPG_ARGS=(--iterations 1 sdpg.obs=state sdpg.nominals=2 sdpg.clones=2 sdpg.horizon=4)
fi
SDPG_ITERATION=("$PY" benchmarks/sdpg_iteration.py --device "$DEVICE" "${SDPG_ARGS[@]}" --out)
RAW=$WORK/raw
mkdir -p "$RAW" "$WORK/logs" "$WORK/status" "$(dirname "$OUT")"

# ---- the steps: each sets CMD, the command run_step runs (its JSON goes to $RAW/<step>.json)

cmd_learner_update() {
  CMD=("$PY" benchmarks/learner_update.py --device "$DEVICE" "${LEARNER_ARGS[@]}"
    --out "$RAW/learner_update.json")
}
cmd_memory_drqv2() {
  CMD=("$PY" -m distdrq.cli bench memory --task walker_walk --batch-size "$DRQV2_BATCH"
    --device "$DEVICE" "${MEMORY_ARGS[@]}" --json "$RAW/memory_drqv2.json")
}
cmd_memory_nano() {
  CMD=("$PY" -m distdrq.cli bench memory --config configs/nano_cheetah_run.yaml
    --device "$DEVICE" "${MEMORY_ARGS[@]}" "${NANO_ARGS[@]}" --json "$RAW/memory_nano.json")
}
cmd_replay() { # replay.py prints tables; the report reads them from logs/replay.log
  CMD=("$PY" benchmarks/replay.py "${REPLAY_ARGS[@]}")
}
cmd_sdpg() {
  if ((${#SDPG_ITERATION[@]})); then
    CMD=("${SDPG_ITERATION[@]}" "$RAW/sdpg.json")
  else
    CMD=("$PY" benchmarks/gpu_suite.py not-built sdpg --out "$RAW/sdpg.json")
  fi
}
cmd_launch() { # the second signal (timeout's TERM) stops a launch at once, Ray included
  CMD=("$PY" benchmarks/throughput.py --mode end-to-end --device "$DEVICE"
    --run-root "$WORK/launch" --out "$RAW/launch.json" "${LAUNCH_ARGS[@]}")
}

run_step() { # NAME: run cmd_NAME's command under LIMIT[NAME]; log, exit status and time to $WORK
  local name=$1 limit=${LIMIT[$1]} start rc
  "cmd_$name"
  echo "[gpu_suite] $name: up to ${limit} s; log $WORK/logs/$name.log"
  start=$(date +%s%N)
  timeout --kill-after=20 "$limit" "${CMD[@]}" >"$WORK/logs/$name.log" 2>&1
  rc=$?
  {
    echo "rc=$rc"
    echo "seconds=$((($(date +%s%N) - start) / 1000000))e-3"
    echo "limit=$limit"
    echo "command=${CMD[*]}"
  } >"$WORK/status/$name.txt"
  echo "[gpu_suite] $name: exit $rc"
}

SUITE_START=$(date +%s)
echo "[gpu_suite] $MODE run; work directory $WORK"
if [[ $MODE == dry-run ]]; then # the launch mostly waits: overlap it with the other steps
  run_step launch &
  launch_pid=$!
  for step in learner_update memory_drqv2 memory_nano replay sdpg; do run_step "$step"; done
  wait "$launch_pid"
else # one at a time, so that no step disturbs another's measurement
  for step in learner_update memory_drqv2 memory_nano replay sdpg launch; do run_step "$step"; done
fi

REPORT=("$PY" benchmarks/gpu_suite.py report --work "$WORK" --mode "$MODE" --out "$OUT"
  --command "$COMMAND" --seconds $(($(date +%s) - SUITE_START)))
((APPEND)) && REPORT+=(--append benchmarks/RESULTS.md)
"${REPORT[@]}"
