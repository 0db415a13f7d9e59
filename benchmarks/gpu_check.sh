#!/usr/bin/env bash
# One-shot accelerator check: installs CUDA JAX, times the three paper set-ups' train steps with
# attention/remat variants (bf16, `benchmarks/train_step.py`), runs the input-included DINO step
# with all host cores, and writes gpu_check.json and gpu_check.md (one table + the goals) to --out.
#
#   bash benchmarks/gpu_check.sh [--tiny] [--out DIR] [--no-install]
#
# --out: default gpu_check_out/ in the repository. --tiny: the CPU test (each config's :quick
# sizes, depth 1, a few steps, no install; about a minute on 2 cores). --no-install: fail instead of
# installing when JAX sees no GPU. Env: PYTHON (default python), JAX_CUDA_EXTRA (cuda12 or cuda13;
# default cuda13 with an NVIDIA driver >= 580, else cuda12), GPU_CHECK_BUDGET_S (default 460).
#
# Time budget on a fresh H100/H200 host (must end within 8 min = 480 s): stages run one after the
# other until a deadline at 460 s. Each runs under `timeout` (SIGKILL 10 s after SIGTERM) for at
# most its cap and at most the time left minus what the later stages need at least (RESERVE), so
# no stage pushes the check past the deadline: 460 + 10 + the report (~3 s) < 480 s. A stage that
# fails or times out is recorded and the next one runs. Cap / estimate per stage, in seconds:
#   install jax[cuda] (~3 GB of wheels)  150 / 60-120 (skipped when JAX already sees a GPU)
#   probe: JAX on the GPU                 60 / 10
#   dino_vits16 + input run              140 / start-up 20, explicit 5 + 20-40 compile, input 20,
#                                                cudnn 25 (XLA's autotuning cache is warm by then)
#   dinov2_vitl14                        190 / start-up 20, state 15, explicit 60-120, cudnn 40-80
#   mae_vitl16                      the rest / start-up 20, per variant 40-60
# RESERVE: 200 s kept for the two ViT-L stages when DINO starts, 80 for MAE when DINOv2 does.
# Typical fresh host: 90 + 15 + 105 + 130 + 80 = 420 s. Variants run in priority order: explicit
# attention without remat first (the MFU reference, so its FLOPs need no extra compile; also the
# input-included run's step), then cudnn, then block_dots remat (ViT-L). With `train_step.py
# --budget-s` (the stage's limit minus 30 s of start-up and slack) a further variant starts only
# if, taking as long as the last one, it ends in time; the others are recorded as skipped. On a
# fresh host expect both DINO variants and the first variant of each ViT-L set-up (two when
# compiles are fast). Steps: 10 timed after 2 warm-up (a ViT-L step takes 0.1-0.3 s); the
# input-included run 100. A rerun with the same --out skips the install and reuses the
# compilation cache kept there: its compiles take seconds, so it should get through every variant.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TINY=0 INSTALL=1 OUT=""
while (($#)); do
  case $1 in
    --tiny) TINY=1 ;;
    --no-install) INSTALL=0 ;;
    --out) OUT=${2:?--out needs a folder}; shift ;;
    --out=*) OUT=${1#--out=} ;;
    -h | --help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-$REPO/gpu_check_out}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
cd "$REPO"
if [[ $OUT == "$REPO"/* && ! -e $OUT/.gitignore ]]; then echo '*' >"$OUT/.gitignore"; fi
PY=${PYTHON:-python}
SETUPS=(dino_vits16 dinov2_vitl14 mae_vitl16)
rm -f "$OUT"/stages.tsv "$OUT"/probe.json "$OUT"/gpu_check.{json,md} "$OUT"/logs/*.log
for s in "${SETUPS[@]}"; do rm -f "$OUT/$s.json"; done
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$OUT/jax_cache}

if ((TINY)); then
  export JAX_PLATFORMS=cpu
  BUDGET=900 STARTUP=0 MIN_STAGE=10 FAST=dot_product  # cudnn exists only on NVIDIA GPUs
  STEPS=(--tiny --steps 3 --warmup 1 --set model.depth=1) INPUT=(--input-steps 4)
  declare -A CAP=([probe]=120 [dino_vits16]=300 [dinov2_vitl14]=300 [mae_vitl16]=300)
  declare -A FIRST_ONLY=([dinov2_vitl14]=1 [mae_vitl16]=1)  # DINO runs both variants
else
  BUDGET=${GPU_CHECK_BUDGET_S:-460} STARTUP=30 MIN_STAGE=30 FAST=cudnn
  STEPS=(--steps 10 --warmup 2) INPUT=(--input-steps 100 --workers $(($(nproc) - 1)))
  declare -A CAP=([install]=150 [probe]=60 [dino_vits16]=140 [dinov2_vitl14]=190 [mae_vitl16]=999)
  declare -A FIRST_ONLY=()
fi
declare -A RESERVE=([dino_vits16]=200 [dinov2_vitl14]=80 [mae_vitl16]=0)
declare -A COMPARE=(
  [dino_vits16]="--compare model.attention=explicit,$FAST"
  [dinov2_vitl14]="--compare model.remat=none,block_dots --compare model.attention=explicit,$FAST"
  [mae_vitl16]="--compare model.remat=none,block_dots --compare model.attention=explicit,$FAST"
)
FAILED=0 META=() TINY_FLAG=() SLIDES_PID=""
if ((TINY)); then TINY_FLAG=(--tiny); fi

now() { date +%s.%N; }

# limit CAP RESERVE: the seconds a stage may take: its cap, or what is left before the deadline
# ($SECONDS counts from the script's start) minus what later stages need at least.
limit() {
  local left=$((BUDGET - SECONDS - $2))
  echo $((left < $1 ? left : $1))
}

# finish NAME RC T0 LIMIT: records a stage (train_step.py exits 1 when a variant failed but the
# others ran: "errors"), prints its status and its log's end if not ok; false if it gave nothing.
finish() {
  local name=$1 rc=$2 wall status log=$OUT/logs/$1.log
  wall=$(awk -v a="$3" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    1) if [[ -s $OUT/$name.json ]]; then status=errors; else status=failed; fi ;;
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$wall" "$4" "logs/$name.log" \
    >>"$OUT/stages.tsv"
  echo "   $name: $status in $wall s (log: $log)"
  if [[ $status != ok ]]; then tail -n 12 "$log" | sed 's/^/   | /'; fi
  [[ $status == ok || $status == errors ]]
}

# run_stage NAME LIMIT CMD...: CMD under `timeout`, output in logs/NAME.log.
run_stage() {
  local name=$1 lim=$2 rc=0 t0 cmd
  shift 2
  t0=$(now) cmd="$*"
  echo "== $name (at most ${lim} s): ${cmd//$'\n'/ }" | cut -c1-150
  timeout --kill-after=10 "$lim" "$@" >"$OUT/logs/$name.log" 2>&1 || rc=$?
  finish "$name" "$rc" "$t0" "$lim"
}

report() {
  "$PY" benchmarks/gpu_report.py --dir "$OUT" --budget-s "$BUDGET" --wall-s "$SECONDS" \
    "${TINY_FLAG[@]}" "${META[@]}"
}

# Stops the background slide generation on an early exit.
trap 'if [[ -n $SLIDES_PID ]]; then kill "$SLIDES_PID" 2>/dev/null || true; fi' EXIT

fail() {  # an error that ends the check: the report of what ran, then exit 1
  echo "gpu_check.sh: ERROR: $*" >&2
  report >/dev/null 2>&1 || true
  exit 1
}

# Before a long install: can this python run the benchmark? (--tiny finds out in seconds anyway.)
if ((!TINY)); then
  "$PY" -c 'import pathfm.data.pipeline, pathfm.train.build' ||
    fail "'$PY' cannot import pathfm (activate the repository's environment or set PYTHON)"
fi

# The DINO set-up's synthetic slides (the input-included run reads them), made on the CPU in the
# background while CUDA JAX installs; kept in --out for reruns.
DINO_CONFIG=configs/campanella_dino_vits16.py
if ((TINY)); then DINO_CONFIG+=:quick; fi
SLIDES=$OUT/slides SLIDES_T0=$(now)
timeout --kill-after=10 120 env JAX_PLATFORMS=cpu "$PY" -c '
import sys
from pathfm.data.pipeline import resolve_slide_source
from pathfm.main import load_config
config = load_config(sys.argv[1], [f"data.synthetic_dir={sys.argv[2]}"])
print(resolve_slide_source(config, sys.argv[2]))' "$DINO_CONFIG" "$SLIDES" \
  >"$OUT/logs/slides.log" 2>&1 &
SLIDES_PID=$!

PROBE='import jax, json, sys
devices = jax.devices(sys.argv[1]) if sys.argv[1] != "any" else jax.devices()
probe = json.dumps({"jax": jax.__version__, "backend": jax.default_backend(),
                    "device_kind": devices[0].device_kind, "devices": [str(d) for d in devices]})
print(probe)
if len(sys.argv) > 2:
    open(sys.argv[2], "w").write(probe + "\n")'

if ((TINY)); then
  run_stage probe "$(limit "${CAP[probe]}" 0)" "$PY" -c "$PROBE" any "$OUT/probe.json" ||
    fail "JAX does not start (see $OUT/logs/probe.log)"
else
  GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    2>/dev/null | head -n1) || GPU=""
  if [[ -n $GPU ]]; then META+=(--meta "nvidia_smi=$GPU"); fi
  if timeout 60 "$PY" -c "$PROBE" gpu >/dev/null 2>&1; then
    echo "== install: not needed, JAX already sees a GPU"
    printf 'install\tnot needed\t-\t0\t-\t-\n' >>"$OUT/stages.tsv"
  elif ((!INSTALL)); then
    fail "JAX sees no GPU and --no-install was given"
  else
    # jax 0.10 offers the extras cuda12 and cuda13 (and *-local); CUDA 13 needs driver >= 580.
    EXTRA=${JAX_CUDA_EXTRA:-}
    if [[ -z $EXTRA ]]; then
      [[ -n $GPU ]] || fail "nvidia-smi finds no NVIDIA GPU here: use --tiny on a CPU, or set" \
        "JAX_CUDA_EXTRA to install CUDA JAX anyway"
      DRIVER=$(cut -d, -f2 <<<"$GPU" | tr -d ' ')
      EXTRA=cuda12
      if [[ ${DRIVER%%.*} =~ ^[0-9]+$ ]] && ((${DRIVER%%.*} >= 580)); then EXTRA=cuda13; fi
    fi
    JAX_VERSION=$("$PY" -c 'import jax; print(jax.__version__)')
    META+=(--meta "jax_cuda_extra=$EXTRA")
    run_stage install "${CAP[install]}" \
      "$PY" -m pip install --retries 1 --timeout 20 "jax[$EXTRA]==$JAX_VERSION" ||
      fail "could not install jax[$EXTRA]==$JAX_VERSION (network? see $OUT/logs/install.log);" \
        "install CUDA JAX by hand, then rerun"
  fi
  run_stage probe "$(limit "${CAP[probe]}" 0)" "$PY" -c "$PROBE" gpu "$OUT/probe.json" ||
    fail "JAX sees no GPU (see $OUT/logs/probe.log)"
fi

rc=0
wait "$SLIDES_PID" || rc=$?
SLIDES_PID=""
finish slides "$rc" "$SLIDES_T0" 120 || FAILED=1  # else the input-included run makes them

for s in "${SETUPS[@]}"; do
  lim=$(limit "${CAP[$s]}" "${RESERVE[$s]}")
  if ((lim < MIN_STAGE)); then
    echo "== $s: skipped, ${lim} s left before the deadline"
    printf '%s\tskipped\t-\t0\t-\t-\n' "$s" >>"$OUT/stages.tsv"
    FAILED=1
    continue
  fi
  soft=$((lim - STARTUP))
  if [[ -n ${FIRST_ONLY[$s]:-} ]]; then soft=0; fi
  args=(--setups "$s" "${STEPS[@]}" --budget-s $((soft > 0 ? soft : 0)) --out "$OUT/$s.json")
  if [[ $s == dino_vits16 ]]; then
    args+=(--input "$s" "${INPUT[@]}" --set "data.synthetic_dir=$SLIDES")
  else
    args+=(--input none)
  fi
  # shellcheck disable=SC2086  # COMPARE holds several words
  run_stage "$s" "$lim" "$PY" benchmarks/train_step.py "${args[@]}" ${COMPARE[$s]} || FAILED=1
done

report
echo "wrote $OUT/gpu_check.json and $OUT/gpu_check.md in $SECONDS s"
exit "$FAILED"
