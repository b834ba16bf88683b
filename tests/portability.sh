#!/usr/bin/env bash
# The GPU tests again, on what "any GPU" has to survive (after `cargo test --release`, which
# runs everything on the default adapter, lavapipe where there is no GPU):
#   1. a second, independent Vulkan implementation: Google's SwiftShader, from Debian's
#      chromium-common package (fetched with apt-get download, unpacked under target/);
#   2. the Khronos validation layer on every GPU test (WGPU_VALIDATION=1; any layer error
#      fails the test that made it, a missing layer fails every GPU test);
#   3. WebGPU's default limits (LAFAM_GPU_LIMITS=webgpu: 16 KiB workgroup memory, 256
#      invocations, 8 storage buffers, 128 MiB bindings), the floor Apple, Intel and mobile
#      adapters meet.
# Needs: mesa-vulkan-drivers libvulkan1 vulkan-validationlayers (apt), network to Debian's
# mirror for chromium-common the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Vulkan device-select layer prints XDG_RUNTIME_DIR errors on headless machines.
export NODEVICE_SELECT=1

# Every test file that opens a GPU.
GPU_TESTS=(--test gpu_ops --test gpu_lrp_ops --test gpu_limits --test baselines_gpu_ops
           --test backend_parity --test reference --test lrp_reference --test baselines_reference
           --test adapters --test cli)

swiftshader_icd() {
    local dir=target/swiftshader
    local icd=$dir/usr/lib/chromium/vk_swiftshader_icd.json
    if [ ! -f "$icd" ]; then
        mkdir -p "$dir"
        (cd "$dir" && apt-get download -q chromium-common >/dev/null && dpkg -x chromium-common_*.deb . && rm -f chromium-common_*.deb)
    fi
    echo "$PWD/$icd"
}

step() { echo; echo "== $* =="; }

step "SwiftShader (second Vulkan implementation): every method vs the CPU, kernel parity"
ICD=$(swiftshader_icd)
# SwiftShader is ~5x slower than lavapipe: the end-to-end parity on the sample images, the
# per-kernel parity of the forward and LRP ops, and the zennit and Grad-CAM references.
VK_DRIVER_FILES=$ICD LAFAM_TEST_ADAPTER=SwiftShader \
    cargo test --release --test backend_parity --test gpu_ops --test gpu_lrp_ops \
    --test lrp_reference --test baselines_gpu_ops

step "Khronos validation layer, every GPU test (lavapipe)"
WGPU_VALIDATION=1 LAFAM_TEST_ADAPTER=llvmpipe cargo test --release "${GPU_TESTS[@]}"

step "WebGPU default limits, every GPU test (lavapipe)"
LAFAM_GPU_LIMITS=webgpu LAFAM_TEST_ADAPTER=llvmpipe cargo test --release "${GPU_TESTS[@]}"
