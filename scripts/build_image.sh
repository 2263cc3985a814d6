#!/usr/bin/env bash
# Build the ketamine-dti container image with buildah, on machines with no Docker engine and no
# Docker Hub (see ENVIRONMENT.md, "Containers without a Docker engine"):
#   1. a local Debian base image made with debootstrap (once; reused while it exists),
#   2. the repository's Dockerfile built on it, with the host CA bundle for pip.
#
#   scripts/build_image.sh                   # -> localhost/ketamine-dti:test
#   scripts/build_image.sh -t ketamine-dti:0.1.0
#   scripts/build_image.sh --rebuild-base    # make the base again first
#   scripts/build_image.sh --archive /tmp/ketamine-dti.tar   # also save a docker-archive, for
#       `apptainer build ketamine-dti.sif docker-archive:///tmp/ketamine-dti.tar` elsewhere
#
# Needs root, buildah and debootstrap (apt-get install -y buildah debootstrap); podman if present.
set -euo pipefail

TAG=ketamine-dti:test
BASE_IMAGE=localhost/debian:bookworm-minbase
SUITE=bookworm
REBUILD_BASE=0
ARCHIVE=""
HOST_CA=/etc/ssl/certs/ca-certificates.crt
CA_IN_BUILD=/run/host-ca.crt  # neutral path: mounting over the image's own bundle breaks apt

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        -t | --tag) TAG=$2; shift 2 ;;
        --base) BASE_IMAGE=$2; shift 2 ;;
        --rebuild-base) REBUILD_BASE=1; shift ;;
        --archive) ARCHIVE=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "build_image.sh: unknown option $1" >&2; usage >&2; exit 64 ;;
    esac
done

for tool in buildah debootstrap; do
    command -v "$tool" > /dev/null || {
        echo "build_image.sh: $tool not found; run: apt-get install -y buildah debootstrap" >&2
        exit 69
    }
done
repo=$(cd "$(dirname "$0")/.." && pwd)
scratch=()
trap 'rm -rf "${scratch[@]}"' EXIT

make_base() {
    # the slim Debian root filesystem (scripts/make_base_rootfs.sh), imported as BASE_IMAGE
    local rootfs
    rootfs=$(mktemp -d /var/tmp/ketamine-dti-base.XXXXXX)
    scratch+=("$rootfs")
    bash "$repo/scripts/make_base_rootfs.sh" "$rootfs" "$SUITE"
    echo "== import $BASE_IMAGE"
    if command -v podman > /dev/null; then
        tar -C "$rootfs" -c . | podman import - "$BASE_IMAGE" > /dev/null
    else  # buildah alone (it has no import command): unpack the tarball into an empty image
        local ctr
        tar -C "$rootfs" -cf "$rootfs.tar" . && scratch+=("$rootfs.tar")
        ctr=$(buildah from scratch)
        buildah add "$ctr" "$rootfs.tar" / > /dev/null
        buildah commit --rm "$ctr" "$BASE_IMAGE" > /dev/null
    fi
}

if [ "$REBUILD_BASE" = 1 ] || ! buildah inspect --type image "$BASE_IMAGE" > /dev/null 2>&1; then
    make_base
else
    echo "== reusing base $BASE_IMAGE (--rebuild-base to make it again)"
fi

ca_args=()
if [ -r "$HOST_CA" ]; then
    ca_args=(-v "$HOST_CA:$CA_IN_BUILD:ro" --build-arg "PIP_CERT=$CA_IN_BUILD")
fi

echo "== build $TAG from $repo"
start=$(date +%s)
(
    cd "$repo"
    buildah bud --isolation chroot --network host \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "IMAGE_TAG=$TAG" "${ca_args[@]}" \
        -t "$TAG" .
)
echo "== built $TAG in $(($(date +%s) - start)) s"
buildah images "$TAG"

if [ -n "$ARCHIVE" ]; then
    rm -f "$ARCHIVE"
    buildah push "$TAG" "docker-archive:$ARCHIVE:$TAG"
    echo "== wrote $ARCHIVE; apptainer build ketamine-dti.sif docker-archive://$ARCHIVE"
fi
