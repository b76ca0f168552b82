#!/usr/bin/env bash
# Run before raising an upper bound in pyproject.toml: install the newest releases the registry has
# of every dependency (our upper bounds lifted; torch kept at the CPU build) into a fresh venv, run
# the fast suite (tests/unit) there, and print a one-line verdict with the versions it ran on.
#
#   bash scripts/check_latest.sh             # newest releases: may the bounds be raised?
#   bash scripts/check_latest.sh --oldest    # every lower bound of the libraries we reach into
#   bash scripts/check_latest.sh -- -x -k qwen_vl   # arguments after -- go to pytest
#
# The venv lives in .venv-check-latest (or .venv-check-oldest) and is rebuilt on every run. The
# log of the run is .venv-check-*/check.log. Exit status: 0 when the fast suite passed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODE=latest
if [ "${1:-}" = "--oldest" ]; then MODE=oldest; shift; fi
[ "${1:-}" = "--" ] && shift
EXTRAS=(dev qlora gptq deepspeed tensorboard demo rl)   # the same extras as scripts/setup_env.sh
VENV=.venv-check-$MODE
LOG=$VENV/check.log
TORCH=$(grep -E '^torch==' scripts/constraints-cpu.txt)

rm -rf "$VENV"
"$PY" -m venv "$VENV"
: > "$LOG.tmp"
echo "[check-$MODE] fresh venv $VENV; installing $TORCH (CPU) and the $MODE dependency set ..."
{
  "$VENV/bin/python" -m pip install --upgrade pip packaging
  "$VENV/bin/python" -m pip install "$TORCH"
  "$VENV/bin/python" scripts/requirements_from_pyproject.py "$MODE" "${EXTRAS[@]}" > "$VENV/requirements.txt"
  echo "$TORCH" > "$VENV/torch-pin.txt"
  "$VENV/bin/python" -m pip install -c "$VENV/torch-pin.txt" -r "$VENV/requirements.txt"
  "$VENV/bin/python" -m pip install --no-deps -e .
} >> "$LOG.tmp" 2>&1 || { mv "$LOG.tmp" "$LOG"; echo "check-$MODE: INSTALL FAILED (see $LOG)"; exit 1; }
mv "$LOG.tmp" "$LOG"

versions=$("$VENV/bin/python" - <<'PY'
from importlib.metadata import version, PackageNotFoundError
names = ["transformers", "peft", "accelerate", "deepspeed", "bitsandbytes", "gptqmodel", "optimum", "datasets", "torch"]
out = []
for n in names:
    try:
        out.append(f"{n} {version(n)}")
    except PackageNotFoundError:
        out.append(f"{n} (not installed)")
print(", ".join(out))
PY
)
echo "[check-$MODE] versions: $versions"
"$VENV/bin/python" -m pip freeze --exclude-editable > "$VENV/freeze.txt"

echo "[check-$MODE] running the fast suite (tests/unit) ..."
set +e
"$VENV/bin/python" -m pytest tests/unit -q -p no:cacheprovider "$@" >> "$LOG" 2>&1
rc=$?
set -e
summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed)|no tests ran' "$LOG" | tail -1 | tr -d '=' | sed 's/^ *//')
if [ $rc -eq 0 ]; then
  echo "check-$MODE: PASSED ($summary) on $versions"
else
  echo "check-$MODE: FAILED ($summary; see $LOG) on $versions"
fi
exit $rc
