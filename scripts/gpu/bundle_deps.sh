#!/usr/bin/env bash
# Bundles the C++ dependencies that come from Debian packages here (headers, static libraries and
# CMake package files) into .gpu-deps/, for a GPU machine that has PyTorch and CMake but none of
# these packages and no network. Used only to run the gpu tier and benchmarks on a lent GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=.gpu-deps
rm -rf "$D"
mkdir -p "$D/include" "$D/lib/x86_64-linux-gnu/cmake" "$D/share/cmake"
for h in yaml-cpp nlohmann CLI gtest gmock benchmark png.h pngconf.h pnglibconf.h zlib.h; do cp -rL "/usr/include/$h" "$D/include/"; done
cp -L /usr/include/x86_64-linux-gnu/zconf.h "$D/include/" 2>/dev/null || cp -L /usr/include/zconf.h "$D/include/"
L=/usr/lib/x86_64-linux-gnu
cp -L $L/libgtest.a $L/libgtest_main.a $L/libgmock.a $L/libgmock_main.a $L/libpng.a $L/libz.a "$D/lib/x86_64-linux-gnu/"
cp -a $L/libbenchmark.so* $L/libbenchmark_main.a $L/libyaml-cpp.so* "$D/lib/x86_64-linux-gnu/"
cp -r $L/cmake/GTest $L/cmake/benchmark $L/cmake/yaml-cpp "$D/lib/x86_64-linux-gnu/cmake/"
cp -r /usr/share/cmake/nlohmann_json "$D/share/cmake/"
du -sh "$D"
