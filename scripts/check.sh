#!/usr/bin/env bash
# Everything CI gates (the README's test command): ruff, mypy --strict, then pytest (the unit and
# integration tests, the doctests of every fedgenome module, the layering, the wheel built and run
# from a fresh virtual environment). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "check: ruff" >&2
.venv/bin/python -m ruff check .
echo "check: mypy (strict)" >&2
bash scripts/typecheck.sh
echo "check: pytest" >&2
.venv/bin/python -m pytest -q "$@"
