#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The checks a kernel reviewer runs, on the project's own files; exits
# non-zero on any finding:
#   checkpatch.pl --strict   kernel C and headers, and make patches' series
#   W=1                      the modules, rebuilt from clean
#   sparse (C=2)             the modules
#   kernel-doc -Wall         the uapi header
#   shell scripts            shellcheck
#   QEMU's checkpatch.pl     the QEMU patch series (qemu/patches)
#   docutils                 Documentation/ renders without a warning

set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"
cd "$VBP_ROOT" || exit 1

ksrc=$VBP_KSRC_DIR
vhost_inc=$ksrc/drivers/vhost
[ -e "$KDIR/drivers/vhost/vhost.h" ] && vhost_inc=$KDIR/drivers/vhost
kbuild=(make -s -C "$KDIR" M="$VBP_ROOT" CONFIG_VHOST_BLK_POLL=m
	CONFIG_VIRTIO_BLK_POLL=m VBP_VHOST_INC="$vhost_inc")

# step NAME CMD...: run a check, show its findings indented, then
# "lint: NAME: clean" or "lint: NAME: FAILED".
step() {
	local name=$1 log

	shift
	log=$(mktemp)
	if "$@" > "$log" 2>&1; then
		echo "lint: $name: clean"
	else
		sed 's/^/    /' "$log"
		echo "lint: $name: FAILED"
	fi
	rm -f "$log"
}

mapfile -t kernel_c < <(git ls-files -- '*.c' '*.h')
mapfile -t shell < <(git ls-files -- '*.sh' .ci/run \
		     tools/testing/selftests/vhost_blk/vm-run)

checkpatch() {
	local f rc=0

	for f in "${kernel_c[@]}"; do
		"$ksrc/scripts/checkpatch.pl" --strict --no-tree --terse \
			--show-types -f "$f" || rc=1
	done
	return $rc
}

# A build whose output holds no warning (kbuild prints them, it does not
# fail on them).
build_quiet() {
	local out rc

	out=$("${kbuild[@]}" "$@" modules 2>&1)
	rc=$?
	echo "$out"
	[ $rc = 0 ] && ! grep -Eq 'warning:|error:' <<< "$out"
}

# From clean, so every file is compiled; this leaves the modules built as
# "make" does.
build_clean() {
	"${kbuild[@]}" clean >/dev/null 2>&1
	build_quiet "$@"
}

# The series of make patches, as a maintainer would check it.
series() {
	"$here/patches.sh" >/dev/null &&
		"$ksrc/scripts/checkpatch.pl" --strict --no-tree -q \
			"$VBP_BUILD"/patches/*.patch
}

# The kernel C files: checkpatch, then the two builds, which share the
# build tree.
kernel_checks() {
	step checkpatch checkpatch
	step "W=1" build_clean W=1
	if command -v sparse >/dev/null; then
		# C=2 checks every file, compiled again or not.
		step sparse build_quiet C=2 CHECK="sparse -Wbitwise -Wno-decl"
	else
		echo "lint: sparse: not installed (make deps)"
		echo "lint: sparse: FAILED"
	fi
}

# The rest, which reads only the sources.
other_checks() {
	step "checkpatch (make patches)" series
	step kernel-doc "$ksrc/scripts/kernel-doc" -none -Wall include/uapi/linux/vhost_blk.h
	step shellcheck shellcheck -x "${shell[@]}"
	step "QEMU checkpatch" qemu/build.sh -c
	step docs scripts/docs.py Documentation "$VBP_BUILD/docs"
}

# The two run side by side (each about half the time); the kernel checks'
# report follows the other's, which is shown as it comes.
reports=$(mktemp -d)
kernel_checks > "$reports/kernel" 2>&1 &
other_checks 2>&1 | tee "$reports/other"
wait
cat "$reports/kernel"
mapfile -t failed < <(sed -n 's/^lint: \(.*\): FAILED$/\1/p' \
			  "$reports/other" "$reports/kernel")
rm -rf "$reports"

if [ ${#failed[@]} -gt 0 ]; then
	echo "lint: failed: ${failed[*]}"
	exit 1
fi
echo "lint: all clean"
