#!/usr/bin/env bash
# Train the embedded model chain on one GPU: VAE (configs/gpu/vae.yaml) -> UNet + text encoder
# (configs/gpu/ldm.yaml) -> LCM student (configs/gpu/lcm.yaml), measure adherence with
# bench/steps.py (eval), train the seed codec
# (codec, extra args in $CODEC_ARGS) and the merge-aware decoder (merge) on the pipeline in checkpoints/tiny. Exports land in runs/gpu/{vae,ldm,lcm}/export; with $OUT set (the lent GPU
# machine of this workplace) each is also tarred there as soon as it exists.
#   STAGES="vae ldm lcm eval" bash scripts/gpu_train.sh [extra LightningCLI args for every stage]
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 SPLITLDM_THREADS=${SPLITLDM_THREADS:-4}
PY=${PY:-python3}
OUT=${OUT:-}
STAGES=${STAGES:-"vae ldm lcm eval"}
save() {  # save NAME DIR: tar an export into $OUT
  if [ -n "$OUT" ] && [ -d "$2" ]; then tar -C "$(dirname "$2")" -cf "$OUT/$1.tar" "$(basename "$2")" && echo "saved $1"; fi
}
logs() { if [ -n "$OUT" ]; then tar -cf "$OUT/logs.tar" --exclude='*.ckpt' --exclude='export' runs/gpu 2>/dev/null; fi; true; }
for stage in $STAGES; do
  t0=$(date +%s)
  case $stage in
    vae) $PY -m splitldm.recipes.vae fit --config configs/gpu/vae.yaml "$@" && save vae runs/gpu/vae/export ;;
    ldm) $PY -m splitldm.recipes.ldm fit --config configs/gpu/ldm.yaml "$@" && save tiny runs/gpu/ldm/export ;;
    lcm) $PY -m splitldm.recipes.lcm fit --config configs/gpu/lcm.yaml "$@" && save tiny-lcm runs/gpu/lcm/export ;;
    codec) $PY -m splitldm.recipes.codec fit --config configs/gpu/codec.yaml ${CODEC_ARGS:-} "$@" && save seed-codec runs/gpu/codec/export ;;
    merge) $PY -m splitldm.recipes.merge_decoder fit --config configs/gpu/merge_decoder.yaml "$@" && save merge-decoder runs/gpu/merge_decoder/export ;;
    eval) $PY bench/steps.py --device ${EVAL_DEVICE:-cuda} --num ${EVAL_NUM:-256} --num-real 512 \
            --teacher runs/gpu/ldm/export --student runs/gpu/lcm/export --teacher-steps 1,2,4,8,25 \
            --student-steps 1,2,4,8 --threads 4 | tee runs/gpu/steps.txt ;;
  esac
  rc=${PIPESTATUS[0]}
  echo "stage $stage: rc $rc, $(( $(date +%s) - t0 )) s"
  logs
  [ $rc -eq 0 ] || exit $rc
done
