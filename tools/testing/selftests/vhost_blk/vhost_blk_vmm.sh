#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The mini-VMM tests (vhost_blk_vmm_test) on every kind of backend: a
# regular file on tmpfs, a memory-backed null_blk, a brd RAM disk and a loop
# device.

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
vbp_require_root

VMM_TEST=$VBP_SELFTEST_DIR/vhost_blk_vmm_test
rc=0
tmp=$(mktemp -d)
loopdev=

cleanup() {
	[ -n "$loopdev" ] && losetup -d "$loopdev"
	vbp_loaded null_blk && rmmod null_blk
	vbp_loaded brd && rmmod brd
	vbp_loaded vhost_blk_poll && vbp_unload_host
	rm -rf "$tmp"
}
trap cleanup EXIT

vbp_loaded vhost_blk_poll || vbp_load_host || exit "$KSFT_FAIL"
vbp_wait_for "$VBP_DEV" || exit "$KSFT_FAIL"

# run NAME KIND [VAR=VALUE...]: the mini-VMM tests of the variants of one
# kind of backend (file or bdev), with the ring features on and off.
run() {
	local name=$1 kind=$2 v variants=()

	shift 2
	for v in "" _event_idx _indirect _event_idx_indirect; do
		variants+=(-v "$kind$v")
	done
	echo "# backend: $name"
	env "$@" "$VMM_TEST" "${variants[@]}" || rc=$KSFT_FAIL
}

run "file on tmpfs" file VBP_TEST_DIR="$tmp"

modprobe null_blk nr_devices=1 memory_backed=1 gb=1 queue_mode=2 \
	submit_queues=2 || exit "$KSFT_FAIL"
vbp_wait_for /dev/nullb0 || exit "$KSFT_FAIL"
run "null_blk" bdev VBP_TEST_DIR="$tmp" VBP_TEST_BDEV=/dev/nullb0

modprobe loop || exit "$KSFT_FAIL"
modprobe brd rd_nr=1 rd_size=65536 || exit "$KSFT_FAIL"
vbp_wait_for /dev/ram0 || exit "$KSFT_FAIL"
run "brd" bdev VBP_TEST_DIR="$tmp" VBP_TEST_BDEV=/dev/ram0

truncate -s 64M "$tmp/loop.img"
loopdev=$(losetup --find --show --direct-io=on "$tmp/loop.img") ||
	exit "$KSFT_FAIL"
run "loop" bdev VBP_TEST_DIR="$tmp" VBP_TEST_BDEV="$loopdev"

exit "$rc"
