#!/usr/bin/env bash
# Build (once) the local node's binaries and its pause image; print the cache dir.
#
#   hack/nodebuild.sh            -> builds what is missing, prints e.g. ~/.cache/mailfleet/node-v1.34.4
#   hack/nodebuild.sh --check    -> prints the dir if complete, exits 1 otherwise (no build)
#
# What, and from where (all from the Go module proxy or this machine; nothing is downloaded
# from anywhere else):
#   bin/kubelet, bin/kube-proxy    k8s.io/kubernetes at K8S_VERSION (the control plane's), from
#                                  hack/node/gomod/kube (hack/controlplane's go.sum lacks the
#                                  kubelet's own dependencies; the replace block is the same)
#   bin/crictl                     sigs.k8s.io/cri-tools, hack/node/gomod
#   cni/bin/{bridge,host-local,loopback,portmap}
#                                  github.com/containernetworking/plugins, hack/node/gomod
#   images/pause.tar               build/pause/linux/pause.c from the same Kubernetes module,
#                                  compiled here (gcc -static), committed by buildah as PAUSE_IMAGE
#   images/local-path-helper.tar   Debian's busybox-static, committed by buildah as HELPER_IMAGE
# and, last, the cluster add-ons (hack/node/addons.sh, cached in ../node-addons/<name>-<version>/):
#   coredns, local-path-provisioner, kube-router (firewall only: NetworkPolicy), each from its
#   own module under hack/node/gomod/; --check requires them too.
# containerd and runc are Debian's packages (see hack/node/node.py and docs/tutorial.md).
set -euo pipefail

K8S_VERSION=v1.34.4                          # = hack/envtest.sh, hack/controlplane/go.mod
PAUSE_TAG=3.10.1                             # build/pause/Makefile TAG at K8S_VERSION
PAUSE_IMAGE="mailfleet.local/pause:$PAUSE_TAG"   # containerd's sandbox_image (hack/realnode.py)
HELPER_IMAGE="mailfleet.local/local-path-helper:1"  # local-path's helper pods (hack/realnode.py)
CNI_PLUGINS=(bridge host-local loopback portmap)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${MAILFLEET_CACHE:-$HOME/.cache/mailfleet}"
out_dir="$cache_root/node-$K8S_VERSION"

files() {
  echo bin/kubelet bin/kube-proxy bin/crictl images/pause.tar images/local-path-helper.tar
  local p
  for p in "${CNI_PLUGINS[@]}"; do echo "cni/bin/$p"; done
}
complete() {
  local f
  for f in $(files); do [[ -s "$out_dir/$f" ]] || return 1; done
  "$here/node/addons.sh" --check >/dev/null
}

if [[ "${1:-}" == "--check" ]]; then
  complete && { echo "$out_dir"; exit 0; }
  exit 1
fi
if complete; then echo "$out_dir"; exit 0; fi

mkdir -p "$out_dir/bin" "$out_dir/cni/bin" "$out_dir/images"
exec 9>"$out_dir/.build.lock"
command -v flock >/dev/null && flock 9
if complete; then echo "$out_dir"; exit 0; fi

if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then PATH="/usr/local/go/bin:$PATH"; fi
command -v go >/dev/null || { echo "nodebuild.sh: 'go' not found on PATH" >&2; exit 1; }
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -mod=readonly"

tmp="$(mktemp -d "$out_dir/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

if [[ ! -s "$out_dir/bin/kubelet" || ! -s "$out_dir/bin/kube-proxy" ]]; then
  major_minor="${K8S_VERSION#v}"; major="${major_minor%%.*}"; minor="${major_minor#*.}"; minor="${minor%%.*}"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitCommit=$K8S_VERSION -X $pkg.gitTreeState=clean"
    ldflags+=" -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  echo "nodebuild.sh: building kubelet and kube-proxy $K8S_VERSION (first time: several minutes)" >&2
  (cd "$here/node/gomod/kube" && nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy) >&2
  mv -f "$tmp/kubelet" "$tmp/kube-proxy" "$out_dir/bin/"
fi

if [[ ! -s "$out_dir/bin/crictl" ]]; then
  echo "nodebuild.sh: building crictl" >&2
  (cd "$here/node/gomod" && nice -n 19 go build -trimpath -ldflags "-s -w" -o "$tmp/crictl" \
      sigs.k8s.io/cri-tools/cmd/crictl) >&2
  mv -f "$tmp/crictl" "$out_dir/bin/"
fi

for p in "${CNI_PLUGINS[@]}"; do
  [[ -s "$out_dir/cni/bin/$p" ]] && continue
  case "$p" in
    host-local) pkg=plugins/ipam/host-local ;;
    portmap) pkg=plugins/meta/portmap ;;
    *) pkg="plugins/main/$p" ;;
  esac
  echo "nodebuild.sh: building CNI plugin $p" >&2
  (cd "$here/node/gomod" && nice -n 19 go build -trimpath -ldflags "-s -w" -o "$tmp/$p" \
      "github.com/containernetworking/plugins/$pkg") >&2
  mv -f "$tmp/$p" "$out_dir/cni/bin/"
done

if [[ ! -s "$out_dir/images/pause.tar" ]]; then
  command -v buildah >/dev/null || { echo "nodebuild.sh: buildah is missing (apt-get install buildah)" >&2; exit 1; }
  src="$(cd "$here/node/gomod/kube" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  echo "nodebuild.sh: building the pause image $PAUSE_IMAGE from $src" >&2
  gcc -Os -Wall -static -DVERSION="v$PAUSE_TAG-mailfleet" -o "$tmp/pause" "$src"
  strip "$tmp/pause"
  ctr_id="$(buildah from scratch)"
  # shellcheck disable=SC2064
  trap "buildah rm $ctr_id >/dev/null 2>&1 || true; rm -rf '$tmp'" EXIT
  buildah copy "$ctr_id" "$tmp/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 --os linux --arch amd64 "$ctr_id"
  buildah commit --quiet "$ctr_id" "$PAUSE_IMAGE" >/dev/null
  buildah push --quiet "$PAUSE_IMAGE" "docker-archive:$tmp/pause.tar:$PAUSE_IMAGE" >/dev/null
  mv -f "$tmp/pause.tar" "$out_dir/images/pause.tar"
fi

# local-path-provisioner's helper pods (mkdir/rm of a volume's directory): Debian's static
# busybox in an image of its own, so provisioning does not depend on mailfleet's image.
if [[ ! -s "$out_dir/images/local-path-helper.tar" ]]; then
  [[ -x /bin/busybox ]] || { echo "nodebuild.sh: /bin/busybox is missing (apt-get install busybox-static)" >&2; exit 1; }
  echo "nodebuild.sh: building the image $HELPER_IMAGE (busybox)" >&2
  mkdir -p "$tmp/helper/bin"
  cp /bin/busybox "$tmp/helper/bin/busybox"
  for a in sh mkdir rm ls; do ln -s busybox "$tmp/helper/bin/$a"; done
  hctr="$(buildah from scratch)"
  buildah copy "$hctr" "$tmp/helper" / >/dev/null
  buildah config --cmd '["/bin/sh"]' --os linux --arch amd64 "$hctr"
  buildah commit --quiet "$hctr" "$HELPER_IMAGE" >/dev/null
  buildah rm "$hctr" >/dev/null
  buildah push --quiet "$HELPER_IMAGE" "docker-archive:$tmp/helper.tar:$HELPER_IMAGE" >/dev/null
  mv -f "$tmp/helper.tar" "$out_dir/images/local-path-helper.tar"
fi

cat >"$out_dir/versions" <<EOF
kubernetes $K8S_VERSION
pause $PAUSE_IMAGE
local-path-helper $HELPER_IMAGE (busybox $(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null))
$(cd "$here/node/gomod" && go list -m -f '{{.Path}} {{.Version}}' github.com/containernetworking/plugins sigs.k8s.io/cri-tools)
EOF
"$here/node/addons.sh" >&2   # its stdout (the add-ons' dir) too: our last line stays $out_dir
echo "nodebuild.sh: done in $((SECONDS - start))s" >&2
echo "$out_dir"
