#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# make demo: a guest doing I/O through vhost-blk-pci.
#
# Boots a VM (L1) with this machine's kernel and root file system, loads
# vhost_blk_poll there, and starts the patched QEMU (make qemu) with a guest
# (L2) whose disk is vhost-blk-pci on a memory-backed null_blk, or on
# DEMO_BACKEND (a raw image or block device of this machine, handed to L1 as
# a disk; its contents are overwritten).  L2 loads virtio_blk_poll in poll
# mode and runs a short fio with crc32c verification; then both VMs shut
# down.  Progress lines show the time since the start; the last line is
#   demo: <N> IOPS, <k> kicks/req, <s> signals/req, <i> guest irqs/req, data verified
# with the kicks and signals the host module counted and the vq interrupts
# L2 took, per request.  The whole log is in build/demo/demo.log.
#
# The same script runs each stage: without argument on this machine, with
# "l1" in L1 and with "l2" in L2.

set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"
st=$VBP_ROOT/tools/testing/selftests/vhost_blk
# shellcheck source=tools/testing/selftests/vhost_blk/lib.sh
. "$st/lib.sh"

STATS_MNT=/run/vbpstats
SERIAL=demo
BACKEND_SERIAL=demo-backend
# Poll budget of the disk's virtqueues: L2 runs under emulation inside an
# emulated machine, where the gap between two requests is far longer than
# the module's default of 50 us (with KVM the default fits).
POLL_US=${DEMO_POLL_US:-1000000}

say() {
	echo "demo: $*"
}

die() {
	echo "demo: FAILED: $*"
	exit 1
}

# L2: virtio_blk_poll in poll mode, fio with verification, the counters.
stage_l2() {
	local b v q size mode r0 k0 s0 r1 k1 s1 i0 i1 out rd wr r

	say "L2: booted; loading virtio_blk_poll mode=poll"
	vbp_stats_mount $STATS_MNT ||
		die "L2 cannot read the host module's counters"
	vbp_load_guest mode=poll || die "cannot load virtio_blk_poll"
	# Shell builtins: each program started costs seconds in L2.
	b=$(vbp_disk_by_serial $SERIAL vbp) || die "no disk with serial $SERIAL"
	v=$(vbp_virtio_of "$b")
	q=("/sys/block/$b/mq/"*)
	read -r size < "/sys/block/$b/size"
	read -r mode < "/sys/block/$b/completion_mode"
	say "L2: /dev/$b: $((size / 2048)) MiB, ${#q[@]} queue(s), completion mode $mode"
	read -r r0 k0 s0 < <(vbp_host_counters $STATS_MNT)
	i0=$(vbp_vq_irqs "$v")
	say "L2: fio: 4 KiB random read/write, queue depth 16, 2 MiB, crc32c verification"
	out=$(fio --name=demo --filename="/dev/$b" --direct=1 --bs=4k \
		--ioengine=libaio --iodepth=16 --rw=randrw --size=2M \
		--verify=crc32c --verify_fatal=1 --verify_state_save=0 \
		--output-format=terse \
		--terse-version=3 2>&1) || { echo "$out"; die "fio or its verification failed"; }
	i1=$(vbp_vq_irqs "$v")
	read -r r1 k1 s1 < <(vbp_host_counters $STATS_MNT)
	read -r rd wr < <(awk -F';' 'NF > 50 { print $8, $49 }' <<< "$out")
	r=$((r1 - r0))
	[ "$r" -gt 0 ] || die "the host module counted no request"
	awk -v n=$((rd + wr)) -v r=$r -v k=$((k1 - k0)) -v s=$((s1 - s0)) \
		-v i=$((i1 - i0)) 'BEGIN {
		printf "demo: %d IOPS, %.4f kicks/req, %.4f signals/req, %.4f guest irqs/req, data verified\n",
		       n, k / r, s / r, i / r }'
	say "L2: $r requests, $((k1 - k0)) kicks, $((s1 - s0)) signals, $((i1 - i0)) vq interrupts"
	vbp_unload_guest
	say "L2: shutting down"
}

# L1: the module, the backend, and L2 on vhost-blk-pci.
stage_l1() {
	local backend b rc

	say "L1: booted; loading vhost_blk_poll"
	vbp_load_host || die "cannot load vhost_blk_poll"
	vbp_wait_for "$VBP_DEV" || die "no $VBP_DEV"
	if [ -n "${DEMO_BACKEND:-}" ]; then
		modprobe virtio_blk
		b=$(vbp_disk_by_serial $BACKEND_SERIAL vd) || die "DEMO_BACKEND is not in L1"
		backend=/dev/$b
		say "L1: backend $backend (DEMO_BACKEND=$DEMO_BACKEND)"
	else
		modprobe null_blk nr_devices=1 queue_mode=2 submit_queues=2 \
			gb=1 memory_backed=1 || die "cannot create a null_blk"
		backend=/dev/nullb0
		vbp_wait_for $backend || die "no $backend"
		say "L1: backend $backend (null_blk, 1 GiB in memory, 2 queues)"
	fi
	say "L1: starting L2: $(basename "$VBP_DEMO_QEMU") -device vhost-blk-pci,backend=$backend,num-queues=2,poll-us=$POLL_US"
	"$st/vm-run" -q "$VBP_DEMO_QEMU" -c 1 -m 1G -t 1500 \
		-a -device -a "vhost-blk-pci,backend=$backend,serial=$SERIAL,num-queues=2,poll-us=$POLL_US" \
		-a -virtfs -a "$(vbp_stats_share)" \
		-- "$here/demo.sh" l2
	rc=$?
	[ "$rc" = 0 ] || die "L2 ended with $rc"
	say "L1: L2 is down; unloading vhost_blk_poll"
	vbp_unload_host || die "vhost_blk_poll does not unload"
	[ -z "${DEMO_BACKEND:-}" ] && rmmod null_blk
	say "L1: shutting down"
}

stage_host() {
	local t0 qemu log out args=() line result=''

	t0=$(date +%s)
	for c in fio busybox cpio qemu-system-x86_64; do
		command -v "$c" >/dev/null || die "$c is missing: run make deps first (as root)"
	done
	[ -r "$VBP_VMLINUZ" ] || die "no kernel $VBP_VMLINUZ: run make deps first (as root)"
	out=$VBP_BUILD/demo
	mkdir -p "$out"
	log=$out/demo.log
	: > "$log"
	progress() {
		printf 'demo: [%4d s] %s\n' $(( $(date +%s) - t0 )) "$*" | tee -a "$log"
	}
	progress "QEMU with vhost-blk-pci (make qemu; about 7 minutes the first time)"
	# Its phases and steps shown, the rest of what it says in the log.
	"$VBP_ROOT/qemu/build.sh" 2>&1 >"$out/qemu.path" | while IFS= read -r line; do
		case "$line" in
		qemu:*) progress "$line" ;;
		*) printf '%s\n' "$line" >>"$log" ;;
		esac
	done || die "make qemu failed (see $log)"
	qemu=$(cat "$out/qemu.path")
	progress "QEMU: $qemu"
	if [ -n "${DEMO_BACKEND:-}" ]; then
		[ -e "$DEMO_BACKEND" ] || die "DEMO_BACKEND=$DEMO_BACKEND does not exist"
		[ -b "$DEMO_BACKEND" ] || [ -f "$DEMO_BACKEND" ] ||
			die "DEMO_BACKEND=$DEMO_BACKEND is neither a block device nor a file"
		args=(-a -drive -a "file=$DEMO_BACKEND,format=raw,if=none,id=backend,cache=none"
		      -a -device -a "virtio-blk-pci,drive=backend,serial=$BACKEND_SERIAL"
		      -e "DEMO_BACKEND=$DEMO_BACKEND")
	fi
	progress "booting L1 (this machine's kernel and root, $(accel_name "$("$st/vm-run" --accel)")); L2 boots inside it"
	while IFS= read -r line; do
		echo "$line" >> "$log"
		case "$line" in
		"demo: "[0-9]*" IOPS, "*) result=$line ;;
		"demo: FAILED"*) echo "$line" ;;
		"demo: "*) progress "${line#demo: }" ;;
		esac
	done < <(cd "$st" && "$st/vm-run" -c 2 -m 3G -t 2400 \
		-e "VBP_DEMO_QEMU=$qemu" -e "DEMO_POLL_US=$POLL_US" "${args[@]}" \
		-- "$here/demo.sh" l1 2>&1; echo "vm-run exit $?")
	if ! grep -q '^vm-run exit 0$' "$log" || [ -z "$result" ]; then
		tail -n 30 "$log"
		die "see $log"
	fi
	progress "done"
	echo "$result"
}

accel_name() {
	case "$1" in
	kvm) echo "KVM" ;;
	*) echo "software emulation: several minutes" ;;
	esac
}

case "${1:-}" in
l1) stage_l1 ;;
l2) stage_l2 ;;
"") stage_host ;;
*) echo "usage: $0" >&2; exit 2 ;;
esac
