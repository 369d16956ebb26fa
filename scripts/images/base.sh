#!/usr/bin/env bash
# The local base image: a Debian bookworm root filesystem with Debian's python3 (3.11, the Python
# of the public python:3.11-slim-bookworm base) made by mmdebstrap from the Debian mirror this
# host's apt uses, imported into the image cache. Kept until `scripts/build-images.sh --clean`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_tools
if podman_ image exists "$BASE_LOCAL" 2>/dev/null; then
  log "base $BASE_LOCAL present (cached)"; exit 0
fi
mkdir -p "$IMAGES_CACHE"
# the host's Debian sources (deb822 or one-line); nothing about mirrors is written in the repo
src=$(ls /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$src" ] || { grep -qs '^deb ' /etc/apt/sources.list && src=/etc/apt/sources.list; }
[ -n "$src" ] || die "no Debian sources in /etc/apt (debian.sources or sources.list): mmdebstrap needs a mirror"
tar=$IMAGES_CACHE/base-bookworm.tar
start=$SECONDS
log "making the base root filesystem with mmdebstrap (bookworm, python3, from $src) ..."
# python3-venv: `python -m venv` as in the official image; python-is-python3: `python`.
mmdebstrap --variant=minbase --mode=root --format=tar \
  --include=python3,python3-venv,python-is-python3,ca-certificates,netbase,tzdata \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  bookworm "$tar.tmp" "$src" 2>&1 | sed -u 's/^/[images]   mmdebstrap: /' >&2
mv "$tar.tmp" "$tar"
log "importing $tar as $BASE_LOCAL"
podman_ import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tar" "$BASE_LOCAL" >/dev/null
rm -f "$tar"
log "base ready in $((SECONDS - start))s: $(podman_ run --rm --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "$BASE_LOCAL" python --version 2>&1)"
