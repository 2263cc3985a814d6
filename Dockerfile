# ketamine-dti BIDS App image.
#   docker build -t ketamine-dti .
#   docker run --rm -v /data/bids:/data:ro -v /data/out:/out ketamine-dti /data /out participant
# Without Docker Hub, build on a local Debian base: scripts/build_image.sh (buildah), or
# scripts/container_ci.sh (Docker: builds, sizes and runs the image as CI does).
# Behind a TLS-intercepting proxy, mount the host CA bundle and pass --build-arg PIP_CERT=<path>.
ARG BASE_IMAGE=debian:bookworm-slim

# ---- build stage: the virtual environment, from PyPI only ----------------------------------
FROM ${BASE_IMAGE} AS build
# names this stage's untagged image, which scripts/container_ci.sh removes after a later build
LABEL org.ketamine-dti.stage="build"
ARG PIP_CERT=""
ARG DEBIAN_FRONTEND=noninteractive
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONFIG_FILE=/dev/null
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY . /src/ketamine-dti
# Every runtime dependency at the version the test suite passed with
# (scripts/image_constraints.txt, written by scripts/pin_image.py): a rebuild next year installs
# the same packages. The test suites of large dependencies (about 160 MB) are never imported
# at run time; pip and setuptools are not needed in the image. Bytecode is compiled once,
# unchecked against source times: the image never changes, and Python cannot write .pyc files
# into it at run time.
RUN python3 -m venv /opt/ketamine-dti \
 && /opt/ketamine-dti/bin/pip install --no-compile ${PIP_CERT:+--cert "$PIP_CERT"} \
        -c /src/ketamine-dti/scripts/image_constraints.txt /src/ketamine-dti \
 && /opt/ketamine-dti/bin/pip uninstall -y pip setuptools \
 && cd /opt/ketamine-dti/lib/python3*/site-packages \
 && find pandas scipy statsmodels numpy sklearn networkx prov matplotlib \
        -depth -type d -name tests -exec rm -rf {} + \
 && find /opt/ketamine-dti -depth -type d -name __pycache__ -exec rm -rf {} + \
 && /opt/ketamine-dti/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        /opt/ketamine-dti/lib

# ---- run stage: Python, the venv, and the numba kernels compiled once ----------------------
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# the image's name:tag, recorded in the outputs' GeneratedBy.Container (build_image.sh passes it)
ARG IMAGE_TAG=ketamine-dti:latest
LABEL org.opencontainers.image.title="ketamine-dti" \
      org.opencontainers.image.description="BIDS App: 24-hour gray-matter mean-diffusivity change and ketamine response" \
      org.opencontainers.image.licenses="Apache-2.0"
# libgomp1: numba's OpenMP threading layer, as in development (without it numba falls back to
# its workqueue layer, which is not thread-safe).
# NUMBA_CPU_NAME=generic: the build-time cache is used on any x86-64 CPU (a cache built for the
# build machine's CPU is ignored elsewhere); measured no slower here for our kernels.
# NIPYPE_NO_ET: no version check over the network. HOME is writable by any user (Docker -u);
# the entry point redirects HOME and the numba cache when the image is read-only (Singularity).
ENV PATH=/usr/local/bin:/opt/ketamine-dti/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    OMP_NUM_THREADS=1 \
    NUMBA_CACHE_DIR=/opt/numba-cache \
    NUMBA_CPU_NAME=generic \
    NIPYPE_NO_ET=1 \
    KETAMINE_DTI_IMAGE=${IMAGE_TAG} \
    HOME=/home/ketamine
# Metadata and small layers come before the venv: a builder that snapshots every step (Docker's
# vfs storage on the CI machines) copies the whole image for each step after it (WORKDIR and
# ENTRYPOINT placed last took 106 s there; scripts/container_ci.sh).
WORKDIR /tmp
ENTRYPOINT ["/usr/local/bin/ketamine-dti"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
COPY scripts/container_entrypoint.sh /usr/local/bin/ketamine-dti-entrypoint
COPY --from=build /opt/ketamine-dti /opt/ketamine-dti
RUN chmod 755 /usr/local/bin/ketamine-dti-entrypoint \
 && ln -s ketamine-dti-entrypoint /usr/local/bin/ketamine-dti \
 && ln -s ketamine-dti-entrypoint /usr/local/bin/ketamine-dti-simulate \
 && mkdir -p "$HOME" "$NUMBA_CACHE_DIR" \
 && python3 -m ketamine_dti.warmup \
 && date -u +%Y%m%dT%H%M%SZ > "$NUMBA_CACHE_DIR/.build-id" \
 && rm -rf "$HOME"/.cache "$HOME"/.config /tmp/* \
 && chmod -R a+rwX "$HOME" "$NUMBA_CACHE_DIR"
