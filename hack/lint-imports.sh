#!/usr/bin/env bash
# import-linter reads the package tree from disk and cannot follow setuptools' folder mapping
# (operator/ and mta/ -> mailfleet.operator, mailfleet.mta), so check a staged copy of that tree.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=.local/importlint
rm -rf "$stage" && mkdir -p "$stage"
cp -r src/mailfleet "$stage/mailfleet"
cp -r mta "$stage/mailfleet/mta"
cp -r operator "$stage/mailfleet/operator"
cp .importlinter "$stage/"
cd "$stage" && PYTHONPATH=. exec "$OLDPWD/.venv/bin/lint-imports" --no-cache
