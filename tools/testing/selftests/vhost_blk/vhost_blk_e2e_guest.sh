#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The L2 half of vhost_blk_e2e.sh: runs in a guest whose disks are
# vhost-blk-pci devices served by vhost_blk_poll in the VM that runs it.
# Results go to standard output as lines "e2e: ok DESCRIPTION" or
# "e2e: not ok DESCRIPTION", which vhost_blk_e2e.sh turns into its TAP.
#
# E2E_DISKS names the disks by serial, the last one file-backed; E2E_POLLED
# is the disk whose virtqueues the host polls with a budget of E2E_POLL_US.
# E2E_TOPO is "SERIAL PHYSICAL-BLOCK MIN-IO OPT-IO" (bytes) of one more disk,
# a block device whose topology the guest must see.
# The module's counters of the host are in its 9p share of them (lib.sh:
# vbp_stats_share), mounted here to read them.
#
# The first boot (VMRUN_BOOT=1) checks the stock virtio_blk driver, then
# virtio_blk_poll in poll mode (with each, a resize: the guest says "e2e:
# resize SERIAL to BYTES" for the host to set the size of the device whose
# id is SERIAL), writes a marker and
# reboots the guest; the
# second checks the disks again after the reset, then keeps I/O running and
# says "e2e: kill the VMM now" for the host to SIGKILL QEMU under it.
#
# In a guest emulated inside an emulated machine every program started
# costs seconds (fio, with its 60 libraries, a minute): the checks use the
# shell's builtins and the static busybox where they can, and one fio run
# covers every disk.

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
vbp_require_root

STATS=/run/vbpstats
MIB=1048576
MARK_OFF=32		# MiB: past what the other checks touch
read -r -a DISKS <<< "${E2E_DISKS:?}"
POLLED=${E2E_POLLED:?}
POLL_US=${E2E_POLL_US:?}
bb=busybox

# run DESCRIPTION COMMAND...: one test; its output becomes comments.
run() {
	local desc=$1 line rc=1

	shift
	while IFS= read -r line; do
		case "$line" in
		"e2e-rc="*) rc=${line#e2e-rc=} ;;
		*) echo "# $line" ;;
		esac
	done < <("$@" 2>&1; echo "e2e-rc=$?")
	if [ "$rc" = 0 ]; then
		echo "e2e: ok $desc"
	else
		echo "e2e: not ok $desc"
	fi
}

# DISK[serial]: the disk (vdX or vbpN) of each serial.
declare -A DISK
find_disks() {
	local s

	DISK=()
	for s in "${DISKS[@]}"; do
		DISK[$s]=$(vbp_disk_by_serial "$s") ||
			{ echo "no disk with serial $s"; return 1; }
	done
}

attr() {
	local v

	read -r v < "/sys/block/$1/$2"
	echo "$v"
}

# Config space as the driver sees it: serial, capacity, queues, cache,
# and the topology of E2E_TOPO's disk.
check_disks() {
	local s b q want got ok=0

	find_disks || return 1
	for s in "${DISKS[@]}"; do
		b=${DISK[$s]}
		q=("/sys/block/$b/mq/"*)
		echo "$b: serial '$(attr "$b" serial)', $(attr "$b" size) sectors," \
		     "${#q[@]} queue(s), cache '$(attr "$b" queue/write_cache)'"
		[ "$(attr "$b" size)" -gt 0 ] || ok=1
	done
	read -r s want <<< "${E2E_TOPO:?}"
	b=$(vbp_disk_by_serial "$s") || { echo "no disk with serial $s"; return 1; }
	got="$(attr "$b" queue/physical_block_size) $(attr "$b" queue/minimum_io_size) $(attr "$b" queue/optimal_io_size)"
	echo "$b: physical block, minimum and optimal I/O size $got (the backend's: $want)"
	[ "$got" = "$want" ] || ok=1
	return $ok
}

# Random 4 KiB writes on every disk at once, each job checking what it wrote
# (crc32c); prints each disk's IOPS.
verify_fio() {
	local s args=() out

	for s in "${DISKS[@]}"; do
		args+=(--name="$s" --filename="/dev/${DISK[$s]}")
	done
	out=$(fio --direct=1 --bs=4k --size=1M --ioengine=libaio --iodepth=16 \
		--rw=randwrite --verify=crc32c --verify_fatal=1 \
		--verify_state_save=0 --output-format=terse --terse-version=3 \
		"${args[@]}" 2>&1) || { echo "$out"; echo "fio verify failed"; return 1; }
	awk -F';' 'NF > 50 { printf "%s: write %d IOPS, verify read %d IOPS\n", $3, $49, $8 }' <<< "$out"
}

check_fio() {
	find_disks && verify_fio
}

# Discard, write zeroes (exactly the range), flush, and the guest's cache
# mode switched to write-through and back (config-wce).
check_discard_flush() {
	local s b dev ct ok=0

	find_disks || return 1
	$bb dd if=/dev/urandom of=/tmp/pat bs=$MIB count=3 2>/dev/null
	$bb dd if=/dev/zero of=/tmp/zero bs=$MIB count=1 2>/dev/null
	for s in "${DISKS[@]}"; do
		b=${DISK[$s]}
		dev=/dev/$b
		[ "$(attr "$b" queue/discard_max_bytes)" -gt 0 ] ||
			{ echo "$b: no discard"; ok=1; }
		$bb blkdiscard -o 0 -l $((4 * MIB)) "$dev" || { echo "$b: discard failed"; ok=1; }
		$bb dd if=/tmp/pat of="$dev" bs=$MIB count=3 oflag=direct 2>/dev/null ||
			{ echo "$b: write failed"; ok=1; }
		blkdiscard -z -o $MIB -l $MIB "$dev" ||
			{ echo "$b: write zeroes failed"; ok=1; }
		$bb dd if="$dev" of=/tmp/back bs=$MIB count=3 iflag=direct 2>/dev/null
		$bb cmp -n $MIB /tmp/back /tmp/zero $MIB 0 ||
			{ echo "$b: zeroed range not zero"; ok=1; }
		$bb cmp -n $MIB /tmp/back /tmp/pat ||
			{ echo "$b: data before the zeroed range changed"; ok=1; }
		$bb cmp /tmp/back /tmp/pat $((2 * MIB)) $((2 * MIB)) ||
			{ echo "$b: data after the zeroed range changed"; ok=1; }
		$bb dd if=/tmp/pat of="$dev" bs=64k count=4 oflag=direct conv=fsync \
			2>/dev/null || { echo "$b: write + fsync failed"; ok=1; }
		ct=/sys/block/$b/cache_type
		[ "$(attr "$b" cache_type)" = "write back" ] ||
			{ echo "$b: cache '$(attr "$b" cache_type)'"; ok=1; }
		echo "write through" > "$ct" || { echo "$b: cannot set write through"; ok=1; }
		[ "$(attr "$b" queue/write_cache)" = "write through" ] ||
			{ echo "$b: write_cache '$(attr "$b" queue/write_cache)'"; ok=1; }
		$bb dd if=/tmp/pat of="$dev" bs=64k count=4 oflag=direct 2>/dev/null ||
			{ echo "$b: write-through write failed"; ok=1; }
		echo "write back" > "$ct" || ok=1
		[ "$(attr "$b" cache_type)" = "write back" ] || ok=1
	done
	echo "discard, write zeroes, flush and cache modes on ${DISKS[*]}"
	return $ok
}

# Interrupts taken by the request virtqueues of every disk.
vq_irqs() {
	local s v=()

	for s in "${DISKS[@]}"; do
		v+=("$(vbp_virtio_of "${DISK[$s]}")")
	done
	vbp_vq_irqs "${v[@]}"
}

# virtio_blk_poll in poll mode: the verified fio on every disk, with the
# host module's kicks and signals on the polled disk and the guest's vq
# interrupts counted around it.
check_polled_fio() {
	local h0 h1 i0 i1 r k s irqs

	find_disks || return 1
	[ "$(attr "${DISK[$POLLED]}" completion_mode)" = poll ] || return 1
	read -r -a h0 < <(vbp_host_counters "$STATS" "$POLL_US")
	i0=$(vq_irqs)
	verify_fio || return 1
	i1=$(vq_irqs)
	read -r -a h1 < <(vbp_host_counters "$STATS" "$POLL_US")
	r=$((h1[0] - h0[0]))
	k=$((h1[1] - h0[1]))
	s=$((h1[2] - h0[2]))
	irqs=$((i1 - i0))
	echo "$POLLED: $r requests, $k kicks, $s signals; $irqs vq interrupts in the guest" \
	     "($(awk -v r=$r -v k=$k -v s=$s 'BEGIN {
		printf "%.4f kicks/req, %.4f signals/req", k / r, s / r }'))"
	[ "$r" -ge 512 ] || { echo "too few requests counted"; return 1; }
	awk -v r=$r -v k=$k -v s=$s 'BEGIN { exit !(k / r < 0.05 && s / r < 0.05) }' &&
		[ "$irqs" = 0 ]
}

# A marker on the file-backed disk, found again after the reboot.
write_marker() {
	find_disks || return 1
	$bb dd if=/dev/urandom of="$VMRUN_OUT/marker" bs=$MIB count=1 2>/dev/null &&
		$bb dd if="$VMRUN_OUT/marker" of="/dev/${DISK[${DISKS[-1]}]}" bs=$MIB \
			seek=$MARK_OFF oflag=direct conv=fsync 2>/dev/null
}

check_after_reboot() {
	local b

	load_poll || return 1
	b=${DISK[${DISKS[-1]}]}
	$bb dd if="/dev/$b" of=/tmp/marker bs=$MIB skip=$MARK_OFF count=1 \
		iflag=direct 2>/dev/null
	$bb cmp /tmp/marker "$VMRUN_OUT/marker" ||
		{ echo "$b: the marker written before the reboot is not there"; return 1; }
	echo "$b: the marker written before the reboot is there"
	verify_fio
}

# sectors DISK: its capacity as the guest sees it.
sectors() {
	attr "$1" size
}

# size_is DISK SECTORS
size_is() {
	[ "$(sectors "$1")" = "$2" ]
}

# Resize: the host sets the file-backed disk's size (qom-set), the guest
# must see it grow, keep what it writes past the old end, see it shrink
# again, and get nothing past the new end.
check_resize() {
	local s=${DISKS[-1]} b old grown

	find_disks || return 1
	b=${DISK[$s]}
	old=$(sectors "$b")
	grown=$((old + 32 * MIB / 512))
	echo "e2e: resize $s to $((grown * 512))"
	vbp_until 120 size_is "$b" "$grown" ||
		{ echo "$b: still $(sectors "$b") sectors, not $grown"; return 1; }
	echo "$b: grew from $old to $grown sectors in $vbp_waited s"
	if ! { $bb dd if=/dev/urandom of=/tmp/past bs=$MIB count=1 2>/dev/null &&
	       $bb dd if=/tmp/past of="/dev/$b" bs=$MIB seek=$((old / 2048)) \
			oflag=direct conv=fsync 2>/dev/null &&
	       $bb dd if="/dev/$b" of=/tmp/past.back bs=$MIB skip=$((old / 2048)) \
			count=1 iflag=direct 2>/dev/null &&
	       $bb cmp /tmp/past /tmp/past.back; }; then
		echo "$b: what was written past the old end does not read back"
		return 1
	fi
	echo "$b: 1 MiB past the old end written and read back"
	echo "e2e: resize $s to $((old * 512))"
	vbp_until 120 size_is "$b" "$old" ||
		{ echo "$b: still $(sectors "$b") sectors, not $old"; return 1; }
	echo "$b: shrank back to $old sectors in $vbp_waited s"
	if [ "$($bb dd if="/dev/$b" bs=4096 skip=$((old / 8)) count=1 \
		iflag=direct 2>/dev/null | $bb wc -c)" != 0 ]; then
		echo "$b: a read past the shrunk end returned data"
		return 1
	fi
	echo "$b: a read past the shrunk end returns nothing"
}

load_poll() {
	vbp_loaded virtio_blk && rmmod virtio_blk
	vbp_load_guest mode=poll || return 1
	check_disks
}

vbp_stats_mount "$STATS" ||
	{ echo "e2e: cannot mount the host's counters"; exit 1; }

case "${VMRUN_BOOT:-1}" in
1)
	modprobe virtio_blk
	run "virtio_blk: disks with serial, capacity and topology from vhost-blk-pci" check_disks
	run "virtio_blk: verified fio on every disk" check_fio
	run "virtio_blk: discard, write zeroes, flush, cache mode" check_discard_flush
	run "virtio_blk: a resize of the backend reaches the guest, both ways" check_resize
	run "virtio_blk_poll mode=poll: disks with serial, capacity and topology" load_poll
	run "virtio_blk_poll mode=poll: verified fio on every disk; kicks and signals per request below 0.05, no vq interrupt" \
		check_polled_fio
	run "virtio_blk_poll mode=poll: discard, write zeroes, flush, cache mode" \
		check_discard_flush
	run "virtio_blk_poll mode=poll: a resize of the backend reaches the guest, both ways" \
		check_resize
	write_marker || echo "# cannot write the marker"
	echo "# rebooting the guest"
	echo b > /proc/sysrq-trigger
	$bb sleep 600
	echo "e2e: the guest did not reboot"
	exit 1
	;;
2)
	run "after a guest reboot the devices are reset and work: data kept, verified fio" \
		check_after_reboot
	find_disks || exit 1
	b=${DISK[$POLLED]}
	read -r -a st0 < "/sys/block/$b/stat"
	fio --name=busy --filename="/dev/$b" --direct=1 --bs=4k \
		--ioengine=libaio --iodepth=32 --rw=randwrite --time_based \
		--runtime=900 >/dev/null 2>&1 &
	# Once fio is writing (its startup takes a while here).
	for _ in $($bb seq 600); do
		read -r -a st < "/sys/block/$b/stat"
		[ "${st[4]}" -gt $((st0[4] + 100)) ] && break
		$bb sleep 1
	done
	echo "# $b: $((st[4] - st0[4])) writes done"
	echo "e2e: kill the VMM now"
	wait
	echo "e2e: the VMM was not killed"
	;;
esac
