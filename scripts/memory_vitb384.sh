#!/usr/bin/env bash
# Peak resident memory (`/usr/bin/time -v`, "Maximum resident set size") of export and of every
# calibrated compile target for ViT-B/16 at 384 px (seeded random init: memory does not depend on
# the weights' values), with N calibration images (default 500; the digit images, resized).
#   [TARGETS="onnxruntime:int8 ..."] scripts/memory_vitb384.sh [N] [WORKDIR]
set -euo pipefail
N=${1:-500}
WORK=${2:-$(mktemp -d -t vitedge-mem-XXXX)}
CALIB=${CALIB:-calibration/digits/calib}
measure() {  # label, command...
  local label=$1; shift
  /usr/bin/time -v "$@" >"$WORK/$label.log" 2>&1 || true
  local rss_kb wall
  rss_kb=$(grep "Maximum resident set size" "$WORK/$label.log" | awk '{print $NF}')
  wall=$(grep "Elapsed (wall clock)" "$WORK/$label.log" | awk '{print $NF}')
  printf "| %s | %s | %.2f GB | %s |\n" "$label" "$N" "$(echo "$rss_kb / 1048576" | bc -l)" "$wall"
}
echo "| step | calibration images | peak RSS | wall |"
echo "|---|---|---|---|"
[ -d "$WORK/export" ] || measure export python -m vitedge --quiet export timm:vit_base_patch16_384 --random-init 0 -o "$WORK/export"
for tp in ${TARGETS:-openvino:int8 onnxruntime:int8 tensorrt:fp16 tensorrt:int8}; do
  target=${tp%:*}; precision=${tp#*:}
  rm -rf "$WORK/$target-$precision"
  measure "$target-$precision" python -m vitedge --quiet compile "$WORK/export" --target "$target" \
    --precision "$precision" --calib "$CALIB" --calib-size "$N" -o "$WORK/$target-$precision"
done
