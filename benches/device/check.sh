#!/usr/bin/env bash
# The one device call (about 6 minutes on an H100): the GPU test suite under every conv tile
# policy, parity of the GPU against the CPU backend at 224 px (LaFAM, LRP, K = 8 concept
# maps), then lafam-gpu's benches (incl. the conv-tile GEMM shapes and the cost of K = 8
# concept maps against one LaFAM-LRP) and the PyTorch/zennit baseline side by side on the
# same card. Results go to $OUT (JSON lines + logs). Prepared by
# benches/device/prepare.sh; run as `bash benches/device/check.sh` with .gl and .dev copied along.
# QUICK=1 is a dry run of the script itself on a slow adapter (lavapipe: tiny sizes, no
# loader unpacking, the local ICD).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export XDG_RUNTIME_DIR=/tmp LAFAM_GPU_CACHE=/tmp/lafam-cache
if [ "${QUICK:-0}" = 1 ]; then
  SIZE=32; BATCHES=1,2; BIG=2; ITERS=2; MASKS=20; TILE_POLICIES=auto; SUITE="adapters gpu_limits"
else
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
  SIZE=224; BATCHES=1,64,128; BIG=64; ITERS=10; MASKS=1000; TILE_POLICIES="auto 64 128"; SUITE=
fi
# prepare.sh packs the binaries stripped and xz-compressed.
for f in .dev/lafam-gpu.xz .dev/conv_tiles.xz .dev/tests/*.xz; do [ -e "$f" ] && xz -d -f "$f" && chmod +x "${f%.xz}"; done
BIN=${BIN:-.dev/lafam-gpu}
log() { echo "== $*" | tee -a "$OUT/log.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/card.txt" 2>&1
$BIN info --backend gpu 2>&1 | tee "$OUT/info.txt"

log "GPU test suite under every tile policy (test binaries built by prepare.sh)"
# The tests read their fixtures through the path they were built in: link it to this copy.
want=$(cat .dev/manifest_dir 2>/dev/null || true)
if [ -n "$want" ] && [ "$want" != "$PWD" ] && [ ! -e "$want" ]; then mkdir -p "$(dirname "$want")"; ln -sfn "$PWD" "$want"; fi
for t in $TILE_POLICIES; do
  for exe in .dev/tests/*; do
    [ -x "$exe" ] || continue
    name=$(basename "$exe")
    [ -z "$SUITE" ] || [[ " $SUITE " == *" $name "* ]] || continue
    if LAFAM_GPU_TILES=$t timeout 90 "$exe" --test-threads 8 >"$OUT/test_${name}_$t.txt" 2>&1; then r=ok; else r=FAILED; fi
    echo "tiles $t $name: $r $(grep -E '^test result' "$OUT/test_${name}_$t.txt" | tail -1)" | tee -a "$OUT/tests.txt"
  done
done

log "start-up: first and second run on one image (pipeline cache written, then loaded)"
W=tests/fixtures/reference/r50_tv.safetensors
for i in 1 2; do
  $BIN run --weights $W --backend gpu --method lafam,lrp --size $SIZE --timings --out /tmp/s$i assets/astronaut.jpg 2>&1 | grep timings | tee -a "$OUT/startup.txt"
done

log "parity: GPU vs CPU maps at 224 px (bundled images, batch 4; LaFAM, LRP, K = 8 concepts at layer3), tiles auto, 64 and 128"
PM="--method lafam,lrp,concepts --concept-layer layer3"
$BIN run --weights $W --backend cpu $PM --size $SIZE --batch 4 --out /tmp/cpu assets >/dev/null 2>&1
for t in auto 64 128; do
  LAFAM_GPU_TILES=$t $BIN run --weights $W --backend gpu $PM --size $SIZE --batch 4 --out /tmp/gpu$t assets >/dev/null 2>&1
  python3 benches/device/compare_npy.py /tmp/cpu /tmp/gpu$t 2>&1 | tee -a "$OUT/parity_tiles$t.txt"
done
log "parity at 64 px, batch 1 (layer3/4 on the 16x64 thin tiles)"
$BIN run --weights $W --backend cpu --method lafam,lrp --size 64 --out /tmp/cpu64 assets >/dev/null 2>&1
$BIN run --weights $W --backend gpu --method lafam,lrp --size 64 --out /tmp/gpu64 assets >/dev/null 2>&1
python3 benches/device/compare_npy.py /tmp/cpu64 /tmp/gpu64 2>&1 | tee -a "$OUT/parity_64px.txt"

log "lafam-gpu benches (random ResNet-50, 224 px, layer4)"
for m in lafam lrp; do
  for t in 64 auto; do
    LAFAM_GPU_TILES=$t timeout 90 $BIN bench --arch resnet50 --backend gpu --method $m --size $SIZE --batch $BATCHES --iters $ITERS --json --profile \
      >>"$OUT/bench_tiles$t.jsonl" 2>>"$OUT/bench.err"
  done
done
log "LRP/LaFAM cost ratio, then K = 8 concept maps against one LaFAM-LRP (3 interleaved pairs each)"
for b in 1 $BIG; do
  BIN=$BIN timeout 90 bash benches/ratio.sh gpu $SIZE $b 3 $ITERS 2>&1 | tee -a "$OUT/ratio.txt"
  A=lrp B=concepts BIN=$BIN timeout 90 bash benches/ratio.sh gpu $SIZE $b 3 $ITERS 2>&1 | tee -a "$OUT/ratio_concepts.txt"
done
log "conv-tile GEMM shapes (forward and transposed, 64x64 / 128x128 / auto)"
[ "${QUICK:-0}" = 1 ] || [ ! -x .dev/conv_tiles ] || timeout 90 .dev/conv_tiles 2>&1 | tee "$OUT/conv_tiles.txt"
timeout 60 $BIN bench --arch resnet50 --backend gpu --method gradcam --size $SIZE --batch 1,$BIG --iters 5 --json --no-peak >>"$OUT/bench_tilesauto.jsonl" 2>>"$OUT/bench.err"
timeout 60 $BIN bench --arch resnet50 --backend gpu --method relax --masks $MASKS --mask-batch 250 --size $SIZE --batch 1 --iters 2 --json --no-peak >>"$OUT/bench_tilesauto.jsonl" 2>>"$OUT/bench.err"

log "PyTorch / zennit baseline on the same card"
[ "${QUICK:-0}" = 1 ] && { log "done (quick: no baseline)"; exit 0; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .dev/zennit-*.whl && export PYTHONPATH=/tmp/site
# Strict f32 (as lafam-gpu's kernels), then PyTorch's TF32 convs for the forward-only methods.
timeout 150 python3 benches/torch_baseline.py --methods forward,lafam,lrp --size $SIZE --batch 1,$BIG --iters $ITERS --tf32 off 2>&1 | tee "$OUT/torch_baseline.jsonl"
timeout 60 python3 benches/torch_baseline.py --methods forward,lafam --size $SIZE --batch $BIG --iters $ITERS --tf32 on 2>&1 | tee -a "$OUT/torch_baseline.jsonl"
log done
