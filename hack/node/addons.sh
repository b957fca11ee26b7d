#!/usr/bin/env bash
# Build (once) the local node's cluster add-ons; print their dir.
#
#   hack/node/addons.sh          -> builds what is missing, prints e.g. ~/.cache/mailfleet/node-addons
#   hack/node/addons.sh --check  -> prints the dir if complete, exits 1 otherwise (no build)
#
# Each add-on is built from the Go module proxy, from its own module under hack/node/gomod/
# (their dependency sets clash with each other and with the kubelet's), into
#   <dir>/<name>-<version>/<binary>
# with <version> read from that module's go.mod, so bumping a version there builds anew (and
# drops the old build). A stamp of the module's files beside each binary also rebuilds it when
# they change (e.g. a plugin added to CoreDNS's main.go).
#   coredns-*/coredns              github.com/coredns/coredns, hack/node/gomod/coredns: our own
#                                  main with only the plugins a kind-like Corefile uses
#   local-path-provisioner-*/local-path-provisioner
#                                  github.com/rancher/local-path-provisioner, hack/node/gomod/localpath
#   kube-router-*/kube-router      github.com/cloudnativelabs/kube-router/v2, hack/node/gomod/kuberouter;
#                                  run firewall-only, as the NetworkPolicy controller
# <dir>/versions lists what was built. hack/nodebuild.sh calls this at its end.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
gomod="$here/gomod"
out_dir="${MAILFLEET_CACHE:-$HOME/.cache/mailfleet}/node-addons"

# name | module dir | Go module | package to build | binary
ADDONS=(
  "coredns|coredns|github.com/coredns/coredns|.|coredns"
  "local-path-provisioner|localpath|github.com/rancher/local-path-provisioner|github.com/rancher/local-path-provisioner|local-path-provisioner"
  "kube-router|kuberouter|github.com/cloudnativelabs/kube-router/v2|github.com/cloudnativelabs/kube-router/v2/cmd/kube-router|kube-router"
)

# The version a module dir's go.mod requires of a module (no `go` needed, so --check is cheap).
mod_version() {
  awk -v m="$2" '{ for (i = 1; i < NF; i++) if ($i == m) { print $(i + 1); exit } }' "$gomod/$1/go.mod"
}
# What the binary was built from: the module dir's go.mod, go.sum and Go files.
stamp() {
  (cd "$gomod/$1" && cat go.mod go.sum ./*.go) | sha256sum | cut -d' ' -f1
}
# Sets name, dir, module, pkg, bin, version, target for one ADDONS entry.
addon() {
  IFS='|' read -r name dir module pkg bin <<<"$1"
  version="$(mod_version "$dir" "$module")"
  [[ -n "$version" ]] || { echo "addons.sh: no version of $module in $gomod/$dir/go.mod" >&2; exit 1; }
  target="$out_dir/$name-$version/$bin"
}
built() {
  [[ -s "$target" && -x "$target" && "$(cat "$target.src" 2>/dev/null)" == "$(stamp "$dir")" ]]
}
complete() {
  local a
  for a in "${ADDONS[@]}"; do addon "$a"; built || return 1; done
  [[ -s "$out_dir/versions" ]]
}

if [[ "${1:-}" == "--check" ]]; then
  complete && { echo "$out_dir"; exit 0; }
  exit 1
fi
if complete; then echo "$out_dir"; exit 0; fi

mkdir -p "$out_dir"
exec 8>"$out_dir/.build.lock"
command -v flock >/dev/null && flock 8
if complete; then echo "$out_dir"; exit 0; fi

if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then PATH="/usr/local/go/bin:$PATH"; fi
command -v go >/dev/null || { echo "addons.sh: 'go' not found on PATH" >&2; exit 1; }
# -buildvcs=false: coredns's main package is in this repo; its git state is no part of the build.
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false"

tmp="$(mktemp -d "$out_dir/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

for a in "${ADDONS[@]}"; do
  addon "$a"
  built && continue
  ldflags="-s -w"
  case "$name" in
    # coremain reports gitTag as its version (else "untracked dev build").
    coredns) ldflags+=" -X github.com/coredns/coredns/coremain.gitTag=$version"
             ldflags+=" -X github.com/coredns/coredns/coremain.GitCommit=$version" ;;
    local-path-provisioner) ldflags+=" -X main.VERSION=$version" ;;
    kube-router) ldflags+=" -X $module/pkg/version.Version=$version"
                 ldflags+=" -X $module/pkg/version.BuildDate=$now" ;;
  esac
  echo "addons.sh: building $name $version (first time: a few minutes)" >&2
  t0=$SECONDS
  (cd "$gomod/$dir" && nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$tmp/$bin" "$pkg") >&2
  # Drop builds of other versions, then put the new one in place with its stamp.
  for old in "$out_dir/$name"-*; do [[ "$old" == "$out_dir/$name-$version" ]] || rm -rf "$old"; done
  mkdir -p "$out_dir/$name-$version"
  mv -f "$tmp/$bin" "$target"
  stamp "$dir" >"$target.src"
  echo "addons.sh: built $name $version in $((SECONDS - t0))s ($(du -m "$target" | cut -f1) MiB)" >&2
done

{
  for a in "${ADDONS[@]}"; do addon "$a"; echo "$name $module $version"; done
  go version | cut -d' ' -f3
} >"$out_dir/versions"
echo "addons.sh: done in $((SECONDS - start))s" >&2
echo "$out_dir"
