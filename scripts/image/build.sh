#!/usr/bin/env bash
# Builds the repository's Dockerfile with podman, offline: on the local bookworm
# base (base.sh) instead of python:3.11-slim, with the wheels from wheelhouse.sh
# mounted into the build instead of PyPI, and no network inside the build.
#
#   scripts/image/build.sh [TAG]     (default localhost/tokenquota:test)
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-localhost/tokenquota:test}
base=${TOKENQUOTA_IMAGE_BASE:-localhost/tokenquota-base:bookworm}
wheels=$PWD/.cache/image/wheelhouse

scripts/image/tools.sh
TOKENQUOTA_IMAGE_BASE=$base scripts/image/base.sh
scripts/image/wheelhouse.sh "$wheels"
# --format docker keeps the HEALTHCHECK (the OCI format has no field for it).
scripts/image/podman.sh build --format docker --network none \
    --build-arg "BASE=$base" \
    --build-arg "PIP_ARGS=--no-index --find-links /wheelhouse" \
    --volume "$wheels:/wheelhouse:ro" \
    --tag "$tag" .
