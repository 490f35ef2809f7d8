#!/usr/bin/env bash
# Installs what moshi-ttt needs, idempotently, then configures and builds it.
#   scripts/setup.sh            # packages + libtorch + build (Release)
# Environment:
#   MOSHI_TTT_TORCH_VERSION   pinned PyTorch wheel (default below)
#   MOSHI_TTT_CACHE           per-user cache (default ~/.cache/moshi-ttt)
#   MOSHI_TTT_TORCH_PREFIX    use this CMake prefix for Torch instead (e.g. a GPU machine's PyTorch)
#   BUILD_DIR                 build folder (default build)
#   MOSHI_TTT_EXTRA_PKGS      more Debian packages (scripts/fuzz.sh: clang)
#   MOSHI_TTT_CMAKE_ARGS      more arguments for the first configure of BUILD_DIR (e.g. -DMOSHI_TTT_SANITIZE=ON)
#   MOSHI_TTT_BUILD_TARGETS   build only these targets (default: all)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
TORCH_VERSION=${MOSHI_TTT_TORCH_VERSION:-2.15.0}
CACHE=${MOSHI_TTT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moshi-ttt}
BUILD_DIR=${BUILD_DIR:-build}

log() { printf '[setup] %s\n' "$*" >&2; }

# 1. Debian packages the code uses.
pkgs=(cmake g++ make python3 python3-venv ccache espeak-ng googletest libgtest-dev libbenchmark-dev
      libcli11-dev nlohmann-json3-dev libyaml-cpp-dev zlib1g-dev pkg-config
      libplplot-dev plplot-driver-cairo fonts-dejavu-core libgloo-dev
      libsndfile1-dev libsoxr-dev libsentencepiece-dev
      libopus-dev libogg-dev libboost-dev libssl-dev ${MOSHI_TTT_EXTRA_PKGS:-})
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  # Recommends are left out: libplplot-dev's alone would bring Lua, OCaml and D bindings we never use.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. libtorch: the machine's own PyTorch with CUDA if there is one, else the pinned wheel in a cached venv.
find_prefix() { "$1" -c 'import torch,sys; sys.stdout.write(torch.utils.cmake_prefix_path)' 2>/dev/null; }
TORCH_PREFIX=${MOSHI_TTT_TORCH_PREFIX:-}
if [ -z "$TORCH_PREFIX" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  for py in python3 python; do
    if command -v $py >/dev/null && $py -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      TORCH_PREFIX=$(find_prefix $py); log "GPU machine: using its PyTorch at $TORCH_PREFIX"; break
    fi
  done
fi
if [ -z "$TORCH_PREFIX" ]; then
  VENV="$CACHE/torch-$TORCH_VERSION/venv"
  if ! "$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION')" 2>/dev/null; then
    log "installing torch==$TORCH_VERSION into $VENV (once per machine; ~5 GB, a few minutes)"
    mkdir -p "$CACHE/torch-$TORCH_VERSION"
    rm -rf "$VENV.tmp"
    python3 -m venv "$VENV.tmp"
    "$VENV.tmp/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION" numpy
    rm -rf "$VENV"; mv "$VENV.tmp" "$VENV"
  fi
  # Scripts pip wrote (torchrun among them: the data-parallel launcher) and the activate scripts name
  # the folder the venv was built in; point them at its final place.
  for f in "$VENV"/bin/*; do
    if [ -f "$f" ] && [ ! -L "$f" ] && grep -qsF "$VENV.tmp" "$f"; then
      sed -i "s|$VENV.tmp|$VENV|g" "$f"
    fi
  done
  TORCH_PREFIX=$(find_prefix "$VENV/bin/python")
fi
[ -n "$TORCH_PREFIX" ] || { log "could not find libtorch"; exit 1; }

# 3. Configure and build.
export CCACHE_DIR="$CACHE/ccache"
# Paths inside the checkout hash relative to it, so fresh clones (CI) reuse the cache.
export CCACHE_BASEDIR="$here"
# Debug info (the sanitizer build's -g1) would otherwise key objects by the build folder's path.
export CCACHE_NOHASHDIR=1
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ] || ! grep -q "MOSHI_TTT_TORCH_PREFIX:.*=$TORCH_PREFIX\$" "$BUILD_DIR/CMakeCache.txt"; then
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-Release} \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DMOSHI_TTT_TORCH_PREFIX="$TORCH_PREFIX" "${launcher[@]}" \
    ${MOSHI_TTT_CMAKE_ARGS:-} >&2
fi
targets=()
for t in ${MOSHI_TTT_BUILD_TARGETS:-}; do targets+=(--target "$t"); done
cmake --build "$BUILD_DIR" -j"$(nproc)" "${targets[@]}" >&2
log "built $BUILD_DIR${MOSHI_TTT_BUILD_TARGETS:+ ($MOSHI_TTT_BUILD_TARGETS)}"
