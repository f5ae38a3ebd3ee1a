#!/usr/bin/env bash
# The wheels the image build installs, prepared on the host (which reaches PyPI,
# through whatever proxy and certificates the host's pip is set up with) so that
# the build itself runs with no network. Wheels must match the base's Python:
# the host's Python and the bookworm base are both CPython 3.11 on glibc.
#
#   scripts/image/wheelhouse.sh DIR [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:?usage: wheelhouse.sh DIR [PYTHON]}
python=${2:-.venv/bin/python}

version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ "$version" != 3.11 ]]; then
    echo "wheelhouse: $python is Python $version; the bookworm base runs 3.11" >&2
    exit 1
fi
mkdir -p "$dir"
# hatchling and its own requirements: pip builds the tokenquota wheel inside the
# image in an isolated environment that can only look here. async-timeout: redis
# needs it below Python 3.11.3, and bookworm's is 3.11.2, while the host's pip
# resolves markers for the host's own (newer) 3.11.
"$python" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$dir" \
    ".[postgres,redis]" hatchling "async-timeout>=4.0.3"
# The project's own wheel is built inside the image from the copied source.
rm -f "$dir"/tokenquota-*.whl
echo "wheelhouse: $(ls "$dir" | wc -l) wheels in $dir"
