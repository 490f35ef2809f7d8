# Sourced by the GPU scripts: where the bundled PLplot (scripts/gpu/bundle_deps.sh) finds its cairo
# device, its data and a font on a machine without the Debian packages. Harmless where they exist.
_deps="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.gpu-deps"
if [ -d "$_deps/lib/x86_64-linux-gnu/plplot/drivers" ]; then
  export PLPLOT_DRV_DIR="$_deps/lib/x86_64-linux-gnu/plplot/drivers"
  export PLPLOT_LIB="$_deps/share/plplot"
  export FONTCONFIG_FILE="$_deps/etc/fonts/fonts.conf"
fi
unset _deps
