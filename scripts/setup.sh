#!/usr/bin/env bash
# Create .venv and install fedgenome into it, with its dev tools. Safe to run again: it only
# reinstalls when pyproject.toml changed.
#   - torch is installed first as the pinned CPU wheel (FEDGENOME_TORCH overrides, e.g. a GPU site
#     can set FEDGENOME_TORCH="torch==2.13.0+cu128" or create the venv with its own torch first).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
torch_spec=${FEDGENOME_TORCH:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.fedgenome-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing $torch_spec" >&2
  .venv/bin/python -m pip install --quiet "$torch_spec"
fi
echo "setup: installing fedgenome and its dependencies into .venv" >&2
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "$want" > "$stamp"
