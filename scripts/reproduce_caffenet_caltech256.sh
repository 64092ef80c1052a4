#!/usr/bin/env bash
# OLMP on CaffeNet / Caltech-256: scripts/reproduce_caffenet_caltech256.sh [OPTIMIZER] [SEED]
# (see scripts/reproduce.sh). Needs `olmp data caltech256 --from DIR` first; a GPU run sets OLMP_GPU=0.
exec bash "$(dirname "$0")/reproduce.sh" caffenet_caltech256 "$@"
