#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Load, use and unload both modules many times: nothing may leak or warn,
# and bad module parameters are refused.

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
vbp_require_root

CYCLES=20
DEV_TEST=$VBP_SELFTEST_DIR/vhost_blk_dev_test

ktap_print_header
ktap_set_plan 7

for m in vhost_blk_poll virtio_blk_poll; do
	if vbp_loaded $m; then
		rmmod $m || ktap_exit_fail_msg "cannot unload $m"
	fi
done

# Objects in use per slab cache, "cache objects".
slab_snapshot() {
	awk 'NR > 2 { print $1, $2 }' /proc/slabinfo
}

# Objects a cache gained between two snapshots, for caches that gained.
slab_growth() {
	join "$1" "$2" | awk '$3 > $2 { print $1, $3 - $2 }'
}

# Whether every watched cache counts its objects one by one.  SLUB counts
# the slab a CPU allocates from as all in use, so a count moves by whole
# slabs as CPUs take slabs and give them back, by more than a small leak.
# A cache with SLUB debugging on (slub_debug=U on the kernel command line,
# as make check boots its VM) takes no such slabs and counts exactly,
# unless KASAN holds freed objects in its quarantine (where kmemleak, as
# in make check KERNEL=debug's kernel, reports leaks instead).
slab_exact() {
	local c f v debug

	if grep -qw kasan_quarantine_put /proc/kallsyms; then
		SLAB_INEXACT="KASAN's quarantine keeps freed objects"
		return 1
	fi
	SLAB_INEXACT="counts move by whole slabs without SLUB debugging (boot with slub_debug=U)"
	for c in $(watched <(slab_snapshot)); do
		debug=0
		for f in store_user red_zone poison sanity_checks; do
			v=0
			read -r v 2>/dev/null < "/sys/kernel/slab/$c/$f"
			[ "$v" = 1 ] && debug=1
		done
		[ $debug = 1 ] || return 1
	done
}

# slab_traces CACHE...: "cache/site objects" for those of the caches that
# record their callers (store_user), from debugfs.
slab_traces() {
	local d=/sys/kernel/debug/slab c

	[ -d $d ] || mount -t debugfs none /sys/kernel/debug 2>/dev/null
	for c in "$@"; do
		[ -r "$d/$c/alloc_traces" ] || continue
		awk -v c="$c" '/^ *[0-9]+ / { n[$2] += $1 }
			END { for (s in n) print c "/" s, n[s] }' "$d/$c/alloc_traces"
	done | sort
}

# slab_sites TRACES1 TRACES2 CACHE: the five call sites that gained most
# objects of CACHE between two slab_traces.
slab_sites() {
	join -a 2 -e 0 -o 0,1.2,2.2 "$1" "$2" |
		awk -v c="$3/" 'index($1, c) == 1 && $3 > $2 {
			print $3 - $2, substr($1, length(c) + 1) }' |
		sort -rn | head -5
}

# Use the device as a VMM would (owner, features, workers, vrings, kicks)
# and close it.
use_device() {
	"$DEV_TEST" -t open_close_1000 -t workers \
		-t vring_setup_and_kick_without_backend >/dev/null 2>&1
}

host_cycle() {
	vbp_load_host || return 1
	vbp_wait_for "$VBP_DEV" || return 1
	use_device || return 1
	vbp_unload_host || return 1
	[ ! -e "$VBP_DEV" ] || sleep 0.5
	[ ! -e "$VBP_DEV" ]
}

# The caches the module and the vhost core allocate from: kmalloc (every
# object of vhost_blk_poll and vhost), and the worker tasks.  Other caches
# move with the test's own processes (vm_area_struct, dentry, ...).
WATCHED='^(kmalloc-|kmalloc-rnd-|kmalloc-cg-|dma-kmalloc-|task_struct$)'

# The watched caches of a snapshot.
watched() {
	awk -v w="$WATCHED" '$1 ~ w { print $1 }' "$1"
}

# no_steady_growth CMD: run CMD 3 + 2 * CYCLES times; fail if it fails or if
# a watched slab cache gains at least one object per run in both halves, the
# mark of a leak.  Without exact counts, the runs only: exit 4 (skip).
no_steady_growth() {
	local cmd=$1 tmp i rc=0 growth c g1 g2

	tmp=$(mktemp -d)
	for i in $(seq $((2 * CYCLES + 3))); do
		$cmd || { echo "# run $i failed"; rc=1; break; }
		case $i in
		3)
			slab_snapshot | sort > "$tmp/s1" ;;
		$((CYCLES + 3)))
			slab_snapshot | sort > "$tmp/s2"
			# shellcheck disable=SC2046 # one cache name per word
			slab_traces $(watched "$tmp/s2") > "$tmp/t2" ;;
		esac
	done
	if [ $rc = 0 ] && [ $SLAB_EXACT = 1 ]; then
		slab_snapshot | sort > "$tmp/s3"
		# shellcheck disable=SC2046
		slab_traces $(watched "$tmp/s3") > "$tmp/t3"
		slab_growth "$tmp/s1" "$tmp/s2" | sort > "$tmp/g1"
		slab_growth "$tmp/s2" "$tmp/s3" | sort > "$tmp/g2"
		growth=$(join "$tmp/g1" "$tmp/g2" |
			 awk -v n=$CYCLES -v w="$WATCHED" '$1 ~ w &&
			     $2 >= n && $3 >= n { print $1, $2, $3 }')
	fi
	if [ -n "${growth:-}" ]; then
		rc=1
		echo "# slab caches growing with every run (cache round1 round2):"
		while read -r c g1 g2; do
			echo "#   $c $g1 $g2"
			slab_sites "$tmp/t2" "$tmp/t3" "$c" |
				while read -r l; do echo "#     $l"; done
		done <<< "$growth"
	fi
	rm -rf "$tmp"
	[ $rc != 0 ] || [ $SLAB_EXACT = 1 ] || rc=4
	return $rc
}

test_device_use() {
	local rc

	vbp_load_host || return 1
	vbp_wait_for "$VBP_DEV" || return 1
	no_steady_growth use_device
	rc=$?
	vbp_unload_host || return 1
	return $rc
}

test_host_cycles() {
	no_steady_growth host_cycle
}

test_host_vmalloc() {
	local i left

	vbp_load_host || return 1
	vbp_wait_for "$VBP_DEV" || return 1
	for i in 1 2 3; do
		"$DEV_TEST" >/dev/null 2>&1 || { echo "# device test failed"; return 1; }
	done
	left=$(grep -c 'vhost_blk_' /proc/vmallocinfo)
	[ "$left" = 0 ] || grep 'vhost_blk_' /proc/vmallocinfo | sed 's/^/# /'
	vbp_unload_host || return 1
	[ "$left" = 0 ]
}

test_host_params() {
	local p=/sys/module/vhost_blk_poll/parameters/max_queues ok=1 v

	for v in 0 257 -1 abc; do
		if vbp_load_host max_queues=$v 2>/dev/null; then
			echo "# max_queues=$v accepted at load"
			vbp_unload_host
			ok=0
		fi
	done
	vbp_load_host max_queues=4 || return 1
	[ "$(cat $p)" = 4 ] || { echo "# max_queues reads $(cat $p), not 4"; ok=0; }
	for v in 0 257 abc; do
		if echo $v > $p 2>/dev/null; then
			echo "# max_queues=$v accepted through sysfs"
			ok=0
		fi
	done
	echo 256 > $p || { echo "# max_queues=256 refused"; ok=0; }
	[ "$(cat $p)" = 256 ] || ok=0
	vbp_unload_host || return 1
	[ $ok = 1 ]
}

test_guest_alias() {
	modinfo -F alias "$VIRTIO_BLK_POLL_KO" | grep -qx 'virtio:d00000002v\*'
}

# Load with every virtio-blk device bound, read and write each disk in
# both polled and interrupt modes, unload.
guest_cycle() {
	local d b

	vbp_load_guest || return 1
	[ -d /sys/bus/virtio/drivers/virtio_blk_poll ] ||
		{ echo "# driver not registered"; return 1; }
	for d in /sys/bus/virtio/drivers/virtio_blk_poll/virtio*/block/*; do
		[ -e "$d" ] || continue
		b=$(basename "$d")
		vbp_wait_for "/dev/$b" || return 1
		echo poll > "/sys/block/$b/completion_mode" || return 1
		dd if="/dev/$b" of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null ||
			return 1
		echo irq > "/sys/block/$b/completion_mode" || return 1
		[ "$(blockdev --getro "/dev/$b")" = 1 ] && continue
		dd if="/dev/$b" of="/dev/$b" bs=64k count=16 iflag=direct \
			oflag=direct conv=notrunc 2>/dev/null || return 1
	done
	vbp_unload_guest || return 1
	[ ! -d /sys/bus/virtio/drivers/virtio_blk_poll ] ||
		{ echo "# driver still registered"; return 1; }
}

test_guest_cycles() {
	no_steady_growth guest_cycle
}

SLAB_EXACT=1
slab_exact || SLAB_EXACT=0

# slab_test DESCRIPTION FUNCTION: a test of no_steady_growth, skipped with
# the reason when the counts are not exact.
slab_test() {
	local rc

	"$2"
	rc=$?
	if [ $rc = 4 ]; then
		echo "# $1: all runs passed; slab growth not measured: $SLAB_INEXACT"
		ktap_test_skip "$1"
	else
		ktap_test_result "$1" test $rc = 0
	fi
}

slab_test "vhost_blk_poll: $((2 * CYCLES + 3)) rounds of device use, no slab growth" \
	test_device_use
slab_test "vhost_blk_poll: $((2 * CYCLES + 3)) load/use/unload cycles, no slab growth" \
	test_host_cycles
ktap_test_result "vhost_blk_poll: no vmalloc area left after close" \
	test_host_vmalloc
ktap_test_result "vhost_blk_poll: max_queues outside 1-256 refused" \
	test_host_params
ktap_test_result "vhost_blk_poll: device node removed at unload" \
	test ! -e "$VBP_DEV"
ktap_test_result "virtio_blk_poll: module alias for virtio device ID 2" \
	test_guest_alias
slab_test "virtio_blk_poll: $((2 * CYCLES + 3)) load/use/unload cycles with disks, no slab growth" \
	test_guest_cycles
ktap_finished
