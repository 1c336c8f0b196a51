#!/usr/bin/env bash
# One prepared check of a GPU machine, in under 10 minutes, from the repository root after
# the README's install command:
#
#     bash scripts/gpu_check.sh            # DEVICE=cpu QUICK=1 rehearses it on a CPU
#
# 1. the CUDA tests (tests/test_cuda.py, and the Jukebox tests on cuda);
# 2. the default bundle's real-time factor on one GPU (lass-separate on 3 s of
#    examples/mix.wav, the bundle's settings and 10 beams; goal <= 0.05);
# 3. training steps per second of the default prior's architecture and of the codec;
# 4. the PnF benchmark on the GPU: LASS against Langevin with the PnF-size WaveNet at equal
#    batch, on a fraction of the schedule (the script prints what is measured and what is
#    computed from it).
set -euo pipefail
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
WORK=${WORK:-$(mktemp -d)}
cd "$(dirname "$0")/.."
say() { printf '\n== %s\n' "$*"; }

python3 - "$DEVICE" <<'PY'
import sys, torch
device = sys.argv[1]
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (torch " + torch.__version__ + ")")
    print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__,
          "| CUDA", torch.version.cuda)
else:
    print("device: cpu (rehearsal) | torch", torch.__version__)
PY

say "CUDA tests"
if [ "$DEVICE" = cuda ]; then
    python3 -m pytest -q tests/test_cuda.py tests/test_jukebox.py -k "cuda" -p no:cacheprovider
else
    echo "(skipped on $DEVICE)"
fi

say "real-time factor of the default bundle, 3 s of examples/mix.wav, $DEVICE"
ROUNDS=$([ "$QUICK" = 1 ] && echo 1 || echo 3)
python3 scripts/benchmark_cli.py --rounds "$ROUNDS" -- --device "$DEVICE" | tail -4
python3 scripts/benchmark_cli.py --rounds "$ROUNDS" -- --device "$DEVICE" --sampler beam \
    --beams 10 --shifts 1 --combine best | tail -4

say "training steps per second ($DEVICE)"
HOURS=$([ "$QUICK" = 1 ] && echo 0.05 || echo 0.3)
STEPS=$([ "$QUICK" = 1 ] && echo 5 || echo 100)
lass-make-dataset synth-drums-bass --hours "$HOURS" --seed 0 --out "$WORK/data" >/dev/null 2>&1
timed() {  # timed NAME STEPS command...: steps per second of a training command
    local name=$1 steps=$2; shift 2
    local t0 t1
    t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N)
    python3 -c "print(f'$name: {$steps / ($t1 - $t0):.2f} steps/s over {$t1 - $t0:.1f} s (start-up included)')"
}
timed "prior (3 x 256, context 512, batch 16)" "$STEPS" lass-train-prior --codec \
    lass/bundles/default/codec --data "$WORK/data" --stem drums bass --conditional \
    --out "$WORK/prior" --steps "$STEPS" --device "$DEVICE"
timed "codec (hop 64, 1024 codes, batch 16)" "$STEPS" lass-train-vqvae --data "$WORK/data" \
    --out "$WORK/codec" --steps "$STEPS" --device "$DEVICE"

say "PnF benchmark ($DEVICE)"
LEVEL_STEPS=$([ "$QUICK" = 1 ] && echo 1 || echo 16)
SECONDS_IN=$([ "$QUICK" = 1 ] && echo 0.1 || echo 3)
python3 scripts/benchmark_pnf.py --data "$WORK/data" --mixtures 1 --seconds "$SECONDS_IN" \
    --steps-per-level "$LEVEL_STEPS" --device "$DEVICE" | tail -12
echo
echo "gpu_check: done; work files in $WORK"
