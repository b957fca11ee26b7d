#!/usr/bin/env bash
# mypy and import-linter read the package tree from disk and cannot follow setuptools' folder
# mapping (src/mailfleet, operator/, mta/ -> mailfleet, mailfleet.operator, mailfleet.mta), so
# both check a staged copy of that tree; messages are mapped back to the real paths.
#   hack/lint-imports.sh mypy|contracts
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
stage=.local/pkg
rm -rf "$stage" && mkdir -p "$stage"
cp -r src/mailfleet "$stage/mailfleet"
cp -r mta "$stage/mailfleet/mta"
cp -r operator "$stage/mailfleet/operator"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
unstage='s#(\.local/pkg/)?mailfleet/mta/#mta/#g; s#(\.local/pkg/)?mailfleet/operator/#operator/#g; s#\.local/pkg/mailfleet/#src/mailfleet/#g'
case "${1:-contracts}" in
  mypy)
    set +e
    MYPYPATH="$stage" "$root/.venv/bin/mypy" --config-file pyproject.toml -p mailfleet 2>&1 | sed -E "$unstage"
    exit "${PIPESTATUS[0]}" ;;
  contracts)
    cp .importlinter "$stage/"
    cd "$stage" && PYTHONPATH=. exec "$root/.venv/bin/lint-imports" --no-cache ;;
esac
