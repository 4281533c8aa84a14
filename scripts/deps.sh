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

# name/backports: the backports' version of name (or a newer one).
backport_installed() {
	local name=${1%/*} have want

	installed "$name" || return 1
	have=$(dpkg-query -W -f '${Version}' "$name")
	want=$(apt-cache madison "$name" |
	       awk -F' *[|] *' -v s="$VBP_BACKPORTS/" 'index($3, s) { print $2; exit }')
	[ -n "$want" ] && dpkg --compare-versions "$have" ge "$want"
}

apt_install() {
	local missing=() p

	for p in "$@"; do
		case $p in
		*/backports)
			backport_installed "$p" ||
				missing+=("${p%/*}/$VBP_BACKPORTS") ;;
		*)
			installed "$p" || missing+=("$p") ;;
		esac
	done
	if [ ${#missing[@]} -eq 0 ]; then
		return 0
	fi
	echo "deps: installing ${missing[*]}"
	apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# deb-src entries matching the binary ones: the source of Debian's own
# QEMU, whose TCG plugin API the instruction counter is built against
# (qemu/build.sh -p).
deb_src=/etc/apt/sources.list.d/vhost-blk-poll-src.sources
if [ ! -e "$deb_src" ]; then
	if [ -e /etc/apt/sources.list.d/debian.sources ]; then
		echo "deps: adding deb-src entries in $deb_src"
		sed -n 's/^Types:[[:space:]]*deb$/Types: deb-src/; /^#/d; p' \
			/etc/apt/sources.list.d/debian.sources > "$deb_src"
	elif grep -qs '^deb ' /etc/apt/sources.list; then
		deb_src=/etc/apt/sources.list.d/vhost-blk-poll-src.list
		echo "deps: adding deb-src entries in $deb_src"
		sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > "$deb_src"
	fi
fi

# The backports (binary packages, installed only where named), and the
# QEMU sources (qemu/build.sh), from the mirror the system uses.
src_list=/etc/apt/sources.list.d/vhost-blk-poll-qemu.sources
mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null |
	 grep -v security | head -n 1)
[ -n "$mirror" ] ||
	mirror=$(awk '$1 == "deb" && $2 !~ /security/ { print $2; exit }' \
		 /etc/apt/sources.list 2>/dev/null)
mirror=${mirror:-http://deb.debian.org/debian}
want="Types: deb deb-src
URIs: $mirror
Suites: $VBP_BACKPORTS
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: $mirror
Suites: $VBP_QEMU_SRC_SUITES
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
if [ "$(cat "$src_list" 2>/dev/null)" != "$want" ]; then
	echo "deps: adding $VBP_BACKPORTS and the QEMU sources in $src_list"
	printf '%s\n' "$want" > "$src_list"
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
