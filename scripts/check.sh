#!/usr/bin/env bash
# Everything CI gates (the README's test command): ruff, mypy --strict, and pytest (the unit and
# integration tests, the doctests of every fedgenome module, the layering, the wheel built and run
# from a fresh virtual environment). mypy runs beside pytest (most of an integration test's time is
# spent waiting on processes); either failing fails the check. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "check: ruff" >&2
.venv/bin/python -m ruff check .
mkdir -p build
echo "check: mypy (strict), beside pytest" >&2
bash scripts/typecheck.sh > build/mypy.log 2>&1 &
mypy_pid=$!
echo "check: pytest" >&2
pytest_status=0
.venv/bin/python -m pytest -q "$@" 2>&1 | tee build/pytest.log || pytest_status=$?
mypy_status=0
wait "$mypy_pid" || mypy_status=$?
echo "check: mypy said:" >&2
cat build/mypy.log
if [ "$mypy_status" -ne 0 ] || [ "$pytest_status" -ne 0 ]; then
  echo "check: failed (pytest exit $pytest_status, mypy exit $mypy_status)" >&2
  exit 1
fi
echo "check: passed; pytest's summary again:" >&2
tail -n 1 build/pytest.log
