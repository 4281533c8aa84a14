#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The modules under DKMS (dkms.conf), so that they are built for the kernel
# and rebuilt when it is updated.  As root:
#
#   scripts/dkms.sh [install]  copy the module sources to
#                              /usr/src/<name>-<version>, then dkms add,
#                              build and install for KVER (scripts/env.sh:
#                              Debian's 6.12 unless given)
#   scripts/dkms.sh remove     dkms remove and the copied sources
#
# DKMS_ROOT=<dir> keeps all of it (sources, DKMS's tree, the installed
# modules) below that directory, the system's module tree untouched; the
# tests use it.  The modules are then in
# $DKMS_ROOT/modules/$KVER/updates/dkms/.  Either way DKMS signs them with
# its own key (/var/lib/dkms/mok.key, made once), as for any DKMS module.

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"

conf=$VBP_ROOT/dkms.conf
name=$(sed -n 's/^PACKAGE_NAME="\(.*\)"$/\1/p' "$conf")
version=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"$/\1/p' "$conf")
# What the module build needs, and no build products.
files=(Makefile Kbuild dkms.conf drivers include scripts/env.sh scripts/ksrc.sh)

die() {
	echo "dkms: $*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root"
command -v dkms >/dev/null || die "dkms is not installed (make deps)"
if [ -z "$name" ] || [ -z "$version" ]; then
	die "no PACKAGE_NAME or PACKAGE_VERSION in $conf"
fi
[ -n "$KVER" ] || die "no kernel version (make deps)"

opts=()
src=/usr/src
tree=/var/lib/dkms
if [ -n "${DKMS_ROOT:-}" ]; then
	src=$DKMS_ROOT/src
	tree=$DKMS_ROOT/dkms
	mkdir -p "$src" "$tree" "$DKMS_ROOT/modules/$KVER"
	opts=(--sourcetree "$src" --dkmstree "$tree"
	      --installtree "$DKMS_ROOT/modules" --no-depmod)
fi
dest=$src/$name-$version

remove() {
	if dkms status "${opts[@]}" -m "$name" -v "$version" | grep -q .; then
		dkms remove "${opts[@]}" -m "$name" -v "$version" --all
	fi
	rm -rf "$dest"
}

install() {
	remove
	mkdir -p "$dest"
	tar -C "$VBP_ROOT" --exclude='*.o' --exclude='*.ko' --exclude='*.mod' \
		--exclude='*.mod.c' --exclude='.*.cmd' --exclude=modules.order \
		-cf - "${files[@]}" | tar -C "$dest" -xf -
	dkms add "${opts[@]}" -m "$name" -v "$version"
	dkms build "${opts[@]}" -m "$name" -v "$version" -k "$KVER" ||
		die "build failed; its log: $tree/$name/$version/build/make.log"
	dkms install "${opts[@]}" -m "$name" -v "$version" -k "$KVER"
	dkms status "${opts[@]}" -m "$name" -v "$version"
}

case "${1:-install}" in
install) install ;;
remove) remove ;;
*) echo "usage: $0 [install|remove]" >&2; exit 2 ;;
esac
