#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The mini-VMM tests (vhost_blk_vmm_test) on every kind of backend: a
# regular file on tmpfs, a memory-backed null_blk, a brd RAM disk and a loop
# device; and the same guest side over vhost-user, against
# qemu-storage-daemon's vhost-user-blk export of a file.

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
vbp_require_root

VMM_TEST=$VBP_SELFTEST_DIR/vhost_blk_vmm_test
rc=0
tmp=$(mktemp -d)
loopdev=
qsd=
# The dm-delay target of the slow flushes, while it is there.
hol_dev=

nullb=$VBP_NULLB_CONFIG/vbpbad
# The polled null_blk, in MiB, the size of the other disks.
NULLB_MIB=64

# shellcheck disable=SC2317 # called by the trap
cleanup() {
	[ -n "$qsd" ] && kill "$qsd" && wait "$qsd"
	mountpoint -q "$tmp/flushfs" && umount "$tmp/flushfs"
	[ -n "$hol_dev" ] && dmsetup remove --noudevsync vbpdelay
	vbp_nullb_remove vbpflush
	[ -n "$loopdev" ] && losetup -d "$loopdev"
	vbp_nullb_remove vbpbad
	vbp_nullb_remove vbppoll
	vbp_nullb_remove vbpslow
	vbp_nullb_remove vbpwc
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

# vhost-user: qemu-storage-daemon serves a file on tmpfs, two queues; the
# tests check the file directly.  Sockets that are not vhost-user need no
# daemon.
echo "# backend: vhost-user, qemu-storage-daemon"
if command -v qemu-storage-daemon >/dev/null; then
	truncate -s 64M "$tmp/vu.img"
	qemu-storage-daemon \
		--blockdev "driver=file,node-name=disk,filename=$tmp/vu.img,cache.direct=on,aio=native,locking=off" \
		--export "type=vhost-user-blk,id=vu,node-name=disk,addr.type=unix,addr.path=$tmp/vu.sock,writable=on,num-queues=2" \
		> "$tmp/qsd.log" 2>&1 &
	qsd=$!
	if vbp_wait_for "$tmp/vu.sock"; then
		VBP_TEST_DIR="$tmp" VBP_TEST_VHOST_USER="$tmp/vu.sock" \
			VBP_TEST_VHOST_USER_IMG="$tmp/vu.img" \
			"$VMM_TEST" -f vhost_user -f vhost_user_bad || rc=$KSFT_FAIL
	else
		echo "# qemu-storage-daemon did not start:"
		sed 's/^/#   /' "$tmp/qsd.log"
		rc=$KSFT_FAIL
	fi
	kill "$qsd" && wait "$qsd"
	qsd=
else
	echo "# SKIP vhost-user with qemu-storage-daemon: not installed (make deps)"
	VBP_TEST_DIR="$tmp" "$VMM_TEST" -f vhost_user_bad || rc=$KSFT_FAIL
fi

# Two submission queues and two poll queues: per-CPU hctxs, polled I/O.
vbp_polled_nullb vbppoll $NULLB_MIB || exit "$KSFT_FAIL"
run "null_blk" bdev VBP_TEST_DIR="$tmp" VBP_TEST_BDEV=/dev/vbppoll

# null_blk's fault injection, where the kernel has it
# (CONFIG_BLK_DEV_NULL_BLK_FAULT_INJECTION, as make check KERNEL=debug's
# does): requests the backend loses, which the block layer times out
# (after 1 s here), and dispatches it sends back to be made again.
inject=$VBP_NULLB_CONFIG/vbppoll
if [ -d "$inject/timeout_inject" ]; then
	timeout_ms=$(cat /sys/block/vbppoll/queue/io_timeout)
	echo 1000 > /sys/block/vbppoll/queue/io_timeout
	echo "# backend: null_blk with fault injection"
	VBP_TEST_BDEV=/dev/vbppoll \
		VBP_TEST_TIMEOUT_INJECT="$inject/timeout_inject" \
		VBP_TEST_REQUEUE_INJECT="$inject/requeue_inject" \
		"$VMM_TEST" -r vmm.bdev.backend_timeouts \
		-r vmm.bdev.backend_requeues || rc=$KSFT_FAIL
	echo 0 > "$inject/timeout_inject/probability"
	echo 0 > "$inject/requeue_inject/probability"
	echo "$timeout_ms" > /sys/block/vbppoll/queue/io_timeout
else
	echo "# SKIP null_blk fault injection: not in this kernel (CONFIG_BLK_DEV_NULL_BLK_FAULT_INJECTION)"
fi

modprobe loop || exit "$KSFT_FAIL"
modprobe brd rd_nr=1 rd_size=65536 || exit "$KSFT_FAIL"
vbp_wait_for /dev/ram0 || exit "$KSFT_FAIL"
run "brd" bdev VBP_TEST_DIR="$tmp" VBP_TEST_BDEV=/dev/ram0

truncate -s 64M "$tmp/loop.img"
loopdev=$(losetup --find --show --direct-io=on "$tmp/loop.img") ||
	exit "$KSFT_FAIL"
run "loop" bdev VBP_TEST_DIR="$tmp" VBP_TEST_BDEV="$loopdev"

# Requests that stay in flight: a null_blk that completes after 5 ms, by
# a timer, while a migration starts logging.
vbp_polled_nullb vbpslow $NULLB_MIB poll_queues=0 irqmode=2 \
	completion_nsec=5000000 || exit "$KSFT_FAIL"
echo "# backend: null_blk completing after 5 ms"
VBP_TEST_BDEV=/dev/vbpslow "$VMM_TEST" -r vmm.bdev.dirty_log_in_flight \
	-r vmm.bdev_event_idx.dirty_log_in_flight || rc=$KSFT_FAIL
vbp_nullb_remove vbpslow || rc=$KSFT_FAIL

# A polled null_blk with a volatile write cache: a flush is a request of
# its own, which a queue freeze holds back, and write-through writes are
# sent FUA.
vbp_polled_nullb vbpwc $NULLB_MIB cache_size=16 || exit "$KSFT_FAIL"
echo "# backend: polled null_blk with a write cache"
VBP_TEST_BDEV=/dev/vbpwc "$VMM_TEST" \
	-r vmm.bdev.queue_freeze_while_polling \
	-r vmm.bdev.write_through_fua || rc=$KSFT_FAIL
vbp_nullb_remove vbpwc || rc=$KSFT_FAIL

# A null_blk whose sectors 8192-8199 fail, made through configfs: I/O
# errors of the backend fail exactly the requests that meet them.
BAD_SECTOR=8192
# Polled requests meet the errors too: written in full, then the bad
# blocks set.
vbp_polled_nullb vbpbad $NULLB_MIB || exit "$KSFT_FAIL"
echo "+$BAD_SECTOR-$((BAD_SECTOR + 7))" > "$nullb/badblocks"
# The disk is named after the configfs item.
baddev=/dev/$(basename "$nullb")
echo "# backend: null_blk with bad blocks"
VBP_TEST_BDEV=$baddev VBP_TEST_BAD_SECTOR=$BAD_SECTOR \
	"$VMM_TEST" -r vmm.bdev.backend_io_errors || rc=$KSFT_FAIL
vbp_nullb_remove vbpbad || rc=$KSFT_FAIL

# Device mapper on the first null_blk: sectors 8192-8207 of an "error"
# target (every I/O fails), then of a "flakey" one that fails only writes.
# dmsetup runs without udev here.
export DM_DISABLE_UDEV=1
dm_dev() {
	echo "/dev/dm-$(dmsetup info -c --noheadings -o minor "$1")"
}
if ! command -v dmsetup >/dev/null || ! modprobe dm-mod ||
   ! modprobe dm-flakey; then
	echo "# SKIP device mapper: no dmsetup or no dm-mod/dm-flakey module"
else
	for kind in error flakey; do
		target=error writes=
		if [ $kind = flakey ]; then
			# Up for 0 s, down for 1: always failing writes.
			target="flakey /dev/vbppoll $BAD_SECTOR 0 1 1 error_writes"
			writes=1
		fi
		dmsetup create --noudevsync vbpdm <<-EOT || { rc=$KSFT_FAIL; continue; }
			0 $BAD_SECTOR linear /dev/vbppoll 0
			$BAD_SECTOR 16 $target
			$((BAD_SECTOR + 16)) $((NULLB_MIB * 2048 - BAD_SECTOR - 16)) linear /dev/vbppoll $((BAD_SECTOR + 16))
		EOT
		dev=$(dm_dev vbpdm)
		vbp_wait_for "$dev" || rc=$KSFT_FAIL
		echo "# backend: device mapper, $kind at $BAD_SECTOR-$((BAD_SECTOR + 15))"
		VBP_TEST_BDEV=$dev VBP_TEST_BAD_SECTOR=$BAD_SECTOR \
			VBP_TEST_BAD_COUNT=16 VBP_TEST_BAD_WRITES=$writes \
			"$VMM_TEST" -r vmm.bdev.backend_io_errors || rc=$KSFT_FAIL
		dmsetup remove --noudevsync vbpdm || rc=$KSFT_FAIL
	done
fi

# Requests behind a slow flush on their ring: a dm-delay target that
# delays its flushes by FLUSH_MS and nothing else, over a null_blk with a
# volatile write cache (a disk without one is sent no flush); then a file
# on ext4 on that target, whose fsync ends in such a flush.  The file
# system is made and taken down while the target delays nothing.
FLUSH_MS=2000
# hol_delay MS: the target's flushes delayed by MS from now on.
hol_delay() {
	local nullb=/dev/vbpflush sectors=$((NULLB_MIB * 2048))

	dmsetup load --noudevsync vbpdelay --table \
		"0 $sectors delay $nullb 0 0 $nullb 0 0 $nullb 0 $1" &&
		dmsetup resume --noudevsync vbpdelay
}
# hol_run KIND: the tests of requests behind a slow flush, polled and
# notified, on a variant of the backend kind without and with the ring
# features.
hol_run() {
	local v t tests=()

	for v in "" _event_idx_indirect; do
		for t in polling notified; do
			tests+=(-r "vmm.$1$v.reads_pass_slow_flush_$t")
		done
	done
	"$VMM_TEST" "${tests[@]}"
}
if ! command -v dmsetup >/dev/null || ! modprobe dm-mod ||
   ! modprobe dm-delay; then
	echo "# SKIP requests behind a slow flush: no dmsetup or no dm-delay module"
else
	vbp_polled_nullb vbpflush $NULLB_MIB cache_size=16 || exit "$KSFT_FAIL"
	dmsetup create --noudevsync vbpdelay --notable || exit "$KSFT_FAIL"
	hol_delay "$FLUSH_MS" || exit "$KSFT_FAIL"
	hol_dev=$(dm_dev vbpdelay)
	vbp_wait_for "$hol_dev" || exit "$KSFT_FAIL"
	echo "# backend: device mapper, flushes delayed by $FLUSH_MS ms"
	VBP_TEST_BDEV=$hol_dev VBP_TEST_FLUSH_MS=$FLUSH_MS hol_run bdev ||
		rc=$KSFT_FAIL
	if ! command -v mkfs.ext4 >/dev/null || ! modprobe ext4; then
		echo "# SKIP a file behind a slow flush: no mkfs.ext4 or no ext4 module"
	else
		mkdir "$tmp/flushfs"
		hol_delay 0 &&
			mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 \
				"$hol_dev" &&
			mount -t ext4 "$hol_dev" "$tmp/flushfs" &&
			hol_delay "$FLUSH_MS" || exit "$KSFT_FAIL"
		echo "# backend: file on ext4 on device mapper, flushes delayed by $FLUSH_MS ms"
		VBP_TEST_DIR=$tmp/flushfs VBP_TEST_FLUSH_MS=$FLUSH_MS \
			hol_run file || rc=$KSFT_FAIL
		hol_delay 0 && umount "$tmp/flushfs" || rc=$KSFT_FAIL
	fi
	dmsetup remove --noudevsync vbpdelay || rc=$KSFT_FAIL
	hol_dev=
	vbp_nullb_remove vbpflush || rc=$KSFT_FAIL
fi

# A null_blk removed through configfs while it is the backend.
vbp_polled_nullb vbpbad $NULLB_MIB || exit "$KSFT_FAIL"
echo "# backend: null_blk, removed while attached"
VBP_TEST_BDEV=$baddev VBP_TEST_REMOVE="echo 0 > $nullb/power && rmdir $nullb" \
	"$VMM_TEST" -r vmm.bdev.backend_removed || rc=$KSFT_FAIL
exit "$rc"
