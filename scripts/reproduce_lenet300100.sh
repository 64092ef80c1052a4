#!/usr/bin/env bash
# OLMP on lenet300100: scripts/reproduce_lenet300100.sh [OPTIMIZER] [SEED] (see scripts/reproduce.sh).
exec bash "$(dirname "$0")/reproduce.sh" lenet300100 "$@"
