#!/usr/bin/env bash
# podman with the settings this project's machines need, for the scripts and the
# image test (a plain `podman` works where the machine allows its defaults):
# - runc, not Debian's crun 1.8, which refuses cgroups in hybrid (v1 + v2) mode;
# - resource limits no higher than the host's: root here lacks CAP_SYS_RESOURCE,
#   so the runtime cannot raise them to podman's defaults (nofile and nproc at
#   their maximum) and the container fails to start with "operation not permitted".
set -euo pipefail
runtime=()
if command -v runc >/dev/null; then
    runtime=(--runtime runc)
fi
nofile=$(ulimit -Hn)
[[ "$nofile" == unlimited || "$nofile" -gt 65536 ]] && nofile=65536
nproc=$(ulimit -Hu)
[[ "$nproc" == unlimited || "$nproc" -gt 16384 ]] && nproc=16384
case "${1:-}" in
    run | create | build)
        sub=$1
        shift
        exec podman "${runtime[@]}" "$sub" \
            --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" "$@"
        ;;
    *) exec podman "${runtime[@]}" "$@" ;;
esac
