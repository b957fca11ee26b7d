#!/usr/bin/env bash
# Build (once) a pinned helm from the Go module proxy and print its path.
#
#   hack/helm.sh            -> builds if missing, prints e.g. ~/.cache/mailfleet/helm-v3.19.0/bin/helm
#   hack/helm.sh --check    -> prints the path if built, exits 1 otherwise (no build)
#
# Same approach as hack/envtest.sh: `go install helm.sh/helm/v3/cmd/helm@<version>` into a cache
# outside the repo, keyed by version, in ${MAILFLEET_CACHE:-~/.cache/mailfleet}. The module is
# resolved through go.sum checking (GOFLAGS=-mod=readonly does not apply to `go install pkg@v`).
set -euo pipefail

HELM_VERSION=v3.19.0

cache_root="${MAILFLEET_CACHE:-$HOME/.cache/mailfleet}"
out_dir="$cache_root/helm-$HELM_VERSION"
bin="$out_dir/bin/helm"

if [[ "${1:-}" == "--check" ]]; then
  [[ -x "$bin" ]] && { echo "$bin"; exit 0; }
  exit 1
fi
if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$out_dir"
exec 9>"$out_dir/.build.lock"
if command -v flock >/dev/null; then
  flock 9
fi
if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi

if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null || { echo "helm.sh: 'go' not found on PATH (Go >= 1.24 needed)" >&2; exit 1; }

tmp="$(mktemp -d "$out_dir/.bin.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "helm.sh: building helm $HELM_VERSION into $out_dir/bin (first time: a few minutes)" >&2
start=$SECONDS
(
  cd "$tmp"
  export CGO_ENABLED=0 GOTOOLCHAIN=local GOBIN="$tmp"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
) >&2
[[ -x "$tmp/helm" ]] || { echo "helm.sh: helm was not built" >&2; exit 1; }
mkdir -p "$out_dir/bin"
mv -f "$tmp/helm" "$bin"
echo "helm.sh: built in $((SECONDS - start))s" >&2
echo "$bin"
