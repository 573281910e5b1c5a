#!/bin/sh
# `make image`: the project's image from the Dockerfile, on a base made here from Debian's
# packages when no registry is reachable (make-base-image.sh, made when missing), reaching the
# package index the way this machine's pip does: its index, timeout and certificate bundle go
# to the pip step as BuildKit secrets (/run/secrets/pip_conf, /run/secrets/pip_cert), never
# into a layer or the image's history.
#
# Environment: IMAGE (fast-counters-safe-orders, the compose file's name), BASE_IMAGE
# (fcso-base:3.11-bookworm; set it to python:3.11-slim where a registry is reachable and
# MAKE_BASE=0), DOCKERFILE (Dockerfile), CONTEXT (.), BUILD_NETWORK (host: the build's RUN steps
# use this machine's network as its pip does; `default` for the engine's bridge), DOCKER (the
# client), PIP (the pip whose settings are passed on: python3 -m pip), BUILD_FLAGS (more
# options for `docker build`, e.g. --no-cache to time a build from nothing but the base).
set -eu
cd "$(dirname "$0")/../.."

IMAGE=${IMAGE:-fast-counters-safe-orders}
BASE_IMAGE=${BASE_IMAGE:-fcso-base:3.11-bookworm}
DOCKERFILE=${DOCKERFILE:-Dockerfile}
CONTEXT=${CONTEXT:-.}
BUILD_NETWORK=${BUILD_NETWORK:-host}
PIP=${PIP:-python3 -m pip}

# A client that builds with BuildKit (secrets need it). A client of Docker 23 or later builds
# with BuildKit only through the buildx plugin; without it (Debian bookworm packages no
# docker-buildx) the client of Debian's docker.io, 20.10, has BuildKit built in
# (DOCKER_BUILDKIT=1). The legacy builder (DOCKER_BUILDKIT=0) knows no RUN --mount.
pick_client() {
  for client in ${DOCKER:-} docker /usr/bin/docker; do
    command -v "$client" >/dev/null 2>&1 || continue
    if $client buildx version >/dev/null 2>&1; then
      echo "$client"
      return
    fi
    major=$($client version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
    case "$major" in
      1[89] | 2[012]) echo "$client"; return ;;
    esac
  done
  echo "build-image.sh: no Docker client here builds with BuildKit: install the buildx plugin" \
    "(docker-buildx) or Debian's docker.io" >&2
  exit 1
}
DOCKER=$(pick_client)
export DOCKER DOCKER_BUILDKIT=1

if ! grep -q 'BASE_IMAGE' "$DOCKERFILE"; then
  echo "build-image.sh: $DOCKERFILE has no BASE_IMAGE build argument (ARG BASE_IMAGE=..., then" \
    "FROM \${BASE_IMAGE}); set DOCKERFILE to one that has" >&2
  exit 1
fi

if [ "${MAKE_BASE:-1}" = 1 ]; then
  BASE_IMAGE=$BASE_IMAGE docker/base/make-base-image.sh
fi

# This machine's pip settings that reach an index: the index URLs (not local file:// ones, which
# the build cannot see), trusted hosts, proxy, timeouts and retries, and the certificate bundle
# (passed as a file of its own). Environment (PIP_*) over the configuration files, as pip does.
secrets=$(mktemp -d)
trap 'rm -rf "$secrets"' EXIT INT TERM
$PIP config list 2>/dev/null | python3 -c '
import re, sys
keys = {"index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "default-timeout",
        "retries", "cert"}
found = {}
for line in sys.stdin:
    match = re.match(r"^(global|install|download|:env:)\.([a-z-]+)=(.*)$", line.strip())
    if not match or match[2] not in keys:
        continue
    section, key, value = match[1], match[2], match[3].strip("\x27\"")
    key = "timeout" if key == "default-timeout" else key
    if section == ":env:" or key not in found:
        found[key] = value
lines = ["[global]"]
for key, value in sorted(found.items()):
    if key == "cert":
        lines.append("cert = /run/secrets/pip_cert")
        print(value, file=sys.stderr)
        continue
    if key.endswith("index-url"):
        value = " ".join(url for url in value.split() if not url.startswith("file:"))
        if not value:
            continue
    lines.append(f"{key} = {value}")
print("\n".join(lines))
' >"$secrets/pip.conf" 2>"$secrets/cert-path"
set -- --secret "id=pip_conf,src=$secrets/pip.conf"
cert=$(cat "$secrets/cert-path")
if [ -z "$cert" ]; then
  # No bundle in pip's settings: pip uses certifi's, which the image's pip has too.
  sed -i '/^cert = /d' "$secrets/pip.conf"
elif [ -r "$cert" ]; then
  set -- "$@" --secret "id=pip_cert,src=$cert"
else
  echo "build-image.sh: pip's certificate bundle $cert cannot be read" >&2
  exit 1
fi
echo "pip settings for the build (secret pip_conf):"
sed 's/^/  /' "$secrets/pip.conf"

previous=$($DOCKER image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
started=$(date +%s)
# shellcheck disable=SC2086
$DOCKER build --network "$BUILD_NETWORK" "$@" ${BUILD_FLAGS:-} \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  -f "$DOCKERFILE" -t "$IMAGE" "$CONTEXT"
took=$(($(date +%s) - started))
size=$($DOCKER image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')
echo "image $IMAGE on $BASE_IMAGE: $size, built in $took s"
# The image the tag named before this build, now untagged: removed, so that every change of code
# does not leave ~240 MB behind (kept while a container still uses it).
current=$($DOCKER image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  $DOCKER image rm "$previous" >/dev/null 2>&1 || true
fi
