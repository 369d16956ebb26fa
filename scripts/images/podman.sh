#!/usr/bin/env bash
# podman with the image cache's storage and the runtime settings this kind of host needs:
#   scripts/images/podman.sh run --rm localhost/finetune-operator/operator:0.1.0 --help
set -euo pipefail
. "$(dirname "$0")/lib.sh"
# podman's default ulimits (nofile 1048576) can exceed this host's hard limits: stay under them.
lim() { local h; h=$(ulimit -H "$1"); [ "$h" = unlimited ] && h=$2; echo $((h < $2 ? h : $2)); }
NOFILE=$(lim -n 65536) NPROC=$(lim -u 8192)
if [ "${1:-}" = run ] || [ "${1:-}" = create ]; then
  cmd=$1; shift
  exec podman "${STORE[@]}" --runtime runc --cgroup-manager cgroupfs --events-backend file "$cmd" \
    --ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC" "$@"
fi
exec podman "${STORE[@]}" --runtime runc --cgroup-manager cgroupfs --events-backend file "$@"
