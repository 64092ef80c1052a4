#!/usr/bin/env bash
# Build pycaffe from the brocolli-caffe sdist (BVLC Caffe source) with the patches in
# scripts/caffe-patches/, cache the finished python/caffe folder, and install it into
# the given interpreter's site-packages.
#
#   scripts/build_pycaffe.sh PYTHON
#
# Environment:
#   OLMP_CACHE_DIR        cache root (default ~/.cache/olmp)
#   OLMP_CAFFE_VARIANT    cpu (default) | cuda   -- cuda: CPU_ONLY=OFF, USE_CUDNN=OFF; its cache
#                         entry is separate. NOT WORKING YET: patch 0001 makes the fork's hard-coded
#                         CPU_ONLY conditional, but nothing includes cmake/Cuda.cmake (CUDA is never
#                         found or linked) and the pycaffe target compiles none of the .cu files; the
#                         cuda variant therefore stops right after patching with that message instead
#                         of failing deep in the compile (see docker/README.md, "GPU state").
#   OLMP_BUILD_JOBS       parallel compile jobs (default: nproc)
set -euo pipefail

PY=${1:?usage: build_pycaffe.sh PYTHON}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PATCH_DIR="$HERE/caffe-patches"
CACHE=${OLMP_CACHE_DIR:-$HOME/.cache/olmp}
VARIANT=${OLMP_CAFFE_VARIANT:-cpu}
JOBS=${OLMP_BUILD_JOBS:-$(nproc)}
SDIST_NAME=brocolli-caffe
SDIST_VERSION=9.0.2
SDIST_SHA256=c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a

say() { echo "[pycaffe] $*" >&2; }
die() { echo "[pycaffe] error: $*" >&2; exit 1; }

case "$VARIANT" in
  cpu) CMAKE_VARIANT=(-DCPU_ONLY=ON) ;;
  cuda) CMAKE_VARIANT=(-DCPU_ONLY=OFF -DUSE_CUDNN=OFF) ;;
  *) die "OLMP_CAFFE_VARIANT must be cpu or cuda, not '$VARIANT'" ;;
esac

py_minor=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
np_major=$("$PY" -c 'import numpy; print(numpy.__version__.split(".")[0])') \
  || die "numpy is not installed in $PY"
patch_hashes=$(cd "$PATCH_DIR" && sha256sum ./*.patch)
key=$(printf '%s\n%s\npy%s\nnp%s\n%s\n' "$SDIST_SHA256" "$patch_hashes" "$py_minor" "$np_major" "$VARIANT" \
      | sha256sum | cut -c1-16)
entry="$CACHE/pycaffe/$VARIANT-py$py_minor-np$np_major-$key"
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

install_entry() {
  if [ "$(cat "$site/caffe/.olmp-build-key" 2>/dev/null)" = "$key" ]; then
    say "up to date in $site/caffe ($VARIANT, key $key)"
    return
  fi
  say "installing cached build $key into $site/caffe"
  rm -rf "$site/caffe.olmp-tmp"
  cp -r "$entry/caffe" "$site/caffe.olmp-tmp"
  rm -rf "$site/caffe"
  mv "$site/caffe.olmp-tmp" "$site/caffe"
}

if [ -f "$entry/caffe/_caffe.so" ]; then
  install_entry
  exit 0
fi

# ---- fetch and verify the sdist -------------------------------------------------------------
mkdir -p "$CACHE/downloads"
sdist="$CACHE/downloads/$SDIST_NAME-$SDIST_VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  say "downloading $SDIST_NAME==$SDIST_VERSION sdist from PyPI"
  "$PY" -m pip download -q --no-deps --no-binary :all: "$SDIST_NAME==$SDIST_VERSION" -d "$CACHE/downloads" \
    || die "could not download the $SDIST_NAME sdist"
fi
echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet - 2>/dev/null \
  || { rm -f "$sdist"; die "$sdist: sha256 mismatch (removed; rerun to fetch again)"; }

# ---- patch and build --------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/olmp-caffe-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "extracting into $work"
tar -xzf "$sdist" -C "$work"
src="$work/$SDIST_NAME-$SDIST_VERSION"
for p in "$PATCH_DIR"/*.patch; do
  say "patch $(basename "$p")"
  patch -s -p1 -d "$src" < "$p" || die "patch $(basename "$p") does not apply"
done
if [ "$VARIANT" = cuda ] && ! grep -q 'include(cmake/Cuda.cmake)' "$src/CMakeLists.txt" "$src/cmake/Dependencies.cmake"; then
  die "OLMP_CAFFE_VARIANT=cuda is not implemented yet: the Caffe fork's CMake never includes cmake/Cuda.cmake \
and its pycaffe target compiles no .cu files; a CMake patch in scripts/caffe-patches/ is needed \
(see docker/README.md, 'GPU state'). Use the cpu variant."
fi
mkdir -p "$work/build"
log="$work/build.log"
say "configuring ($VARIANT, python $py_minor, numpy $np_major)"
( cd "$work/build" && cmake "$src" -DCMAKE_BUILD_TYPE=Release "${CMAKE_VARIANT[@]}" \
    -DUSE_LMDB=ON -DBUILD_python_layer=ON -DPython3_EXECUTABLE="$(command -v "$PY")" ) > "$log" 2>&1 \
  || { tail -40 "$log" >&2; die "cmake configure failed (log above)"; }
say "compiling with $JOBS jobs (about 5-10 minutes on 2 cores)"
( cd "$work/build" && make -j"$JOBS" pycaffe 2>&1 ) | tee -a "$log" \
  | awk '/^\[ *[0-9]+%\]/ { p = substr($0, 1, 6); if (p != last) { print "[pycaffe] " p; fflush(); last = p } }' >&2 || true
[ -f "$work/build/lib/_caffe.so" ] || { grep -B2 -A10 -m3 'error' "$log" >&2; die "build failed (errors above)"; }
if [ "$VARIANT" = cuda ] && ! grep -aq libcudart "$work/build/lib/_caffe.so"; then
  die "the cuda variant built a library that does not link the CUDA runtime; not cached"
fi

# ---- assemble a relocatable python/caffe folder and cache it atomically -------------------------
stage="$CACHE/pycaffe/.stage-$key-$$"
rm -rf "$stage"; mkdir -p "$stage"
cp -r "$src/python/caffe" "$stage/caffe"
rm -rf "$stage/caffe/test" "$stage/caffe/_caffe.so"
find "$stage/caffe" -name __pycache__ -prune -exec rm -rf {} +
cp -L "$work/build/lib/_caffe.so" "$stage/caffe/_caffe.so"
mkdir -p "$stage/caffe/proto"
touch "$stage/caffe/proto/__init__.py"
cp "$work/build/include/caffe/proto/caffe_pb2.py" "$stage/caffe/proto/"
echo "$key" > "$stage/caffe/.olmp-build-key"
"$PY" -c "import sys; sys.path.insert(0, '$stage'); import caffe; caffe.set_mode_cpu()" \
  || die "the fresh build does not import"
mkdir -p "$(dirname "$entry")"
rm -rf "$entry"; mv "$stage" "$entry"
say "cached in $entry"
install_entry
