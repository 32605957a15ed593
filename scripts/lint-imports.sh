#!/usr/bin/env bash
# Run import-linter over the installed package layout.
# Why not plain `lint-imports`: grimp (import-linter's graph builder) walks only the root
# package's own folder, so it cannot see loraplex.router/worker/operator, which pyproject's
# package-dir maps from the top-level folders. We copy the sources into the installed layout
# under build/ and lint that copy; the contracts are the ones in pyproject.toml.
set -euo pipefail
lint_imports=$(realpath "${1:-lint-imports}")
root=$(cd "$(dirname "$0")/.." && pwd)
overlay="$root/build/import-lint"
rm -rf "$overlay"
mkdir -p "$overlay"
cp -r "$root/loraplex" "$overlay/loraplex"
for part in router worker operator; do
  cp -r "$root/$part" "$overlay/loraplex/$part"
done
cd "$overlay"
PYTHONPATH="$overlay" "$lint_imports" --config "${IMPORT_LINTER_CONFIG:-$root/pyproject.toml}" --no-cache
