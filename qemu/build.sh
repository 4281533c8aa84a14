#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Build qemu-system-x86_64 with the vhost-blk-pci device, and the
# qemu-storage-daemon of the same source (make bench's vhost-user-blk):
# Debian's QEMU source package of the series VBP_QEMU_SERIES (scripts/env.sh)
# with Debian's own patches, then the series in qemu/patches, configured for
# x86_64-softmmu only.
#
# The binaries are kept in $VBP_CACHE/qemu/<source version>-<hash>/, where the
# hash covers the series and the configuration, so that a second run finds
# it and builds nothing.  The source package is fetched with
# "apt-get source" (make deps adds the deb-src entries) into
# $VBP_CACHE/qemu/src when it is not there yet.  Progress goes to standard
# error (each phase, and the build's steps done of the total every few
# seconds; the tools' output is in the build log); standard output gets one
# line, the binary's path.
#
#   qemu/build.sh           build the binary unless it is cached
#   qemu/build.sh -n        only print the path the binary has, built or not
#                           (qemu-storage-daemon is beside it)
#   qemu/build.sh -f        build again even if it is cached
#   qemu/build.sh -c        check the series with QEMU's scripts/checkpatch.pl
#   qemu/build.sh -p        print the directory of the qemu-plugin.h (the TCG
#                           plugin API) of Debian's qemu-system-x86, which
#                           runs the test VMs, extracting it if needed

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/../scripts/env.sh"

patches=$here/patches
cache=$VBP_CACHE/qemu
srcdir=$cache/src

# Firmware comes from Debian's qemu-system-data, seabios and ipxe-qemu.
# virtfs: the test VMs mount the host's root over 9p (vm-run).
firmware=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu
# Debian's python3: meson and QEMU's build scripts run in a venv of it
# (another python3 earlier in PATH may lack the system's meson).
configure_args=(
	--python=/usr/bin/python3
	--target-list=x86_64-softmmu
	--without-default-features
	--enable-kvm --enable-tcg
	--enable-vhost-kernel --enable-vhost-user
	--enable-linux-aio --enable-linux-io-uring --enable-fdt=system
	--enable-tools --enable-vhost-user-blk-server
	--enable-virtfs --enable-attr --enable-cap-ng
	--disable-docs --disable-werror --disable-install-blobs
	"--firmwarepath=$firmware"
)
# Debian's tarball has no edk2 blobs, which meson would unpack when it finds
# bzip2: the build does without them.
edk2_sed='s/^\( *unpack_edk2_blobs = \)bzip2\.found()$/\1false/'

usage() {
	sed -n '3,/^$/s/^# \{0,1\}//p' "$0" >&2
	exit 2
}

die() {
	echo "qemu: $*" >&2
	exit 1
}

only_print=0
force=0
checkpatch=0
plugin_api=0
while getopts nfcph opt; do
	case $opt in
	n) only_print=1 ;;
	f) force=1 ;;
	c) checkpatch=1 ;;
	p) plugin_api=1 ;;
	*) usage ;;
	esac
done

series() {
	sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$patches/series"
}

# The newest QEMU source of the series apt knows of; without deb-src
# entries, the newest one already downloaded.
in_series() {
	local v=${1#*:}

	[[ "$v" == "$VBP_QEMU_SERIES".* || "$v" == "$VBP_QEMU_SERIES"+* ]]
}

src_version() {
	local v dsc best=''

	while read -r v; do
		in_series "$v" || continue
		if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then
			best=$v
		fi
	done < <(apt-cache showsrc --only-source qemu 2>/dev/null |
		 sed -n 's/^Version: //p')
	if [ -z "$best" ]; then
		for dsc in "$srcdir"/qemu_*.dsc; do
			[ -e "$dsc" ] || continue
			v=$(sed -n 's/^Version: //p' "$dsc")
			in_series "$v" || continue
			if [ -z "$best" ] ||
			   dpkg --compare-versions "$v" gt "$best"; then
				best=$v
			fi
		done
	fi
	[ -n "$best" ] ||
		die "no source of qemu $VBP_QEMU_SERIES: no deb-src entries (make deps)"
	echo "$best"
}

[ -r "$patches/series" ] || die "no $patches/series"
for p in $(series); do
	[ -r "$patches/$p" ] || die "patch $p of the series is missing"
done

version=$(src_version)
upstream=${version#*:}
hash=$({
	printf '%s\n' "${configure_args[@]}" "$edk2_sed"
	for p in $(series); do
		echo "$p"
		cat "$patches/$p"
	done
} | sha256sum | cut -c1-16)
out=$cache/$upstream-$hash
bin=$out/qemu-system-x86_64

dsc=$srcdir/qemu_$upstream.dsc
# The source is fetched once, by one caller at a time (a build may run
# beside -p and -c).
fetch_source() {
	[ -r "$dsc" ] && return 0
	exec 8>"$cache/.fetch-lock"
	flock 8
	if [ ! -r "$dsc" ]; then
		echo "qemu: fetching the source of qemu $version" >&2
		mkdir -p "$srcdir"
		(cd "$srcdir" && apt-get source -q --download-only "qemu=$version") \
			>"$cache/fetch.log" 2>&1 ||
			{ cat "$cache/fetch.log" >&2; die "apt-get source failed"; }
		[ -r "$dsc" ] || die "apt-get source gave no $dsc"
	fi
	exec 8>&-
}

if [ "$only_print" = 1 ]; then
	echo "$bin"
	exit 0
fi

if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
	die "cannot write $cache (run as root, or set VBP_CACHE)"
fi

# from_orig DIR FILE: FILE of the upstream tarball (a path below its top
# directory) into DIR, unless it is there; kept with the source.
from_orig() {
	local dir=$1 file=$2 orig

	[ -r "$dir/${file##*/}" ] && return 0
	fetch_source
	orig=$(sed -n 's/^ [0-9a-f]\{64\} [0-9]* \(.*\.orig\.tar\.[a-z0-9]*\)$/\1/p' "$dsc" | head -n 1)
	mkdir -p "$dir"
	tar -xf "$srcdir/$orig" -C "$dir" \
		--strip-components=$(( $(tr -cd / <<<"$file" | wc -c) + 1 )) \
		--wildcards "*/$file" || die "no $file in $orig"
}

# The plugin API of the QEMU that runs the test VMs (Debian's
# qemu-system-x86: a plugin must match the API version of the QEMU that
# loads it), from that QEMU's source.
if [ "$plugin_api" = 1 ]; then
	version=$(dpkg-query -W -f '${source:Version}' qemu-system-x86 2>/dev/null) ||
		die "qemu-system-x86 is not installed (make deps)"
	upstream=${version#*:}
	dsc=$srcdir/qemu_$upstream.dsc
	from_orig "$srcdir/plugin-api-${upstream%%-*}" include/qemu/qemu-plugin.h
	echo "$srcdir/plugin-api-${upstream%%-*}"
	exit 0
fi

# QEMU's own style checker, from the upstream tarball, kept with the source.
if [ "$checkpatch" = 1 ]; then
	cp_dir=$srcdir/checkpatch-${upstream%%-*}
	from_orig "$cp_dir" scripts/checkpatch.pl
	rc=0
	for p in $(series); do
		"$cp_dir/checkpatch.pl" --no-tree "$patches/$p" || rc=1
	done
	exit $rc
fi

# One build at a time; a second caller waits and then finds the binary.
exec 9>"$cache/.lock"
flock -n 9 || {
	echo "qemu: waiting for the build that holds $cache/.lock" >&2
	flock 9
}

if [ "$force" = 0 ] && [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi

fetch_source

work=$cache/build-$upstream-$hash
log=$cache/build-$upstream-$hash.log
rm -rf "$work"
: > "$log"
t0=$(date +%s)
fail() {
	tail -n 40 "$log" >&2
	die "$* (log: $log)"
}

# build_progress: ninja's output into the log, and its steps done of the
# total to standard error, one line each $progress_s seconds.
progress_s=15
build_progress() {
	local line last=$SECONDS step='' shown=''

	while IFS= read -r line; do
		printf '%s\n' "$line" >>"$log"
		[[ "$line" =~ ^\[([0-9]+/[0-9]+)\]\  ]] || continue
		step=${BASH_REMATCH[1]}
		(( SECONDS - last >= progress_s )) || continue
		last=$SECONDS
		shown=$step
		echo "qemu: building: $step steps" >&2
	done
	[ "$step" = "$shown" ] ||
		echo "qemu: building: $step steps" >&2
}

echo "qemu: extracting $upstream with Debian's patches" >&2
dpkg-source --no-copy -x "$dsc" "$work" >>"$log" 2>&1 || fail "dpkg-source failed"
sed -i "$edk2_sed" "$work/meson.build"
grep -q '^ *unpack_edk2_blobs = false$' "$work/meson.build" ||
	fail "meson.build: the edk2 blobs cannot be switched off"

for p in $(series); do
	echo "qemu: applying $p" >&2
	patch -d "$work" -p1 --forward --batch --no-backup-if-mismatch \
		<"$patches/$p" >>"$log" 2>&1 || fail "$p does not apply"
done

echo "qemu: configuring (log: $log)" >&2
mkdir "$work/build"
(cd "$work/build" && ../configure "${configure_args[@]}") >>"$log" 2>&1 ||
	fail "configure failed"

echo "qemu: building qemu-system-x86_64 and qemu-storage-daemon (several minutes)" >&2
NINJA_STATUS='[%f/%t] ' ninja -C "$work/build" qemu-system-x86_64 \
	storage-daemon/qemu-storage-daemon 2>&1 |
	build_progress || fail "the build failed"

mkdir -p "$out"
cp "$work/build/storage-daemon/qemu-storage-daemon" "$out/qemu-storage-daemon"
cp "$work/build/qemu-system-x86_64" "$bin.tmp"
mv "$bin.tmp" "$bin"
{
	echo "source: qemu $version"
	echo "series:"
	series | sed 's/^/  /'
	echo "configure: ${configure_args[*]}"
	echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(( $(date +%s) - t0 )) s"
} > "$out/info"
mv "$log" "$out/build.log"
rm -rf "$work"
echo "qemu: built in $(( $(date +%s) - t0 )) s" >&2
echo "$bin"
