#!/usr/bin/env bash
# The GPU proof in one command: install what the GPU machine lacks, run the tests marked gpu, then
# the benchmarks, each under a time budget (about 8 minutes in all); JSON results in --out.
#
#   bash bench/gpu/run.sh --out "$OUT"                     # on the GPU machine, with .whl carried
#   bash bench/gpu/run.sh --dry-run --out /tmp/gpu-proof   # on CPU first: wheels, sizes, steps, tiny end to end
#   bash bench/gpu/run.sh --dry-run --no-wheels --out DIR  # the tiny end-to-end part alone (CI)
#   ... --only lora_7b,qwen_vl                             # some steps (names: bench/gpu/proof.py)
#   ... --no-sizes                                         # dry run without the real-size --plan-only pass
#
# The wheels come from `bash bench/gpu/fetch_wheels.sh` (into the ignored .whl/). On the GPU they
# are installed with pip --target into /tmp/site, behind this working tree on PYTHONPATH: the code
# under test is always the tree that travelled. Steps, budgets and files: bench/gpu/proof.py and
# bench/README.md ("GPU proof").
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
REPO=$PWD
COMMAND="bash bench/gpu/run.sh $*"
DRY=0
WHEELS=1
OUT_DIR=${OUT:-}
ONLY=""
SIZES=1
while [ $# -gt 0 ]; do
    case "$1" in
    --dry-run) DRY=1 ;;
    --no-wheels) WHEELS=0 ;;
    --out) OUT_DIR=${2:?--out needs a folder}; shift ;;
    --only) ONLY=${2:?--only needs step names}; shift ;;
    --no-sizes) SIZES=0 ;;
    -h | --help) sed -n '2,/^set /p' "$0" | sed '$d'; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$OUT_DIR" ] || { echo "run.sh: --out DIR is required (or OUT set)" >&2; exit 2; }
mkdir -p "$OUT_DIR" || exit 2

if [ "$DRY" = 1 ]; then
    PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
else
    PY=${PYTHON:-python3}
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
INSTALL_S=""

if [ "$WHEELS" = 1 ]; then
    echo "== wheels"
    "$PY" bench/gpu/wheels.py check .whl || exit 1
    if [ "$DRY" = 0 ]; then
        SITE=/tmp/site
        t0=$(date +%s)
        timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" .whl/*.whl || { echo "run.sh: installing the wheels failed" >&2; exit 1; }
        INSTALL_S=$(($(date +%s) - t0))
        export PYTHONPATH="$REPO:$SITE"
        export PATH="$SITE/bin:$PATH"
        echo "installed into $SITE in ${INSTALL_S} s"
    else  # the same install for the GPU machine's Python 3.12 into a scratch folder: the set installs together
        SCRATCH=$(mktemp -d)
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SCRATCH" \
            --python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            .whl/*.whl || { echo "run.sh: the wheels do not install together" >&2; rm -rf "$SCRATCH"; exit 1; }
        echo "the wheels install together for Python 3.12 ($(ls "$SCRATCH" | grep -c dist-info) distributions)"
        rm -rf "$SCRATCH"
    fi
elif [ "$DRY" = 0 ]; then
    echo "run.sh: --no-wheels is for --dry-run (the GPU machine lacks the packages)" >&2
    exit 2
fi

ARGS=(--out "$OUT_DIR" --command "$COMMAND")
[ "$DRY" = 1 ] && ARGS+=(--dry-run)
[ "$SIZES" = 0 ] && ARGS+=(--no-sizes)
[ -n "$ONLY" ] && ARGS+=(--only "$ONLY")
[ -n "$INSTALL_S" ] && ARGS+=(--install-s "$INSTALL_S")
exec "$PY" bench/gpu/proof.py "${ARGS[@]}"
