#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Install everything the project needs from Debian's archive (run as root).
# Idempotent: installs only what is missing and prints what it installs.

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"

if [ "$(id -u)" -ne 0 ]; then
	echo "deps: must run as root (it installs Debian packages)" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
installed() {
	dpkg-query -W -f '${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

apt_install() {
	local missing=() p

	for p in "$@"; do
		installed "$p" || missing+=("$p")
	done
	if [ ${#missing[@]} -eq 0 ]; then
		return 0
	fi
	echo "deps: installing ${missing[*]}"
	apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# Source packages (QEMU's, for qemu/) come from deb-src entries matching the
# binary ones.
src_list=/etc/apt/sources.list.d/vhost-blk-poll-src.sources
if [ ! -e "$src_list" ]; then
	if [ -e /etc/apt/sources.list.d/debian.sources ]; then
		echo "deps: adding deb-src entries in $src_list"
		sed -n 's/^Types:[[:space:]]*deb$/Types: deb-src/; /^#/d; p' \
			/etc/apt/sources.list.d/debian.sources > "$src_list"
	elif grep -qs '^deb ' /etc/apt/sources.list; then
		src_list=/etc/apt/sources.list.d/vhost-blk-poll-src.list
		echo "deps: adding deb-src entries in $src_list"
		sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > "$src_list"
	fi
fi

echo "deps: apt-get update"
apt-get update -q >/dev/null

mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/packages.txt")
apt_install "${pkgs[@]}" "$VBP_KSRC_PKG"

# Image, headers and source must be the same version: derive it from the
# source package now installed.
KVER=$(vbp_kver)
# A point release reaches the archive unsigned first; its signed image (the
# same kernel and modules) follows days later.  Either serves.
image=linux-image-$KVER
if ! installed "$image" &&
   { installed "$image-unsigned" ||
     ! apt-cache show "$image" 2>/dev/null | grep -q '^Filename:'; }; then
	image=$image-unsigned
fi
apt_install "$image" "linux-headers-$KVER"

echo "deps: kernel $KVER ($(vbp_ksrc_version)), all packages present"
