#!/usr/bin/env bash
# Build (once) the pinned local Kubernetes control plane and print its bin dir.
#
#   hack/envtest.sh            -> builds if missing, prints e.g. ~/.cache/mailfleet/k8s-v1.34.4/bin
#   hack/envtest.sh --check    -> prints the bin dir if complete, exits 1 otherwise (no build)
#
# Binaries: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (all k8s.io/kubernetes, the
# version below) and etcd (go.etcd.io/etcd/server/v3, pinned in hack/controlplane/go.mod).
# They are cached outside the repo, keyed by version, in ${MAILFLEET_CACHE:-~/.cache/mailfleet}.
# The Go build and module caches stay at Go's defaults so a rebuild after a bump is incremental.
set -euo pipefail

K8S_VERSION=v1.34.4   # keep in step with k8s.io/kubernetes in hack/controlplane/go.mod
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module_dir="$here/controlplane"
cache_root="${MAILFLEET_CACHE:-$HOME/.cache/mailfleet}"
out_dir="$cache_root/k8s-$K8S_VERSION"
bin_dir="$out_dir/bin"

complete() {
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x "$bin_dir/$b" ]] || return 1
  done
}

if [[ "${1:-}" == "--check" ]]; then
  complete && { echo "$bin_dir"; exit 0; }
  exit 1
fi

if complete; then
  echo "$bin_dir"
  exit 0
fi

mkdir -p "$out_dir"
# One build at a time (make and a pytest session may race); the loser reuses the result.
exec 9>"$out_dir/.build.lock"
if command -v flock >/dev/null; then
  flock 9
fi
if complete; then
  echo "$bin_dir"
  exit 0
fi

if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null || { echo "envtest.sh: 'go' not found on PATH (Go >= 1.24 needed)" >&2; exit 1; }

major_minor="${K8S_VERSION#v}"
major="${major_minor%%.*}"
minor="${major_minor#*.}"
minor="${minor%%.*}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION"
  ldflags+=" -X $pkg.gitMajor=$major"
  ldflags+=" -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitCommit=$K8S_VERSION"
  ldflags+=" -X $pkg.gitTreeState=clean"
  ldflags+=" -X $pkg.buildDate=$build_date"
done

tmp="$(mktemp -d "$out_dir/.bin.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "envtest.sh: building Kubernetes $K8S_VERSION control plane into $bin_dir (first time: ~10-20 min on 2 cores)" >&2
start=$SECONDS
(
  cd "$module_dir"
  export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -mod=readonly"
  go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl \
    ./etcd
) >&2
for b in "${BINARIES[@]}"; do
  [[ -x "$tmp/$b" ]] || { echo "envtest.sh: $b was not built" >&2; exit 1; }
done
mkdir -p "$bin_dir"
for b in "${BINARIES[@]}"; do
  mv -f "$tmp/$b" "$bin_dir/$b"
done
echo "envtest.sh: built in $((SECONDS - start))s" >&2
echo "$bin_dir"
