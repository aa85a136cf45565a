#!/usr/bin/env bash
# Peak resident memory (`/usr/bin/time -v`, "Maximum resident set size") of export and of every
# calibrated compile target for ViT-B/16 at 384 px (seeded random init: memory does not depend on
# the weights' values), for each calibration-set size N (default 500; the digit images, resized to
# 384 by the model's preprocessing). Each run starts with an empty tensor cache (decoding included);
# the load average (`uptime`) is printed with every number: this machine is shared. The tensorrt
# targets exit 3 after writing their plan where TensorRT is not installed: measured all the same.
# Runs `python -m vitedge` from the checkout this script is in (PYTHONPATH=. there works too).
# TIME names GNU time where it is not /usr/bin/time (e.g. unpacked from the Debian `time` package).
#   [TARGETS="onnxruntime:int8 ..."] scripts/memory_vitb384.sh ["N ..."] [WORKDIR]
set -euo pipefail
SIZES=${1:-500}
WORK=$(realpath -m "${2:-$(mktemp -d -t vitedge-mem-XXXX)}")
mkdir -p "$WORK"
cd "$(dirname "$0")/.."
CALIB=$(realpath "${CALIB:-calibration/digits/calib}")
measure() {  # label, N, command...
  local label=$1 n=$2; shift 2
  local cache; cache=$(mktemp -d -t vitedge-mem-cache-XXXX)
  VITEDGE_CACHE_DIR=$cache "${TIME:-/usr/bin/time}" -v "$@" >"$WORK/$label-$n.log" 2>&1 || true
  rm -rf "$cache"
  local rss_kb wall status
  rss_kb=$(grep "Maximum resident set size" "$WORK/$label-$n.log" | awk '{print $NF}')
  wall=$(grep "Elapsed (wall clock)" "$WORK/$label-$n.log" | awk '{print $NF}')
  status=$(grep "Exit status" "$WORK/$label-$n.log" | awk '{print $NF}')
  printf "| %s | %s | %.2f GB | %s | %s | %s |\n" "$label" "$n" "$(awk -v kb="$rss_kb" 'BEGIN {print kb / 1048576}')" "$wall" \
    "$status" "$(uptime | sed 's/.*load average: //')"
}
echo "vitedge $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo), load average before: $(uptime | sed 's/.*load average: //')"
echo "| step | calibration images | peak RSS | wall | exit | load average (1, 5, 15 min) after |"
echo "|---|---|---|---|---|---|"
[ -d "$WORK/export" ] || measure export - python -m vitedge --quiet export timm:vit_base_patch16_384 --random-init 0 \
  -o "$WORK/export"
for tp in ${TARGETS:-onnxruntime:int8 openvino:int8 tensorrt:fp16 tensorrt:int8}; do
  target=${tp%:*}; precision=${tp#*:}
  for n in $SIZES; do
    rm -rf "$WORK/$target-$precision"
    measure "$target-$precision" "$n" python -m vitedge --quiet compile "$WORK/export" --target "$target" \
      --precision "$precision" --calib "$CALIB" --calib-size "$n" -o "$WORK/$target-$precision"
  done
  rm -rf "$WORK/$target-$precision"
done
