#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# make patches: the drivers as a git format-patch series for a Linux 6.12
# tree, in build/patches/:
#   1  vhost_blk_poll: drivers/vhost/blk_poll.c, its uapi header
#      include/uapi/linux/vhost_blk.h, Kconfig and Makefile entries,
#      MAINTAINERS
#   2  virtio_blk_poll: drivers/block/virtio_blk_poll.c, the same
# The series is made against the files of Debian's kernel source package
# (scripts/env.sh), taken into a scratch git repository; it applies to that
# tree with "git apply" or "patch -p1".  The Kconfig and Makefile entries
# are those of drivers/*/Kconfig and Makefile here, placed next to their
# neighbours (vhost-vsock, virtio_blk).
#
# scripts/patches.sh --check DIR: also apply the series to a tree extracted
# from the source package into DIR (once; kept for the next run) and build
# the two directories there (M=drivers/vhost, M=drivers/block, every module
# of them) with the drivers enabled, Debian's configuration otherwise, and
# the drivers' files once more with W=1.  make check's "intree" suite runs
# it.

set -eEuo pipefail
# A step that fails says which.
trap 'echo "patches: line $LINENO: $BASH_COMMAND: exit $?" >&2' ERR

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"

out=$VBP_BUILD/patches
work=$VBP_BUILD/patches.git
changed=(MAINTAINERS drivers/vhost/Kconfig drivers/vhost/Makefile
	 drivers/block/Kconfig drivers/block/Makefile)

die() {
	echo "patches: $*" >&2
	exit 1
}

[ -r "$VBP_SRC_TARBALL" ] || die "$VBP_SRC_TARBALL missing (make deps)"
command -v git >/dev/null || die "git is not installed"
version=$(vbp_ksrc_version) || die "no $VBP_KSRC_PKG"

# The author of the series: the project's last commit.
author=$(git -C "$VBP_ROOT" log -1 --format='%an <%ae>' 2>/dev/null) ||
	die "$VBP_ROOT is not a git checkout"
date=$(git -C "$VBP_ROOT" log -1 --format=%aD)
export GIT_AUTHOR_NAME=${author% <*} GIT_AUTHOR_EMAIL=${author##*<}
GIT_AUTHOR_EMAIL=${GIT_AUTHOR_EMAIL%>}
export GIT_COMMITTER_NAME=$GIT_AUTHOR_NAME GIT_COMMITTER_EMAIL=$GIT_AUTHOR_EMAIL
export GIT_AUTHOR_DATE=$date GIT_COMMITTER_DATE=$date

# insert FILE LINE-REGEX TEXT: TEXT (and an empty line) before the first line
# matching the extended regex; dies naming the file and the regex if none
# does.  The regex and the text reach awk through its environment, where
# every awk (gawk, mawk, busybox) takes them as they are: "awk -v" would
# interpret their backslashes first, and each awk does that differently.
insert() {
	edit_at "$1" "$2" "$3" before
}

# append_after FILE LINE-REGEX TEXT: TEXT after the first matching line.
append_after() {
	edit_at "$1" "$2" "$3" after
}

edit_at() {
	VBP_RE=$2 VBP_TEXT=$3 VBP_WHERE=$4 awk '
		BEGIN { re = ENVIRON["VBP_RE"]; before = ENVIRON["VBP_WHERE"] == "before" }
		!done && before && $0 ~ re { print ENVIRON["VBP_TEXT"]; print ""; done = 1 }
		{ print }
		!done && !before && $0 ~ re { print ENVIRON["VBP_TEXT"]; done = 1 }
		END { exit !done }' "$1" > "$1.new" ||
		die "no line of ${1#"$work"/} matches /$2/ (inserting $4 it)"
	mv "$1.new" "$1"
}

# Our Kconfig or Makefile without its SPDX line.
body() {
	sed '1{/SPDX-License-Identifier/d}' "$VBP_ROOT/$1"
}

commit() {
	git -C "$work" add -A
	git -C "$work" commit -q -s -F -
}

rm -rf "$work" "$out"
mkdir -p "$work"
git -C "$work" init -q
tar -xJf "$VBP_SRC_TARBALL" -C "$work" --strip-components=1 \
	"${changed[@]/#/$VBP_SRC_TOP/}"
git -C "$work" add -A
git -C "$work" commit -q -m "Linux $version ($VBP_KSRC_PKG): the files the series changes"
base=$(git -C "$work" rev-parse HEAD)

mkdir -p "$work/include/uapi/linux"
cp "$VBP_ROOT/include/uapi/linux/vhost_blk.h" "$work/include/uapi/linux/"
cp "$VBP_ROOT/drivers/vhost/blk_poll.c" "$work/drivers/vhost/"
insert "$work/drivers/vhost/Kconfig" '^config VHOST_VDPA$' "$(body drivers/vhost/Kconfig)"
append_after "$work/drivers/vhost/Makefile" '^vhost_vsock-y' "
$(body drivers/vhost/Makefile)"
insert "$work/MAINTAINERS" '^VIRTIO HOST \(VHOST-SCSI\)$' "VIRTIO HOST (VHOST-BLK-POLL)
M:	$author
L:	virtualization@lists.linux.dev
S:	Maintained
F:	drivers/vhost/blk_poll.c
F:	include/uapi/linux/vhost_blk.h"
commit <<'EOF'
vhost: add vhost_blk_poll, virtio-blk served by polling workers

A virtio-blk device in the host kernel: /dev/vhost-blk-poll, one device
per open.  A virtual machine monitor drives it with the standard vhost
ioctls and three of its own, in the new uapi header <linux/vhost_blk.h>:
attach or detach the backing block device or file, pin the worker of a
vring to a CPU, and set the serial number the guest reads.  Requests
are served from a block device or a regular file with asynchronous
direct I/O on the guest's pages, by one vhost worker per virtqueue.

While a ring has work its worker keeps the guest's notifications off and
polls the avail ring and the completions; after the vring's busyloop
timeout without work it turns them on, checks the ring once more and
sleeps.  It interrupts the guest only when the guest asks for it.  On a
block device with poll queues the worker submits polled I/O and reaps it
itself.  VHOST_BLK_SET_VRING_CPU pins a worker so that its I/O goes to the
hardware queue of that CPU.

Every request from the guest is checked; malformed ones are answered
with IOERR or UNSUPP, a corrupt ring stops with vq_err().  Counters per
vring are in debugfs.
EOF

cp "$VBP_ROOT/drivers/block/virtio_blk_poll.c" "$work/drivers/block/"
insert "$work/drivers/block/Kconfig" '^config BLK_DEV_RUST_NULL$' "$(body drivers/block/Kconfig)"
append_after "$work/drivers/block/Makefile" '^obj-\$\(CONFIG_VIRTIO_BLK\)' "$(body drivers/block/Makefile)"
insert "$work/MAINTAINERS" '^VIRTIO CONSOLE DRIVER$' "VIRTIO BLOCK POLLING DRIVER
M:	$author
L:	virtualization@lists.linux.dev
S:	Maintained
F:	drivers/block/virtio_blk_poll.c"
commit <<'EOF'
virtio_blk_poll: add a virtio-blk driver that polls its completions

A blk-mq driver for virtio-blk devices with one virtqueue per CPU whose
completions can be reaped without interrupts: in "poll" mode the
virtqueue callbacks stay disabled and completions are taken in the
submission path and by a poller while requests are in flight; "hybrid"
polls while busy and falls back to interrupts when idle; "irq" behaves as
virtio_blk.  The mode is set per disk in sysfs.  Poll queues serve
io_uring IOPOLL.  What the device writes into the used ring is checked.

The disks are named vbp<N>, so that the driver can run next to
virtio_blk.
EOF

mkdir -p "$out"
git -C "$work" format-patch -q --no-signature -o "$out" "$base"
ls "$out"

[ "${1:-}" = --check ] || exit 0
tree=${2:?"usage: $0 [--check DIR]"}

# A tree of the source package, extracted once; the files the series
# touches are restored before it is applied again.
stamp=$tree/.vbp-version
if [ "$(cat "$stamp" 2>/dev/null)" != "$version" ]; then
	echo "patches: extracting $VBP_KSRC_PKG $version into $tree"
	rm -rf "$tree"
	mkdir -p "$tree"
	tar -xJf "$VBP_SRC_TARBALL" -C "$tree" --strip-components=1
	echo "$version" > "$stamp"
fi
tar -xJf "$VBP_SRC_TARBALL" -C "$tree" --strip-components=1 \
	"${changed[@]/#/$VBP_SRC_TOP/}"
mapfile -t added < <(git -C "$work" diff --name-only --diff-filter=A "$base")
rm -f "${added[@]/#/$tree/}"
(cd "$tree" && git apply --whitespace=error-all "$out"/*.patch) ||
	die "the series does not apply to $tree"
echo "patches: the series applies to $VBP_KSRC_PKG $version"

config=/boot/config-$KVER
[ -r "$config" ] || die "$config missing (make deps)"
cp "$config" "$tree/.config"
"$tree/scripts/config" --file "$tree/.config" --disable MODULE_SIG \
	--disable DEBUG_INFO_BTF --module VHOST_BLK_POLL --module VIRTIO_BLK_POLL \
	--enable VIRTIO_BLK_POLL_FAULT_INJECTION
make -s -C "$tree" olddefconfig
for c in VHOST_BLK_POLL=m VIRTIO_BLK_POLL=m VIRTIO_BLK_POLL_FAULT_INJECTION=y; do
	grep -qx "CONFIG_$c" "$tree/.config" || die "CONFIG_$c is not set in the tree"
done
make -s -C "$tree" -j"$(nproc)" modules_prepare
# The kernel's exported symbols, for modpost, from the headers package of
# the same build.
cp "$KDIR/Module.symvers" "$tree/Module.symvers" ||
	die "no $KDIR/Module.symvers (make deps)"
# The two directories as kbuild builds them with the tree's configuration
# (every module there, ours among them, modpost included), then our two
# files again with W=1.  Neither may warn.
objs=(drivers/vhost/blk_poll.o drivers/block/virtio_blk_poll.o)
{
	make -C "$tree" -j"$(nproc)" M=drivers/vhost modules &&
	make -C "$tree" -j"$(nproc)" M=drivers/block modules &&
	rm -f "${objs[@]/#/$tree/}" &&
	make -C "$tree" -j"$(nproc)" W=1 "${objs[@]}"
} > "$out/build.log" 2>&1 || { tail -n 30 "$out/build.log"; die "the in-tree build failed (see $out/build.log)"; }
# Compiler and modpost findings (the tools kbuild builds first, such as
# genksyms, have warnings of their own in their generated parsers).
if grep -E '\.[ch]:[0-9]+:([0-9]+:)? (warning|error):|(WARNING|ERROR): modpost' \
	"$out/build.log"; then
	die "the in-tree build warns (see $out/build.log)"
fi
for m in drivers/vhost/vhost_blk_poll.ko drivers/block/virtio_blk_poll.ko; do
	[ -s "$tree/$m" ] || die "the in-tree build made no $m"
done
echo "patches: built in $tree: vhost_blk_poll.ko, virtio_blk_poll.ko"
