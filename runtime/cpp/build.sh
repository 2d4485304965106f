#!/usr/bin/env bash
# Configure, build and test the C++ host (runtime/cpp): latentfuse_rt, latentfuse-host and the ctest suite.
#
#   runtime/cpp/build.sh              # build into runtime/cpp/build and run ctest
#   BUILD_DIR=/tmp/b runtime/cpp/build.sh --no-test
#
# Needs cmake, g++ and Debian's libstb-dev libsentencepiece-dev nlohmann-json3-dev libssl-dev. The
# AOTInductor backend is built when Python's torch is importable (its wheel ships libtorch's CMake
# config); the TensorRT backend when CMake finds TensorRT and the CUDA toolkit (TENSORRT_ROOT=...).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build="${BUILD_DIR:-$here/build}"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3 || true)"

prefix=()
if [ -n "$python" ] && torch_cmake="$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null)"; then
  prefix=(-DCMAKE_PREFIX_PATH="$torch_cmake")
else
  echo "build.sh: torch not importable; building without the AOTInductor backend" >&2
fi
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release "${prefix[@]}"
cmake --build "$build" --parallel "$jobs"
if [ "${1:-}" != "--no-test" ]; then
  ctest --test-dir "$build" --output-on-failure
fi
echo "build.sh: latentfuse-host at $build/latentfuse-host"
