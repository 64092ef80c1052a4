#!/usr/bin/env bash
# OLMP on lenet5: scripts/reproduce_lenet5.sh [OPTIMIZER] [SEED] (see scripts/reproduce.sh).
exec bash "$(dirname "$0")/reproduce.sh" lenet5 "$@"
