#!/usr/bin/env bash
# One idempotent setup for a fresh Debian 12 machine: system packages, .venv/, pycaffe
# (built once, then taken from ~/.cache/olmp), and the olmp package (editable).
# `make setup` runs this; `make test` and `make reproduce` run it when needed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
say() { echo "[setup] $*" >&2; }

APT_PACKAGES=(build-essential cmake patch pkg-config python3-dev python3-venv
  libboost-python1.74-dev libboost-system1.74-dev libboost-filesystem1.74-dev
  libboost-thread1.74-dev libboost-regex1.74-dev libprotobuf-dev protobuf-compiler
  libgoogle-glog-dev libgflags-dev libhdf5-dev libopenblas-dev liblmdb-dev)

# ---- 1. system packages ----------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
  else
    say "missing Debian packages; run as root:"
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
else
  say "Debian packages present"
fi

# ---- 2. virtual environment -------------------------------------------------------------------
PY311=${OLMP_PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY311" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
  || { say "error: Python 3.11 is required ($PY311 is $("$PY311" --version 2>&1))"; exit 1; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PY311"
  "$PY311" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"

# ---- 3. Python dependencies and the package (skipped while pyproject.toml is unchanged) -------
# constraints.txt pins the tested versions (pip freeze of the development .venv); pyproject.toml holds the ranges
stamp=.venv/.olmp-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python dependencies (versions from constraints.txt) and olmp (editable)"
  "$VPY" -m pip install -q --upgrade pip >&2
  "$VPY" -m pip install -q -c constraints.txt "numpy>=2" >&2   # pycaffe is compiled against numpy 2 headers
  "$VPY" -m pip install -q -c constraints.txt -e ".[test]" >&2
  echo "$want" > "$stamp"
else
  say "Python dependencies up to date"
fi

# ---- 4. pycaffe -------------------------------------------------------------------------------
bash scripts/build_pycaffe.sh "$VPY"
"$VPY" -c 'import olmp.caffe_bridge as b; b.caffe()' \
  || { say "error: pycaffe does not import in .venv"; exit 1; }
say "ready: .venv/bin/olmp"
