#!/usr/bin/env bash
# Runs the test suite (the README's `make test`, `make test-fast` with tests/unit, and CI all land
# here); pytest ends with the time per tier (tests/conftest.py).
# pytest exits 5 when nothing was collected: that is an error for the full suite, but fine when
# the caller filtered by marker (e.g. `make test PYTEST_ARGS="-m gpu"` on a machine without GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
.venv/bin/python -m pytest "$@"
rc=$?
echo "[run-tests] pytest exit code $rc after $(( $(date +%s) - start ))s"
if [ "$rc" -eq 5 ]; then
  if [[ " $* " == *" -m "* || " $* " == *" -k "* ]]; then
    echo "[run-tests] no test matched the filter ($*): nothing to run"; exit 0
  fi
  echo "[run-tests] no tests were collected: the suite is broken"; exit 1
fi
exit "$rc"
