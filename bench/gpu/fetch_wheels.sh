#!/usr/bin/env bash
# Fetch into .whl/ (git-ignored) the wheels the GPU machine lacks, for bench/gpu/run.sh.
#
#   bash bench/gpu/fetch_wheels.sh        # needs PyPI; about 30 MB; PYTHON=... to use another interpreter
#
# Which packages and why: bench/gpu/wheels.py. Wheels for the GPU machine's Python 3.12 on
# manylinux x86_64 (or pure Python); deepspeed has only an sdist, so its pure-Python wheel is built
# here; bitsandbytes is slimmed to its CUDA 13 libraries. Ends with the size check against the
# 64 MiB a device call carries (exit 1 when something is missing or too big).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
DEST=.whl
mkdir -p "$DEST"
PLATFORMS=(
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any
)
mapfile -t BINARY < <("$PY" bench/gpu/wheels.py list --binary)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$DEST" "${BINARY[@]}"

for spec in $("$PY" bench/gpu/wheels.py list --sdist); do
    name=${spec%%==*}
    version=${spec##*==}
    if ls "$DEST/$name-$version-"*.whl >/dev/null 2>&1; then
        continue
    fi
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --no-binary=:all: -d "$tmp" "$spec"
    # No build isolation: the build reads torch (here the CPU one) only to list the ops it could
    # prebuild; none is (DS_BUILD_OPS=0), so the wheel is pure Python and builds ops when used.
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$DEST" "$tmp"/*.tar.gz
    rm -rf "$tmp"
done

"$PY" bench/gpu/wheels.py slim "$DEST"
"$PY" bench/gpu/wheels.py check "$DEST"
