#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The L2 half of vhost_blk_e2e.sh: runs in a guest whose disks are
# vhost-blk-pci devices served by vhost_blk_poll in the VM that runs it.
# Results go to standard output as lines "e2e: ok DESCRIPTION" or
# "e2e: not ok DESCRIPTION", which vhost_blk_e2e.sh turns into its TAP.
#
# E2E_DISKS names the disks by serial; E2E_POLLED is the one the polled run
# goes to.  The module's counters of the host are in the 9p share
# "vbpstats" (its debugfs directory), mounted here to read them.
#
# The first boot (VMRUN_BOOT=1) checks the stock virtio_blk driver, then
# virtio_blk_poll in poll mode, writes a marker and reboots the guest; the
# second checks the disks again after the reset, then keeps I/O running and
# says "e2e: kill the VMM now" for the host to SIGKILL QEMU under it.

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
vbp_require_root

STATS=/run/vbpstats
MARK_BYTES=$((1024 * 1024))
MARK_OFF=32		# MiB: past what the fio runs touch
read -r -a DISKS <<< "${E2E_DISKS:?}"
POLLED=${E2E_POLLED:?}

result() {
	if [ "$1" = 0 ]; then
		echo "e2e: ok $2"
	else
		echo "e2e: not ok $2"
	fi
}

# run DESCRIPTION COMMAND...: one test; its output becomes comments.
run() {
	local desc=$1 rc

	shift
	"$@" 2>&1 | sed -u 's/^\([^#]\)/# \1/'
	rc=${PIPESTATUS[0]}
	result "$rc" "$desc"
}

# The disk (sd/vd/vbp name) whose serial is $1.
disk_of() {
	local b

	for b in /sys/block/*; do
		[ "$(cat "$b/serial" 2>/dev/null)" = "$1" ] &&
			{ basename "$b"; return 0; }
	done
	return 1
}

wait_disks() {
	local s i

	for s in "${DISKS[@]}"; do
		for i in $(seq 100); do
			disk_of "$s" >/dev/null && [ -b "/dev/$(disk_of "$s")" ] && break
			sleep 0.1
		done
		disk_of "$s" >/dev/null || { echo "no disk with serial $s"; return 1; }
	done
}

# Interrupts taken by the request virtqueues of the disk $1's device.
vq_irqs() {
	local v

	v=$(basename "$(readlink -f "/sys/block/$1/device")")
	awk -v d="$v-req." 'index($NF, d) == 1 {
		for (i = 2; i < NF; i++) if ($i ~ /^[0-9]+$/) n += $i
	} END { print n + 0 }' /proc/interrupts
}

# "requests kicks signals" of the host module, summed over every vring.
host_counters() {
	cat "$STATS"/*/stats | awk '$1 ~ /^[0-9]+$/ {
		r += $2; k += $3; s += $4 } END { print r + 0, k + 0, s + 0 }'
}

verify_fio() {
	local dev=$1

	shift
	fio --name=e2e --filename="$dev" --direct=1 --bs=4k --size=4M \
		--ioengine=libaio --iodepth=8 --rw=randwrite --verify=crc32c \
		--verify_fatal=1 --output-format=terse --terse-version=3 "$@" |
		awk -F';' 'NF > 50 { printf "write %d IOPS, verify read %d IOPS\n", $49, $8 }'
	[ "${PIPESTATUS[0]}" = 0 ]
}

# Config space as the driver sees it: serial and capacity of every disk.
check_disks() {
	local s b ok=0

	wait_disks || return 1
	for s in "${DISKS[@]}"; do
		b=$(disk_of "$s")
		echo "$b: serial '$(cat "/sys/block/$b/serial")'," \
		     "$(cat "/sys/block/$b/size") sectors," \
		     "$(ls -d "/sys/block/$b/mq/"* | wc -l) queue(s)," \
		     "cache '$(cat "/sys/block/$b/queue/write_cache")'"
		[ "$(cat "/sys/block/$b/size")" -gt 0 ] || ok=1
	done
	return $ok
}

check_fio() {
	local s b ok=0

	for s in "${DISKS[@]}"; do
		b=$(disk_of "$s") || return 1
		echo "$b: $(verify_fio "/dev/$b")" || ok=1
		[ "${PIPESTATUS[0]}" = 0 ] || { echo "$b: fio verify failed"; ok=1; }
	done
	return $ok
}

# Discard, write zeroes (exactly the range), flush, and the guest's cache
# mode switched to write-through and back (config-wce).
check_discard_flush() {
	local s b dev ct ok=0

	dd if=/dev/urandom of=/tmp/pat bs=1M count=3 2>/dev/null
	for s in "${DISKS[@]}"; do
		b=$(disk_of "$s") || return 1
		dev=/dev/$b
		[ "$(cat "/sys/block/$b/queue/discard_max_bytes")" -gt 0 ] ||
			{ echo "$b: no discard"; ok=1; }
		blkdiscard -o 0 -l 4194304 "$dev" || { echo "$b: discard failed"; ok=1; }
		dd if=/tmp/pat of="$dev" bs=1M count=3 oflag=direct 2>/dev/null ||
			{ echo "$b: write failed"; ok=1; }
		blkdiscard -z -o 1048576 -l 1048576 "$dev" ||
			{ echo "$b: write zeroes failed"; ok=1; }
		cmp -n 1048576 <(dd if="$dev" bs=1M skip=1 count=1 iflag=direct 2>/dev/null) \
			/dev/zero >/dev/null || { echo "$b: zeroed range not zero"; ok=1; }
		cmp -n 1048576 <(dd if="$dev" bs=1M count=1 iflag=direct 2>/dev/null) /tmp/pat ||
			{ echo "$b: data before the zeroed range changed"; ok=1; }
		cmp <(dd if="$dev" bs=1M skip=2 count=1 iflag=direct 2>/dev/null) \
			<(dd if=/tmp/pat bs=1M skip=2 count=1 2>/dev/null) ||
			{ echo "$b: data after the zeroed range changed"; ok=1; }
		dd if=/dev/urandom of="$dev" bs=64k count=4 oflag=direct conv=fsync \
			2>/dev/null || { echo "$b: write + fsync failed"; ok=1; }
		ct=/sys/block/$b/cache_type
		[ "$(cat "$ct")" = "write back" ] || { echo "$b: cache '$(cat "$ct")'"; ok=1; }
		echo "write through" > "$ct" || { echo "$b: cannot set write through"; ok=1; }
		[ "$(cat "/sys/block/$b/queue/write_cache")" = "write through" ] || ok=1
		dd if=/dev/urandom of="$dev" bs=64k count=4 oflag=direct,dsync \
			2>/dev/null || { echo "$b: write-through write failed"; ok=1; }
		echo "write back" > "$ct" || ok=1
		[ "$(cat "$ct")" = "write back" ] || ok=1
	done
	echo "discard, write zeroes, flush and cache modes on ${DISKS[*]}"
	return $ok
}

# A polled run on the null_blk disk: the host module counts guest kicks and
# guest signals, the guest its vq interrupts; all near zero.
check_polled() {
	local b h0 h1 i0 i1 r k s irqs

	b=$(disk_of "$POLLED") || return 1
	[ "$(cat "/sys/block/$b/completion_mode")" = poll ] || return 1
	read -r -a h0 < <(host_counters)
	i0=$(vq_irqs "$b")
	fio --name=polled --filename="/dev/$b" --direct=1 --bs=4k \
		--ioengine=libaio --iodepth=16 --numjobs=1 --rw=randrw \
		--size=8M --verify=crc32c --verify_fatal=1 \
		--output-format=terse --terse-version=3 >/tmp/polled.fio ||
		{ echo "fio failed"; cat /tmp/polled.fio; return 1; }
	i1=$(vq_irqs "$b")
	read -r -a h1 < <(host_counters)
	r=$((h1[0] - h0[0]))
	k=$((h1[1] - h0[1]))
	s=$((h1[2] - h0[2]))
	irqs=$((i1 - i0))
	echo "$r requests: $k kicks, $s signals, $irqs guest vq interrupts" \
	     "($(awk -v r=$r -v k=$k -v s=$s -v i=$irqs 'BEGIN {
		printf "%.4f kicks/req, %.4f signals/req, %.4f irqs/req",
		       k / r, s / r, i / r }'))"
	cat "$STATS"/*/stats
	[ "$r" -gt 1000 ] || { echo "too few requests counted"; return 1; }
	awk -v r=$r -v k=$k -v s=$s 'BEGIN { exit !(k / r < 0.05 && s / r < 0.05) }' &&
		[ "$irqs" = 0 ]
}

# A marker on the file-backed disk, found again after the reboot.
write_marker() {
	local b

	b=$(disk_of "${DISKS[-1]}") || return 1
	dd if=/dev/urandom of="$VMRUN_OUT/marker" bs=$MARK_BYTES count=1 2>/dev/null &&
		dd if="$VMRUN_OUT/marker" of="/dev/$b" bs=$MARK_BYTES seek=$MARK_OFF \
			oflag=direct conv=fsync 2>/dev/null
}

check_marker() {
	local b

	b=$(disk_of "${DISKS[-1]}") || return 1
	cmp <(dd if="/dev/$b" bs=$MARK_BYTES skip=$MARK_OFF count=1 iflag=direct 2>/dev/null) \
		"$VMRUN_OUT/marker" && echo "$b: the marker written before the reboot is there"
}

check_after_reboot() {
	load_poll && check_marker && check_fio
}

load_poll() {
	rmmod virtio_blk 2>/dev/null
	vbp_load_guest mode=poll || return 1
	wait_disks
}

mkdir -p "$STATS"
mount -t 9p -o trans=virtio,version=9p2000.L,ro vbpstats "$STATS" ||
	{ echo "e2e: cannot mount the host's counters"; exit 1; }

case "${VMRUN_BOOT:-1}" in
1)
	modprobe virtio_blk
	run "virtio_blk: disks with serial and capacity from vhost-blk-pci" check_disks
	run "virtio_blk: verified fio on every disk" check_fio
	run "virtio_blk: discard, write zeroes, flush, cache mode" check_discard_flush
	run "virtio_blk_poll mode=poll: disks with serial and capacity" load_poll
	run "virtio_blk_poll mode=poll: verified fio on every disk" check_fio
	run "virtio_blk_poll mode=poll: discard, write zeroes, flush, cache mode" \
		check_discard_flush
	run "virtio_blk_poll mode=poll: kicks, signals and vq interrupts per request below 0.05" \
		check_polled
	write_marker || echo "# cannot write the marker"
	echo "# rebooting the guest"
	sync
	echo b > /proc/sysrq-trigger
	sleep 60
	echo "e2e: the guest did not reboot"
	exit 1
	;;
2)
	run "after a guest reboot the devices are reset and work: data kept, verified fio" \
		check_after_reboot
	b=$(disk_of "$POLLED")
	fio --name=busy --filename="/dev/$b" --direct=1 --bs=4k --ioengine=libaio \
		--iodepth=32 --rw=randwrite --time_based --runtime=600 \
		>/dev/null 2>&1 &
	sleep 2
	echo "e2e: kill the VMM now"
	wait
	echo "e2e: the VMM was not killed"
	exit 1
	;;
esac
exit 1
