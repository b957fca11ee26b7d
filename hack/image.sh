#!/usr/bin/env bash
# Build (once per content) the mailfleet image offline, from the Dockerfile's steps, with buildah;
# print "<ref> <docker-archive tar>" (e.g. "mailfleet:3f2a... ~/.cache/mailfleet/images/mailfleet-3f2a....tar").
#
#   hack/image.sh               build what is missing (three cached layers, see below)
#   hack/image.sh --check       print the ref and tar if the current content is built, else exit 1
#   FORCE=base|deps|code hack/image.sh    rebuild from that layer on (cold/warm figures)
#
# Layers, each cached under a hash of what goes into it, so a code change reinstalls nothing:
#   1. base  localhost/mailfleet-base:<h>  Debian bookworm (minbase + python3 3.11 + CA certs),
#            made here by debootstrap from Debian's packages; no registry. The Dockerfile's
#            `ARG BASE` (default python:3.11-slim) is what Docker users build on instead.
#   2. deps  localhost/mailfleet-deps:<h>  the dependencies' wheels (host pip, versions pinned to
#            the repo's .venv) installed with a pip wheel run from /wheels (no pip in the image);
#            uid/gid 10001 and /var/spool/mailfleet, as the Dockerfile's RUN does.
#   3. code  mailfleet:<h>                 the mailfleet wheel built from pyproject.toml, src/,
#            operator/, mta/ (what .dockerignore lets into a Docker build); USER 10001:10001,
#            WORKDIR, ENTRYPOINT ["mailfleet"], CMD ["--help"], ENV as in the Dockerfile.
# The final image is also saved as a docker-archive (for `ctr -n k8s.io images import`) under
# ${MAILFLEET_CACHE:-~/.cache/mailfleet}/images/. Without buildah but with Docker, it runs
# `docker build` instead.
set -euo pipefail

SUITE=bookworm
# The Debian mirror this machine's apt uses (DEBIAN_MIRROR overrides): debootstrap fetches the
# same packages apt-get would.
apt_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] && awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f"
  done | head -1
  if [[ -f /etc/apt/sources.list ]]; then
    awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) { print $i; exit } }' /etc/apt/sources.list
  fi
  return 0
}
MIRROR="${DEBIAN_MIRROR:-$(apt_mirror | head -1)}"
[[ -n "$MIRROR" ]] || { echo "image.sh: no Debian mirror in /etc/apt (set DEBIAN_MIRROR)" >&2; exit 1; }
BASE_PACKAGES=(python3 ca-certificates)     # bookworm's python3 is 3.11, as python:3.11-slim
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
venv="${VENV:-$repo/.venv}"
cache_root="${MAILFLEET_CACHE:-$HOME/.cache/mailfleet}"
img_dir="$cache_root/images"
FORCE="${FORCE:-}"

sha() { sha256sum | cut -c1-16; }
log() { echo "image.sh: $*" >&2; }

# ---- content keys (computed before any build: a warm run only hashes files) ----------------
base_key="$( { echo "$SUITE minbase $MIRROR ${BASE_PACKAGES[*]}"; sed -n '/^# ---- base/,/^# ---- end base/p' "$0"; } | sha)"
constraints="$("$venv/bin/pip" freeze --exclude-editable --disable-pip-version-check 2>/dev/null | grep -v '^-e ' | sort)"
deps_key="$( { echo "$base_key"; echo "$constraints"; sed -n '/^\[project\]/,/^\[project.optional/p' "$repo/pyproject.toml"; sed -n '/^# ---- deps/,/^# ---- end deps/p' "$0"; } | sha)"
code_key="$( { echo "$deps_key"; cd "$repo"; git ls-files -co --exclude-standard -- pyproject.toml README.md src operator mta \
               | grep -v -E '(__pycache__|\.pyc$)' | sort | while read -r f; do [[ -f "$f" ]] && { echo "$f"; sha256sum <"$f"; }; done; \
               sed -n '/^# ---- code/,/^# ---- end code/p' "$0"; } | sha)"
ref="mailfleet:$code_key"
tar="$img_dir/mailfleet-$code_key.tar"

if [[ "${1:-}" == "--check" ]]; then
  [[ -s "$tar" ]] && { echo "$ref $tar"; exit 0; }
  exit 1
fi
if [[ -s "$tar" && -z "$FORCE" ]]; then echo "$ref $tar"; exit 0; fi

mkdir -p "$img_dir"
exec 9>"$img_dir/.build.lock"
command -v flock >/dev/null && flock 9

if ! command -v buildah >/dev/null; then
  command -v docker >/dev/null || { log "neither buildah nor docker found (apt-get install buildah debootstrap)"; exit 1; }
  log "no buildah: docker build -t $ref $repo"
  docker build -t "$ref" "$repo" >&2
  docker save -o "$tar" "$ref"
  echo "$ref $tar"
  exit 0
fi
command -v debootstrap >/dev/null || { log "debootstrap is missing (apt-get install debootstrap)"; exit 1; }

has_image() { [[ -n "$(buildah images --quiet "$1" 2>/dev/null)" ]]; }
work="$(mktemp -d "$img_dir/.work.XXXXXX")"
ctrs=()
cleanup() {
  local c
  for c in "${ctrs[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
t0=$SECONDS

# ---- base: debootstrap into an empty buildah container, then commit ------------------------
base="localhost/mailfleet-base:$base_key"
if [[ "$FORCE" == base ]] || ! has_image "$base"; then
  log "base: debootstrap $SUITE (${BASE_PACKAGES[*]}) from $MIRROR"
  c="$(buildah from scratch)"; ctrs+=("$c")
  root="$(buildah mount "$c")"
  inc="$(IFS=,; echo "${BASE_PACKAGES[*]}")"
  nice -n 19 debootstrap --variant=minbase --include="$inc" "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  # An image, not a machine: no package caches, lists, docs or logs.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/tmp/*
  buildah unmount "$c" >/dev/null
  buildah config --os linux --arch amd64 --env LANG=C.UTF-8 --cmd '["/bin/sh"]' "$c"
  buildah commit --quiet --rm "$c" "$base" >/dev/null; ctrs=()
  log "base: $base built ($((SECONDS - t0))s)"
fi
# ---- end base

# ---- wheels: the host's pip, from the repo, pinned to the .venv's versions ----------------
deps="localhost/mailfleet-deps:$deps_key"
wheels="$work/wheels"
mkdir -p "$wheels"
need_deps=0
[[ "$FORCE" == base || "$FORCE" == deps ]] && need_deps=1
has_image "$deps" || need_deps=1
printf '%s\n' "$constraints" >"$work/constraints.txt"
log "wheels: pip wheel $repo (constraints: $venv)"
(cd "$work" && nice -n 19 "$venv/bin/pip" wheel --quiet --disable-pip-version-check --wheel-dir "$wheels" \
    -c "$work/constraints.txt" "$repo" >&2)
nice -n 19 "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --dest "$work/pip" pip >&2
pipwhl="$(ls "$work"/pip/pip-*.whl)"
mfwhl="$(ls "$wheels"/mailfleet-*.whl)"

# ---- deps ----------------------------------------------------------------------------------
if (( need_deps )); then
  t1=$SECONDS
  c="$(buildah from --quiet "$base")"; ctrs+=("$c")
  args=()
  for w in "$wheels"/*.whl; do [[ "$w" == "$mfwhl" ]] || args+=("/wheels/$(basename "$w")"); done
  cp "$pipwhl" "$wheels/"
  buildah run --isolation chroot -v "$wheels:/wheels:ro" "$c" -- \
    python3 "/wheels/$(basename "$pipwhl")/pip" install --quiet --no-index --no-deps --no-cache-dir \
      --disable-pip-version-check --root-user-action=ignore --break-system-packages "${args[@]}" >&2
  buildah run --isolation chroot "$c" -- groupadd --gid 10001 mailfleet
  buildah run --isolation chroot "$c" -- useradd --uid 10001 --gid 10001 --no-create-home \
    --home-dir /nonexistent --shell /usr/sbin/nologin mailfleet
  buildah run --isolation chroot "$c" -- install -d -o 10001 -g 10001 /var/spool/mailfleet
  buildah commit --quiet --rm "$c" "$deps" >/dev/null; ctrs=()
  log "deps: $deps built ($((SECONDS - t1))s, ${#args[@]} wheels)"
fi
# ---- end deps

# ---- code ----------------------------------------------------------------------------------
t2=$SECONDS
c="$(buildah from --quiet "$deps")"; ctrs+=("$c")
cp "$pipwhl" "$wheels/" 2>/dev/null || true
buildah run --isolation chroot -v "$wheels:/wheels:ro" "$c" -- \
  python3 "/wheels/$(basename "$pipwhl")/pip" install --quiet --no-index --no-deps --no-cache-dir \
    --disable-pip-version-check --root-user-action=ignore --break-system-packages "/wheels/$(basename "$mfwhl")" >&2
buildah config --cmd '["--help"]' "$c"   # before the entrypoint: no "/bin/sh" argument to it
buildah config --os linux --arch amd64 \
  --env PIP_NO_CACHE_DIR=1 --env PIP_DISABLE_PIP_VERSION_CHECK=1 \
  --env PYTHONDONTWRITEBYTECODE=1 --env PYTHONUNBUFFERED=1 \
  --user 10001:10001 --workingdir /var/spool/mailfleet \
  --entrypoint '["mailfleet"]' \
  --label "io.mailfleet.content=$code_key" "$c"
buildah commit --quiet --rm "$c" "localhost/$ref" >/dev/null; ctrs=()
buildah push --quiet "localhost/$ref" "docker-archive:$work/image.tar:docker.io/library/$ref" >/dev/null
mv -f "$work/image.tar" "$tar"
# Keep the two newest archives and the images behind them; older code layers go.
ls -1t "$img_dir"/mailfleet-*.tar 2>/dev/null | tail -n +3 | while read -r old; do
  h="$(basename "$old" .tar)"; h="${h#mailfleet-}"
  rm -f "$old"; buildah rmi "localhost/mailfleet:$h" >/dev/null 2>&1 || true
done
log "code: $ref built ($((SECONDS - t2))s); total $((SECONDS - t0))s; $(du -h "$tar" | cut -f1) tar"
# ---- end code
echo "$ref $tar"
