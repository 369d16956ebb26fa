#!/usr/bin/env bash
# Re-pin BASE_IMAGE in both Dockerfiles to the current digest of python:3.11-slim-bookworm (the
# multi-arch index), where a registry is reachable: scripts/images/pin-base.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-python:3.11-slim-bookworm}
digest=$(skopeo inspect --raw "docker://$tag" | sha256sum | cut -d' ' -f1)
[ ${#digest} = 64 ] || { echo "pin-base: no digest for $tag" >&2; exit 1; }
for f in Dockerfile.operator Dockerfile.trainer; do
  sed -i -E "s|^ARG BASE_IMAGE=.*$|ARG BASE_IMAGE=$tag@sha256:$digest|" "$f"
done
echo "pinned $tag@sha256:$digest (update the PIN comment's date in both Dockerfiles)"
