#!/usr/bin/env bash
# Rebuild the default model bundle shipped in broker_plugin/bundle/ (synthetic data, fixed seed).
#
# Why a script: the bundle is a build artefact committed to git so that a fresh install runs with
# models; this is the one documented command that produces it, so anyone can check that the files
# in git are what the code makes (only the manifest's time stamps differ between two runs).
# Trains every model, the candidate scorer (cutout encoder + ranking head) included, with the default
# --lc-history mixed (data-release + ZTF/Rubin alert-length light curves, see training/lc_history.py).
# Takes about two minutes on two cores (the scorer ~75 s of it); the bundle is ~3 MB.
# Usage: scripts/build_default_bundle.sh [extra train options]
set -euo pipefail
cd "$(dirname "$0")/.."
BAL_BROKER="${BAL_BROKER:-.venv/bin/bal-broker}"
exec "$BAL_BROKER" train --synthetic 6000 --seed 20261122 --out broker_plugin/bundle "$@"
