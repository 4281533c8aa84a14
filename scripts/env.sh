#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# shellcheck disable=SC2034 # the variables are for the scripts that source this
#
# The facts every script of the project derives its paths from, defined once.
# Source it from bash, or run it to print one value: scripts/env.sh KVER
#
# The target kernel is Debian's 6.12 LTS.  Its exact version is never written
# down: it is whatever version of the kernel source package is installed (or,
# before anything is installed, the version the archive offers), so image,
# headers, modules and the vhost.h taken from the source always match.

VBP_KSRC_PKG=linux-source-6.12
VBP_KFLAVOUR=amd64
VBP_ABI_SUFFIX=+deb12

vbp_ksrc_version() {
	local v

	v=$(dpkg-query -W -f '${Version}' "$VBP_KSRC_PKG" 2>/dev/null) || v=
	[ -n "$v" ] || v=$(apt-cache policy "$VBP_KSRC_PKG" 2>/dev/null |
			   awk '/Candidate:/ { print $2 }')
	[ -n "$v" ] && [ "$v" != "(none)" ] || return 1
	echo "$v"
}

# 6.12.117-1~deb12u1 -> 6.12.117+deb12-amd64
vbp_kver() {
	local v

	v=$(vbp_ksrc_version) || return 1
	echo "${v%%-*}${VBP_ABI_SUFFIX}-${VBP_KFLAVOUR}"
}

# QEMU with vhost-blk-pci (qemu/) is the 10.0 series, QEMU's stable branch
# in bookworm-backports and in Debian 13.  Its source is the newest 10.0
# point release the archive has (Debian 13's); the packages that need a
# newer version than Debian 12 has come from the backports (name/backports
# in scripts/packages.txt).
VBP_QEMU_SERIES=10.0
VBP_BACKPORTS=bookworm-backports
# Where QEMU sources come from besides the backports.
VBP_QEMU_SRC_SUITES=trixie

VBP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VBP_BUILD=${VBP_BUILD:-$VBP_ROOT/build}
VBP_CACHE=${VBP_CACHE:-/var/cache/vhost-blk-poll}
VBP_SRC_TARBALL=/usr/src/${VBP_KSRC_PKG}.tar.xz
VBP_SRC_TOP=${VBP_KSRC_PKG}
# Kernel sources the out-of-tree build and the tools need, taken from the tarball.
VBP_KSRC_DIR=$VBP_BUILD/ksrc
KVER=${KVER:-$(vbp_kver || true)}
KDIR=${KDIR:-/usr/src/linux-headers-$KVER}
VBP_VMLINUZ=${VBP_VMLINUZ:-/boot/vmlinuz-$KVER}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	for _v in "$@"; do
		eval "echo \"\${$_v}\""
	done
fi
