#!/usr/bin/env bash
# Build pycaffe from the brocolli-caffe sdist (BVLC Caffe source) with the patches in
# scripts/caffe-patches/, cache the finished python/caffe folder, and install it into
# the given interpreter's site-packages.
#
#   scripts/build_pycaffe.sh PYTHON
#
# Environment:
#   OLMP_CACHE_DIR        cache root (default ~/.cache/olmp)
#   OLMP_CAFFE_VARIANT    cpu (default) | cuda   -- cuda: CPU_ONLY=OFF, USE_CUDNN=OFF, every .cu file
#                         compiled for sm_80 and sm_90 plus PTX (patches 0008-0011). The toolkit and
#                         libraries are PyPI's CUDA 13 wheels, pinned in scripts/cuda-requirements.txt
#                         and pip-installed into PYTHON's site-packages (nvidia/cu13/, ~1.2 GB), where
#                         _caffe.so finds them at run time; no GPU and no system CUDA are needed to
#                         build. Its cache entry is separate (the variant and the wheel pins are in the key).
#   OLMP_BUILD_JOBS       parallel compile jobs (default: nproc)
set -euo pipefail

PY=${1:?usage: build_pycaffe.sh PYTHON}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PATCH_DIR="$HERE/caffe-patches"
CACHE=${OLMP_CACHE_DIR:-$HOME/.cache/olmp}
VARIANT=${OLMP_CAFFE_VARIANT:-cpu}
JOBS=${OLMP_BUILD_JOBS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}   # nproc obeys OMP_NUM_THREADS
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

CUDA_REQS="$HERE/cuda-requirements.txt"
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ "$VARIANT" = cuda ]; then
  # nvcc, cudart, cuBLAS, cuRAND from PyPI: the same wheels build here and run beside the package
  stamp="$site/nvidia/.olmp-cuda-requirements"
  if ! cmp -s "$CUDA_REQS" "$stamp"; then
    say "installing the CUDA 13 wheels pinned in scripts/cuda-requirements.txt (~1.2 GB)"
    "$PY" -m pip install -q -r "$CUDA_REQS" >&2 || die "could not install the CUDA wheels (scripts/cuda-requirements.txt)"
    cp "$CUDA_REQS" "$stamp"
  fi
  cu13="$site/nvidia/cu13"
  [ -x "$cu13/bin/nvcc" ] && [ -x "$cu13/nvvm/bin/cicc" ] || die "no nvcc/cicc under $cu13 after installing the wheels"
fi

py_minor=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
np_major=$("$PY" -c 'import numpy; print(numpy.__version__.split(".")[0])') \
  || die "numpy is not installed in $PY"
patch_hashes=$(cd "$PATCH_DIR" && sha256sum ./*.patch)
variant_inputs=$VARIANT
[ "$VARIANT" = cuda ] && variant_inputs="$VARIANT $(sha256sum < "$CUDA_REQS")"   # other wheels, another build
key=$(printf '%s\n%s\npy%s\nnp%s\n%s\n' "$SDIST_SHA256" "$patch_hashes" "$py_minor" "$np_major" "$variant_inputs" \
      | sha256sum | cut -c1-16)
entry="$CACHE/pycaffe/$VARIANT-py$py_minor-np$np_major-$key"

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
mkdir -p "$work/build"
if [ "$VARIANT" = cuda ]; then
  # the wheels ship versioned libraries only (libcudart.so.13, ...): FindCUDA looks for the plain
  # names, so they are linked here for the build; _caffe.so records the versioned sonames
  mkdir -p "$work/cuda-links"
  for lib in cudart cublas curand; do
    real=$(ls "$cu13/lib/lib$lib.so."* 2>/dev/null | head -1)
    [ -n "$real" ] || die "no lib$lib.so.* in $cu13/lib"
    ln -s "$real" "$work/cuda-links/lib$lib.so"
  done
  CMAKE_VARIANT+=(-DCUDA_TOOLKIT_ROOT_DIR="$cu13" -DCMAKE_LIBRARY_PATH="$work/cuda-links"
    -DCUDA_USE_STATIC_CUDA_RUNTIME=OFF -DCUDA_ARCH_NAME=Manual "-DCUDA_ARCH_BIN=80 90" -DCUDA_ARCH_PTX=90)
fi
log="$work/build.log"
say "configuring ($VARIANT, python $py_minor, numpy $np_major)"
( cd "$work/build" && cmake "$src" -DCMAKE_BUILD_TYPE=Release "${CMAKE_VARIANT[@]}" \
    -DUSE_LMDB=ON -DBUILD_python_layer=ON -DPython3_EXECUTABLE="$(command -v "$PY")" ) > "$log" 2>&1 \
  || { tail -40 "$log" >&2; die "cmake configure failed (log above)"; }
if [ "$VARIANT" = cuda ]; then
  say "compiling with $JOBS jobs (CUDA: ~27 CPU minutes, 14 minutes on 2 cores; the 72 .cu files dominate)"
else
  say "compiling with $JOBS jobs (about 5-10 minutes on 2 cores)"
fi
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
# the CUDA libraries are found beside the installed package ($ORIGIN/../nvidia/cu13/lib), not in the stage
LD_LIBRARY_PATH="${cu13:+$cu13/lib:}${LD_LIBRARY_PATH:-}" \
  "$PY" -c "import sys; sys.path.insert(0, '$stage'); import caffe; caffe.set_mode_cpu()" \
  || die "the fresh build does not import"
mkdir -p "$(dirname "$entry")"
rm -rf "$entry"; mv "$stage" "$entry"
say "cached in $entry"
install_entry
