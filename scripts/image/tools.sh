#!/usr/bin/env bash
# Makes sure podman, runc and debootstrap are here and podman can run containers. As root
# with apt-get (this project's machines), it installs Debian's packages when they
# are missing; TOKENQUOTA_IMAGE_NO_INSTALL=1 forbids that. Exit status 3 means the
# tooling is absent and could not be installed: the image test skips on it, or
# fails under TOKENQUOTA_REQUIRE_SERVICES=1.
set -uo pipefail

present() { command -v podman >/dev/null && command -v debootstrap >/dev/null; }

# runc is wanted, not required: podman.sh falls back to podman's default runtime.
if ! present || ! command -v runc >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null \
        && [[ "${TOKENQUOTA_IMAGE_NO_INSTALL:-0}" != 1 ]]; then
        echo "tools: installing podman, runc and debootstrap from Debian's packages" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 \
            && apt-get -o DPkg::Lock::Timeout=600 install -y -qq podman runc debootstrap >&2
    fi
fi
if ! present; then
    echo "podman and debootstrap are not installed, and could not be installed here" \
        "(needs root and apt-get: apt-get install podman runc debootstrap)" >&2
    exit 3
fi
if ! out=$(podman info 2>&1 >/dev/null); then
    echo "podman is installed but cannot run here: ${out}" >&2
    exit 3
fi
