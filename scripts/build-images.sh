#!/usr/bin/env bash
# Build the operator, trainer and server images from Dockerfile.operator / .trainer / .server with
# buildah, without a Docker daemon and without pulling a base image: the base is Debian bookworm +
# python3 made locally by mmdebstrap (scripts/images/base.sh) and passed as BASE_IMAGE. Only the
# package registries are reached (Debian for apt, the Python index of this host's pip config).
#
#   scripts/build-images.sh [operator|trainer|server ...]   (default: all three, `make images`)
#   scripts/build-images.sh --clean                   (drop the image cache)
#
# Layers, pip's wheel cache and the base live under $FINETUNE_IMAGES_CACHE
# (~/.cache/finetune-operator/images); a rebuild with unchanged inputs takes seconds. Beside each
# image: <cache>/out/<name>-<tag>.pip-freeze.txt and .dpkg.txt (its bill of materials) and
# .size.txt (size and the dominating layer).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/images/lib.sh"

if [ "${1:-}" = --clean ]; then
  log "removing $IMAGES_CACHE"
  podman_ system reset -f >/dev/null 2>&1 || true
  rm -rf "$IMAGES_CACHE"; exit 0
fi
targets=("$@"); ((${#targets[@]})) || targets=(operator trainer server)

need_tools
"$here/images/base.sh"
out=$IMAGES_CACHE/out
mkdir -p "$out" "$IMAGES_CACHE/tmp"
# buildah keeps RUN --mount=type=cache directories (the pip cache) under $TMPDIR
export TMPDIR=$IMAGES_CACHE/tmp

# The host's pip index settings (environment or pip config), passed as build arguments of the
# builder stage; the CA bundle pip trusts here is mounted read-only over the image's bundle.
build_args=(--build-arg "BASE_IMAGE=$BASE_LOCAL")
volumes=()
pipconf() {  # pipconf KEY: the value pip would use here (env first, then config files)
  local env_name="PIP_$(echo "$1" | tr a-z- A-Z_)"
  if [ -n "${!env_name:-}" ]; then echo "${!env_name}"; return; fi
  python3 -m pip config list 2>/dev/null | sed -n "s/^[a-z:]*\.$1='\(.*\)'$/\1/p" | tail -1
}
for key in index-url extra-index-url trusted-host; do
  v=$(pipconf "$key"); [ -z "$v" ] || build_args+=(--build-arg "PIP_$(echo "$key" | tr a-z- A-Z_)=$v")
done
cert=$(pipconf cert)
if [ -n "$cert" ] && [ -f "$cert" ]; then
  volumes+=(-v "$cert:/etc/ssl/certs/ca-certificates.crt:ro")
  build_args+=(--build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
fi
# The same settings as a pip.conf secret (Dockerfile.server reads that: a secret is mounted for
# one step and, unlike a build argument, recorded nowhere in the image).
pipconf_file=$IMAGES_CACHE/tmp/pip.conf
(umask 077; {
  echo "[global]"
  for key in index-url extra-index-url trusted-host; do
    v=$(pipconf "$key"); [ -z "$v" ] || echo "$key = $v"
  done
  [ -z "$cert" ] || [ ! -f "$cert" ] || echo "cert = /etc/ssl/certs/ca-certificates.crt"
} > "$pipconf_file")
build_args+=(--secret "id=pipconf,src=$pipconf_file")

human() { numfmt --to=iec --suffix=B "$1"; }
report() {  # size, dominating layer, bill of materials of image $2 (name $1)
  local name=$1 image=$2 size
  size=$(podman_ image inspect --format '{{.Size}}' "$image")
  podman_ run --rm --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    --entrypoint cat "$image" /opt/venv/pip-freeze.txt > "$out/$name-$IMAGE_TAG.pip-freeze.txt"
  podman_ run --rm --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    --entrypoint dpkg-query "$image" -W -f '${Package}=${Version}\n' > "$out/$name-$IMAGE_TAG.dpkg.txt"
  {
    echo "image $image size $(human "$size") ($size bytes)"
    echo "largest layers:"
    podman_ history --format json "$image" | python3 "$here/images/layers.py" 3
  } | tee "$out/$name-$IMAGE_TAG.size.txt" | sed 's/^/[images] /' >&2
}

for name in "${targets[@]}"; do
  case $name in operator) image=$OPERATOR_IMAGE ;; trainer) image=$TRAINER_IMAGE ;;
    server) image=$SERVER_IMAGE ;;
    *) die "unknown image $name (operator, trainer or server)" ;; esac
  dockerfile=$root/Dockerfile.$name
  log "building $image from ${dockerfile#"$root"/} (buildah, layers cached under $IMAGES_CACHE) ..."
  start=$SECONDS
  previous=$(podman_ image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  # --isolation chroot: RUN steps need no OCI runtime; --layers: every step cached
  buildah_ build --layers --isolation chroot --network host \
    -f "$dockerfile" --ignorefile "$dockerfile.dockerignore" \
    "${build_args[@]}" "${volumes[@]}" -t "$image" "$root" 2>&1 | sed -u 's/^/[images]   /' >&2
  log "built $image in $((SECONDS - start))s"
  # the image this build replaced (its last layers are gigabytes for the trainer); the cached
  # build steps stay
  if [ -n "$previous" ] && [ "$previous" != "$(podman_ image inspect --format '{{.Id}}' "$image")" ]; then
    podman_ rmi "$previous" >/dev/null 2>&1 || true
  fi
  report "$name" "$image"
  log "bill of materials: $out/$name-$IMAGE_TAG.pip-freeze.txt, $out/$name-$IMAGE_TAG.dpkg.txt"
done
