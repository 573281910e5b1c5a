#!/bin/sh
# A stand-in for python:3.11-slim made from Debian's own packages, for machines that reach
# Debian's package mirrors but no image registry: Debian bookworm (debootstrap, minbase) with
# Debian's Python 3.11 in a venv at /usr/local, so that `python` and `pip` are on PATH where
# the official image has them. Imported with `docker import` under $BASE_IMAGE
# (fcso-base:3.11-bookworm). Does nothing when that tag exists already (FORCE=1 remakes it).
#
#   docker/base/make-base-image.sh            # or: make image (makes it when missing)
#
# Environment: BASE_IMAGE (the tag), DOCKER (the client, `docker`), DEBIAN_MIRROR (default: the
# first URIs of this machine's /etc/apt/sources.list.d/debian.sources, else debootstrap's own
# default), SUITE (bookworm), FORCE=1. Needs root (debootstrap, chroot).
#
# Debian bookworm's Python is 3.11.2, the lock's minor version, but an older patch release than
# the one the lock was compiled on: redis-py needs `async-timeout` below 3.11.3 (see the README
# beside this script).
set -eu

BASE_IMAGE=${BASE_IMAGE:-fcso-base:3.11-bookworm}
DOCKER=${DOCKER:-docker}
SUITE=${SUITE:-bookworm}
SOURCES=/etc/apt/sources.list.d/debian.sources

if [ "${FORCE:-0}" != 1 ] && $DOCKER image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "base image $BASE_IMAGE exists (FORCE=1 to remake it)"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "make-base-image.sh: needs root (debootstrap and chroot)" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

# The mirror this machine's apt uses for Debian itself, unless told otherwise.
own_sources=
if [ -z "${DEBIAN_MIRROR:-}" ] && [ -r "$SOURCES" ]; then
  own_sources=1
  DEBIAN_MIRROR=$(awk '$1 == "URIs:" { print $2; exit }' "$SOURCES")
fi

started=$(date +%s)
root=$(mktemp -d /var/tmp/fcso-base.XXXXXX)
chmod 755 "$root"  # apt's _apt user reads its lists and archives under it
cleanup() {
  for fs in proc sys dev/pts dev; do
    mountpoint -q "$root/$fs" 2>/dev/null && umount -l "$root/$fs" || true
  done
  rm -rf "$root"
}
trap cleanup EXIT INT TERM

echo "debootstrap $SUITE into $root (${DEBIAN_MIRROR:-debootstrap's default mirror})"
# shellcheck disable=SC2086
debootstrap --variant=minbase \
  --include=python3,python3-venv,ca-certificates,netbase,tzdata \
  "$SUITE" "$root" ${DEBIAN_MIRROR:-} >"$root.debootstrap.log" 2>&1 || {
    tail -30 "$root.debootstrap.log" >&2
    exit 1
  }
rm -f "$root.debootstrap.log"

# Updates and security fixes the way this machine's apt gets them (its Debian sources), then
# the lists go again: the image carries no package lists.
if [ -n "$own_sources" ]; then
  cp "$SOURCES" "$root/etc/apt/sources.list.d/debian.sources"
  rm -f "$root/etc/apt/sources.list"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
chroot "$root" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq upgrade' \
  >"$root.upgrade.log" 2>&1 || { tail -30 "$root.upgrade.log" >&2; exit 1; }
rm -f "$root.upgrade.log"

# As the slim images do: no documentation or translations from packages installed later.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Acquire::Languages "none";
EOF

# `python` and `pip` on PATH as in python:3.11-slim: a venv at /usr/local (Debian's own Python
# stays as it is; pip never touches /usr/lib/python3).
chroot "$root" python3 -m venv /usr/local
chroot "$root" /usr/local/bin/python -m pip --version

# Small: no docs but the copyrights, no man pages, translations, apt lists or caches, logs.
find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/lintian"
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/var/lib/dpkg/*-old "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* \
  "$root"/root/.cache
# The build machine's resolver and hostname are not the image's: the engine provides both.
: >"$root/etc/resolv.conf"
: >"$root/etc/hostname"

tar --numeric-owner -C "$root" -c . | $DOCKER import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "Debian $SUITE minbase, Debian's python3 in a venv at /usr/local (docker/base)" \
  - "$BASE_IMAGE" >/dev/null

echo "base image $BASE_IMAGE: $($DOCKER run --rm "$BASE_IMAGE" python --version)," \
  "$($DOCKER image inspect --format '{{.Size}}' "$BASE_IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')," \
  "made in $(($(date +%s) - started)) s"
