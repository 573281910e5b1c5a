# One image for web, workers, beat, the outbox relay and Flower (docker-compose.yml picks the
# command). Runtime dependencies only (requirements/runtime.txt, hashes required); every one has an
# amd64 and an arm64 wheel for CPython 3.11 (checked with `pip download --platform
# manylinux2014_aarch64 --only-binary=:all: --require-hashes -r requirements/runtime.txt`), so
# `docker buildx build --platform linux/amd64,linux/arm64 .` builds both.
# The base is a build argument: where no registry is reachable, `make image` makes one from
# Debian's packages (docker/base/make-base-image.sh) with the same Python minor version.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DJANGO_SETTINGS_MODULE=project.settings.production \
    DJANGO_STATIC_ROOT=/app/staticfiles \
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics

WORKDIR /app
COPY requirements/runtime.txt requirements/runtime.txt
# The build machine's pip settings and certificate bundle may come as BuildKit secrets
# (docker/base/build-image.sh): mounted for this step only, never in a layer. Without them pip
# ignores the missing file and uses its defaults.
RUN --mount=type=secret,id=pip_conf --mount=type=secret,id=pip_cert \
    PIP_CONFIG_FILE=/run/secrets/pip_conf \
    pip install --no-cache-dir --require-hashes --no-deps -r requirements/runtime.txt
COPY . .
# The code and the static files belong to root: the runtime user can read them, not change them.
# It writes only under /tmp (the metrics of its processes, beat's schedule): compose mounts a
# tmpfs there and the rest of the container read-only.
# No PROMETHEUS_MULTIPROC_DIR for collectstatic: that directory exists only at run time (the
# entrypoint makes it), and made here it would belong to root.
RUN DJANGO_SETTINGS_MODULE=project.settings.base DJANGO_SECRET_KEY=build-only \
    env -u PROMETHEUS_MULTIPROC_DIR python manage.py collectstatic --noinput --verbosity 0 \
    && python -m compileall -q /app \
    && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
USER app
ENTRYPOINT ["/app/docker/entrypoint.sh"]
# gunicorn and Flower. Not the workers' metrics (WORKER_METRICS_PORT): they are for a Prometheus
# on the internal network only, with METRICS_TOKEN (tasks/metrics.py).
EXPOSE 8000 5555
