#!/bin/sh
# Entry point of the ketamine-dti container image (installed as /usr/local/bin/ketamine-dti,
# ketamine-dti-simulate and ketamine-dti-entrypoint): make the run-time caches writable, then
# run the real command from /opt/ketamine-dti/bin.
#
# Why: Singularity/Apptainer (and `docker run --read-only`) mount the image read-only and run it
# as the calling user. numba loads its cache only from a folder it can write to, so the kernels
# compiled at build time in /opt/numba-cache would be ignored and compiled again in every
# process (15-50 s each, measured here). When NUMBA_CACHE_DIR cannot be written, the build-time
# cache is copied once per user and image build into a private folder under $TMPDIR (or /tmp)
# and NUMBA_CACHE_DIR points there. A HOME that cannot be written (matplotlib, nipype and numba
# keep files there) is replaced by a private folder next to it.
set -u

PREBUILT_CACHE=/opt/numba-cache
APP_BIN=/opt/ketamine-dti/bin

warn() { echo "ketamine-dti-entrypoint: $*" >&2; }

is_writable_dir() {  # the test numba itself makes: can a file be created in it?
    [ -d "$1" ] || return 1
    probe=$(mktemp "$1/.write-test.XXXXXX" 2>/dev/null) || return 1
    rm -f "$probe"
}

private_dir() {  # a folder only this user can use; persists across runs on this machine
    tmp_root=${TMPDIR:-/tmp}
    dir="$tmp_root/ketamine-dti-$(id -u)"
    mkdir -m 700 "$dir" 2>/dev/null
    # Refuse a folder planted by someone else (another user could otherwise plant cache files).
    if [ -d "$dir" ] && [ ! -L "$dir" ] && [ -O "$dir" ] && [ "$(stat -c %a "$dir")" = 700 ]; then
        echo "$dir"
    else
        mktemp -d "$tmp_root/ketamine-dti.XXXXXX" 2>/dev/null
    fi
}

if [ -z "${HOME:-}" ] || ! is_writable_dir "$HOME"; then
    if base=$(private_dir) && mkdir -p "$base/home"; then
        export HOME="$base/home"
    else
        warn "HOME (${HOME:-unset}) and ${TMPDIR:-/tmp} are not writable; caches may fail"
    fi
fi

: "${NUMBA_CACHE_DIR:=$PREBUILT_CACHE}"
if ! is_writable_dir "$NUMBA_CACHE_DIR"; then
    build_id=$(cat "$PREBUILT_CACHE/.build-id" 2>/dev/null || echo unknown)
    if base=$(private_dir); then
        target="$base/numba-cache-$build_id"
        if [ ! -d "$target" ] && staging=$(mktemp -d "$base/.numba-cache.XXXXXX"); then
            # Copy, then rename: parallel jobs never see a half-copied cache.
            cp -R "$PREBUILT_CACHE/." "$staging/" && mv -T "$staging" "$target" 2>/dev/null
            rm -rf "$staging"
        fi
        if is_writable_dir "$target"; then
            NUMBA_CACHE_DIR=$target
        else
            warn "could not copy $PREBUILT_CACHE to $target; kernels will be compiled at run time"
        fi
    else
        warn "${TMPDIR:-/tmp} is not writable; kernels will be compiled at run time"
    fi
fi
export NUMBA_CACHE_DIR

name=$(basename "$0")
if [ "$name" = ketamine-dti-entrypoint ]; then
    [ $# -gt 0 ] || { warn "usage: ketamine-dti-entrypoint COMMAND [ARGS...]"; exit 64; }
    exec "$@"
fi
exec "$APP_BIN/$name" "$@"
