#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The debug kernel of make check KERNEL=debug: Linux from Debian's source
# package (the same version the project targets) with KASAN, lockdep,
# kmemleak and the other checkers of scripts/debug-kernel.config.  Built
# once per source version and configuration into $VBP_CACHE/kernel/, its
# modules installed in /lib/modules/<release>/ (where vm-run finds them).
#
#   scripts/debug-kernel.sh          build and install it if needed
#   scripts/debug-kernel.sh --env    then print KVER=, KDIR= and VBP_VMLINUZ=
#                                    for make check

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"

say() { echo "debug-kernel: $*" >&2; }
die() { say "$*"; exit 1; }

[ -r "$VBP_SRC_TARBALL" ] || die "$VBP_SRC_TARBALL missing (make deps)"
version=$(vbp_ksrc_version) || die "no $VBP_KSRC_PKG (make deps)"
# One tree per source version, with the configuration it was built for
# (and the recipe: a new number when the way of building changes).  A
# change reconfigures the tree, and Kbuild rebuilds what the change touches.
recipe=1
key=$( (echo "$recipe"; cat "$here/debug-kernel.config") | sha256sum | cut -c1-12)
dir=$VBP_CACHE/kernel/$version
src=$dir/src
out=$dir/build
image=$out/arch/x86/boot/bzImage

# One build at a time.
mkdir -p "$VBP_CACHE/kernel"
exec 9>"$VBP_CACHE/kernel/.lock"
flock 9

t0=$(date +%s)
if [ ! -e "$dir/extracted" ]; then
	rm -rf "$dir"
	mkdir -p "$src" "$out"
	say "extracting $VBP_KSRC_PKG $version"
	tar -xJf "$VBP_SRC_TARBALL" -C "$src" --strip-components=1
	: > "$dir/extracted"
fi
if [ "$(cat "$dir/key" 2>/dev/null)" != "$key" ]; then
	rm -f "$dir/key" "$dir/release"
	say "configuring (x86_64_defconfig, kvm_guest.config, debug-kernel.config)"
	make -s -C "$src" O="$out" x86_64_defconfig kvm_guest.config >&2
	"$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" \
		"$here/debug-kernel.config" >/dev/null
	make -s -C "$src" O="$out" olddefconfig >&2
	# Every option asked for must have been taken.
	missing=$(grep -E '^CONFIG_[A-Z0-9_]+=' "$here/debug-kernel.config" |
		  grep -vxFf "$out/.config" || true)
	[ -z "$missing" ] || die "options not taken: $(echo "$missing" | tr '\n' ' ')"
	say "building with $(nproc) jobs (about half an hour on two cores from scratch)"
	make -s -C "$src" O="$out" -j"$(nproc)" bzImage modules >&2
	make -s -C "$src" O="$out" kernelrelease > "$dir/release"
	echo "$key" > "$dir/key"
	say "built $(cat "$dir/release") in $(( $(date +%s) - t0 )) s"
fi
release=$(cat "$dir/release")
if [ "$(cat "$dir/installed" 2>/dev/null)" != "$key" ] ||
   [ ! -e "/lib/modules/$release/modules.dep" ] ||
   [ "$(readlink -f "/lib/modules/$release/build")" != "$(readlink -f "$out")" ]; then
	say "installing the modules of $release"
	rm -rf "/lib/modules/$release"
	make -s -C "$src" O="$out" INSTALL_MOD_STRIP=1 modules_install >&2
	echo "$key" > "$dir/installed"
fi
if [ "${1:-}" = --env ]; then
	echo "KVER=$release KDIR=$out VBP_VMLINUZ=$image"
fi
