#!/usr/bin/env bash
# Make a slim Debian root filesystem for the image's base, for machines without Docker Hub:
# debootstrap's minbase variant, then what Debian's *-slim images leave out (docs, man pages,
# translations, apt lists and .deb caches), with dpkg path excludes and an apt hook so that later
# `apt-get install`s in the Dockerfile stay slim too. Shared by scripts/build_image.sh (buildah)
# and scripts/container_ci.sh (Docker), which import the folder as an image:
#   tar -C ROOTFS -c . | docker import - local/debian:bookworm-minbase
#
#   scripts/make_base_rootfs.sh ROOTFS [SUITE]     # SUITE defaults to bookworm
#
# ROOTFS must not exist or be empty. Needs root and debootstrap (apt-get install -y debootstrap).
# The mirror is the host's own apt mirror (deb.debian.org when it has none).
set -euo pipefail

[ $# -ge 1 ] && [ $# -le 2 ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 64; }
rootfs=$1
suite=${2:-bookworm}
command -v debootstrap > /dev/null || {
    echo "make_base_rootfs.sh: debootstrap not found; run: apt-get install -y debootstrap" >&2
    exit 69
}
if [ -e "$rootfs" ] && [ -n "$(ls -A "$rootfs")" ]; then
    echo "make_base_rootfs.sh: $rootfs is not empty; give a new folder" >&2
    exit 64
fi

mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2> /dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
log=$(mktemp /tmp/make_base_rootfs.XXXXXX.log)
trap 'rm -f "$log"' EXIT
echo "== debootstrap --variant=minbase $suite from $mirror"
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" > "$log" 2>&1 || {
    echo "make_base_rootfs.sh: debootstrap failed; its log ends:" >&2
    tail -20 "$log" >&2
    exit 1
}

cat > "$rootfs/etc/dpkg/dpkg.cfg.d/slim" << 'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" << 'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/{man,info,groff,lintian,locale}/* \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
echo "== $rootfs: $(du -sh "$rootfs" | cut -f1)"
