#!/usr/bin/env bash
# The static checks CI gates before the tests: ruff, then mypy --strict (scripts/typecheck.sh).
# The README's test command runs this, then pytest (the tests, the doctests of every module, the
# layering, the wheel built and run from a fresh virtual environment).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "lint: ruff" >&2
.venv/bin/python -m ruff check .
echo "lint: mypy (strict)" >&2
bash scripts/typecheck.sh
