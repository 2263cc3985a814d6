# ketamine-dti BIDS App image.
#   docker build -t ketamine-dti .
#   docker run --rm -v /data/bids:/data:ro -v /data/out:/out ketamine-dti /data /out participant
# Without Docker Hub, build on a local Debian base: --build-arg BASE_IMAGE=localhost/debian:bookworm-minbase
# Behind a TLS-intercepting proxy, mount the host CA bundle and pass --build-arg PIP_CERT=<path>.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG PIP_CERT=""
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PATH=/opt/ketamine-dti/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    OMP_NUM_THREADS=1 \
    NUMBA_CACHE_DIR=/opt/numba-cache \
    HOME=/home/ketamine

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY . /src/ketamine-dti
RUN python3 -m venv /opt/ketamine-dti \
 && pip install --no-cache-dir --disable-pip-version-check ${PIP_CERT:+--cert "$PIP_CERT"} /src/ketamine-dti \
 && rm -rf /src/ketamine-dti \
 && mkdir -p "$HOME" "$NUMBA_CACHE_DIR" \
 && python3 -m ketamine_dti.warmup \
 && chmod -R a+rwX "$HOME" "$NUMBA_CACHE_DIR"

# Singularity/Apptainer run the image read-only as the calling user: nothing above is written
# at run time (the numba cache is compiled at build time, templates are bundled).
WORKDIR /tmp
ENTRYPOINT ["ketamine-dti"]
