#!/usr/bin/env bash
# A local stand-in for python:3.11-slim, since no image registry answers from the
# machines the tests run on: a minimal Debian bookworm root filesystem made by
# debootstrap from Debian's package mirror (python3, python3-venv), imported into
# podman as $BASE_TAG. The tarball is kept in .cache/image/, so only the first run
# pays for debootstrap (a few minutes); later runs import it, or find the image.
#
#   scripts/image/base.sh [--force]
set -euo pipefail
cd "$(dirname "$0")/../.."

BASE_TAG=${TOKENQUOTA_IMAGE_BASE:-localhost/tokenquota-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=.cache/image
TARBALL=$CACHE/bookworm-python3.tar

if [[ "${1:-}" == "--force" ]]; then
    rm -f "$TARBALL"
    podman image rm -f "$BASE_TAG" >/dev/null 2>&1 || true
fi
if podman image exists "$BASE_TAG"; then
    echo "base: $BASE_TAG is present"
    exit 0
fi
mkdir -p "$CACHE"
if [[ ! -s "$TARBALL" ]]; then
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    echo "base: debootstrap bookworm into $root (the slow part, once)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    # What an image does not need: package lists, caches, documentation.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
        "$root"/usr/share/man/* "$root"/usr/share/locale/*
    tar --numeric-owner -C "$root" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
fi
echo "base: importing $TARBALL as $BASE_TAG"
podman import --change 'CMD ["/bin/bash"]' "$TARBALL" "$BASE_TAG" >/dev/null
