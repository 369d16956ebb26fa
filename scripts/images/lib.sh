# Shared settings of the image scripts (sourced). Storage, layer cache, pip cache and the base
# root filesystem live outside the checkout, under $FINETUNE_IMAGES_CACHE.
# shellcheck shell=bash
IMAGES_CACHE=${FINETUNE_IMAGES_CACHE:-$HOME/.cache/finetune-operator/images}
IMAGES_RUNROOT=${FINETUNE_IMAGES_RUNROOT:-/run/finetune-operator-images}
IMAGE_TAG=${FINETUNE_IMAGE_TAG:-0.1.0}
# The local base: Debian bookworm + its python3 (3.11), made by mmdebstrap (base.sh).
BASE_LOCAL=localhost/finetune-operator/base:bookworm-python3.11
OPERATOR_IMAGE=localhost/finetune-operator/operator:$IMAGE_TAG
TRAINER_IMAGE=localhost/finetune-operator/trainer:$IMAGE_TAG
SERVER_IMAGE=localhost/finetune-operator/server:$IMAGE_TAG
STORE=(--root "$IMAGES_CACHE/storage" --runroot "$IMAGES_RUNROOT" --storage-driver overlay)

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

# crun rejects hybrid cgroup layouts and podman's default ulimits can exceed the hard limits of
# a container host, so runc, cgroupfs and explicit ulimits (podman run gets them from podman.sh).
podman_() { podman "${STORE[@]}" --runtime runc --cgroup-manager cgroupfs --events-backend file "$@"; }
buildah_() { buildah "${STORE[@]}" "$@"; }

need_tools() {
  local missing=()
  for t in buildah podman runc mmdebstrap skopeo; do command -v "$t" >/dev/null || missing+=("$t"); done
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]} (Debian packages buildah podman runc skopeo mmdebstrap)"
  [ "$(id -u)" = 0 ] || die "need root to apt-get install buildah podman runc skopeo mmdebstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    buildah podman runc skopeo umoci mmdebstrap uidmap fuse-overlayfs conmon \
    containernetworking-plugins iptables >/dev/null
}
