#!/usr/bin/env bash
# Bundles the C++ dependencies that come from Debian packages here (headers, static libraries and
# CMake package files) into .gpu-deps/, for a GPU machine that has PyTorch and CMake but none of
# these packages and no network. Used only to run the gpu tier and benchmarks on a lent GPU.
# GPU_DEPS_DIR overrides the destination (default .gpu-deps).
set -euo pipefail
cd "$(dirname "$0")/../.."
D=${GPU_DEPS_DIR:-.gpu-deps}
rm -rf "$D"
mkdir -p "$D/include" "$D/lib/x86_64-linux-gnu/cmake" "$D/share/cmake"
# gloo: headers only, for c10d's ProcessGroupGloo (libtorch carries the compiled Gloo).
for h in yaml-cpp nlohmann CLI gtest gmock benchmark zlib.h gloo; do cp -rL "/usr/include/$h" "$D/include/"; done
cp -L /usr/include/x86_64-linux-gnu/zconf.h "$D/include/" 2>/dev/null || cp -L /usr/include/zconf.h "$D/include/"
L=/usr/lib/x86_64-linux-gnu
cp -L $L/libgtest.a $L/libgtest_main.a $L/libgmock.a $L/libgmock_main.a $L/libz.a "$D/lib/x86_64-linux-gnu/"
cp -a $L/libbenchmark.so* $L/libbenchmark_main.a $L/libyaml-cpp.so* "$D/lib/x86_64-linux-gnu/"
cp -r $L/cmake/GTest $L/cmake/benchmark $L/cmake/yaml-cpp "$D/lib/x86_64-linux-gnu/cmake/"
cp -r /usr/share/cmake/nlohmann_json "$D/share/cmake/"
# Audio I/O and tokenizer (shared libraries): headers, each library with its versioned names, the
# libraries they load themselves (libsndfile's codecs, soxr's libgomp: all that ldd lists but glibc,
# libstdc++ and libgcc_s), and pkg-config files relative to their own folder (${pcfiledir}), so that
# CMake finds them wherever the bundle lands; CMakeLists.txt adds the folder to the executables' rpath.
for h in sndfile.h sndfile.hh soxr.h sentencepiece_processor.h sentencepiece_trainer.h; do cp -L "/usr/include/$h" "$D/include/"; done
cp -a $L/libsndfile.so $L/libsndfile.so.* $L/libsoxr.so $L/libsoxr.so.* $L/libsentencepiece.so $L/libsentencepiece.so.* \
  $L/libsentencepiece_train.so $L/libsentencepiece_train.so.* "$D/lib/x86_64-linux-gnu/"
# Charts: PLplot, its cairo PNG device (a module it loads at run time from PLPLOT_DRV_DIR), the data it
# reads (PLPLOT_LIB), and one font with a fontconfig file naming its folder (FONTCONFIG_FILE);
# scripts/gpu/env.sh sets the three.
PLDRV=$(ls -d $L/plplot*/drivers | head -1)
PLDATA=$(ls -d /usr/share/plplot5* | head -1)
cp -rL /usr/include/plplot "$D/include/"
cp -a $L/libplplot.so $L/libplplot.so.* "$D/lib/x86_64-linux-gnu/"
mkdir -p "$D/lib/x86_64-linux-gnu/plplot/drivers" "$D/share/plplot" "$D/share/fonts" "$D/etc/fonts"
cp -L "$PLDRV"/cairo.* "$D/lib/x86_64-linux-gnu/plplot/drivers/"
cp -rL "$PLDATA"/. "$D/share/plplot/"
cp -L /usr/share/fonts/truetype/dejavu/DejaVuSans*.ttf "$D/share/fonts/"
cat >"$D/etc/fonts/fonts.conf" <<'FONTS'
<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">
<fontconfig>
  <dir prefix="relative">../../share/fonts</dir>
  <cachedir>/tmp/moshi-ttt-fontconfig</cachedir>
</fontconfig>
FONTS
for dep in $(ldd $L/libsndfile.so $L/libsoxr.so $L/libsentencepiece.so $L/libsentencepiece_train.so $L/libplplot.so \
               "$PLDRV/cairo.so" | awk '$3 ~ /^\// {print $3}' | sort -u); do
  case "$(basename "$dep")" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
    libsndfile*|libsoxr*|libsentencepiece*|libplplot.so*) ;;
    *) cp -L "$dep" "$D/lib/x86_64-linux-gnu/" ;;
  esac
done
# Live conversations (src/serve): Opus and Ogg (shared libraries), OpenSSL's headers and link names,
# and the Boost headers that the server's includes reach (found by the preprocessor: ~7 MB of the
# 180 MB of Boost), kept at their paths.
cp -rL /usr/include/opus /usr/include/ogg /usr/include/openssl "$D/include/"
cp -L /usr/include/x86_64-linux-gnu/openssl/*.h "$D/include/openssl/" 2>/dev/null || true
cp -a $L/libopus.so $L/libopus.so.* $L/libogg.so $L/libogg.so.* $L/libssl.so $L/libssl.so.* $L/libcrypto.so \
  $L/libcrypto.so.* "$D/lib/x86_64-linux-gnu/"
grep -ho '#include <boost/[^>]*>' src/serve/*.cpp src/serve/*.h | sort -u \
  | g++ -std=c++20 -x c++ -M - 2>/dev/null | tr ' \\' '\n\n' | grep '^/usr/include/boost/' | sort -u \
  | while read -r f; do mkdir -p "$D/include/$(dirname "${f#/usr/include/}")"; cp -L "$f" "$D/include/${f#/usr/include/}"; done
P="$D/lib/x86_64-linux-gnu/pkgconfig"
mkdir -p "$P"
for m in "sndfile -lsndfile" "soxr -lsoxr" "sentencepiece -lsentencepiece -lsentencepiece_train" "plplot -lplplot" \
         "opus -lopus" "ogg -logg"; do
  set -- $m; name=$1; shift
  cflags="-I\${includedir}"; [ "$name" = plplot ] && cflags="-I\${includedir}/plplot"
  [ "$name" = opus ] && cflags="-I\${includedir}/opus"
  cat >"$P/$name.pc" <<EOF
prefix=\${pcfiledir}/../../..
libdir=\${prefix}/lib/x86_64-linux-gnu
includedir=\${prefix}/include

Name: $name
Description: $name, bundled by scripts/gpu/bundle_deps.sh
Version: $(pkg-config --modversion "$name")
Libs: -L\${libdir} $*
Cflags: $cflags
EOF
done
du -sh "$D"
