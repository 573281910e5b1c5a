#!/bin/sh
# Every container of the image: an empty directory for the metrics of this container's processes
# (prometheus-client's multiprocess mode needs one, emptied at each start), then the command.
set -e
rm -rf "${PROMETHEUS_MULTIPROC_DIR:?}"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
exec "$@"
