#!/usr/bin/env bash
# mypy --strict (as configured in pyproject.toml) over fedgenome, its tests and benches.
# mypy cannot follow the editable install's import hook, so this lays out the import tree the wheel
# has (fedgenome/server -> server/, ...) as symbolic links under build/typecheck and checks that;
# errors name files as fedgenome/<package>/<module>.py.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
view=build/typecheck
rm -rf "$view" && mkdir -p "$view/fedgenome"
for entry in fedgenome/*; do
  ln -s "$root/$entry" "$view/$entry"
done
for package in server client shared privacy configs models experiments; do
  ln -s "$root/$package" "$view/fedgenome/$package"
done
ln -s "$root/tests" "$view/tests"
ln -s "$root/bench" "$view/bench"
cd "$view"
exec "$root/.venv/bin/python" -m mypy --config-file "$root/pyproject.toml" --cache-dir "$root/.mypy_cache" \
  fedgenome tests bench "$@"
