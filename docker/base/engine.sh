#!/bin/sh
# A Docker engine on this machine, for `make image` and `make test-containers` (.ci/run): Debian's
# docker.io when no dockerd is installed, then dockerd in the background (overlay2, cgroupfs,
# log in /var/log/dockerd.log) unless one answers already. Needs root.
#
# The engine routes nothing out of the machine: no iptables rules (no NAT from its bridges) and
# no IP forwarding, so containers reach each other on their own network and this machine's
# addresses, nothing else. Builds and tests use the host's network (--network host).
set -eu

DOCKER=${DOCKER:-docker}
LOG=${DOCKERD_LOG:-/var/log/dockerd.log}

if $DOCKER info >/dev/null 2>&1; then
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
command -v debootstrap >/dev/null 2>&1 || \
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null

# shellcheck disable=SC2086
nohup dockerd --storage-driver=overlay2 --exec-opt native.cgroupdriver=cgroupfs \
  --iptables=false --ip-forward=false ${DOCKERD_ARGS:-} >>"$LOG" 2>&1 &
echo "dockerd started (pid $!, log $LOG)"
for _ in $(seq 1 60); do
  if $DOCKER info >/dev/null 2>&1; then
    exit 0
  fi
  sleep 1
done
echo "engine.sh: dockerd did not answer within 60 s; the end of $LOG:" >&2
tail -20 "$LOG" >&2
exit 1
