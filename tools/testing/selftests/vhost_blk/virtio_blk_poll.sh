#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# virtio_blk_poll on QEMU's stock virtio-blk-pci devices: binding and
# coexistence with virtio_blk, verified I/O in each completion mode with the
# interrupts it takes, io_uring IOPOLL, discard, write zeroes, flush and cache
# mode, freeze and restore for system sleep under I/O, serial, read-only,
# resize, a file system, hot unplug under I/O.
#
# VBP_TEST_DISKS describes the machine's disks, one word per disk:
#   serial:sectors:queues[:flag...]
# flags: ro (read-only), hot (may be unplugged; QMP device id <serial>-pci),
# resize (QMP drive id <serial>, may be resized), 4k (4 KiB logical and
# physical blocks, 8 KiB minimum and 64 KiB optimal I/O size).  Disks that are not
# described are left alone.
#
# VBP_TEST_SYSTEM_SLEEP=1 also puts the whole machine through suspend and
# hibernation in the kernel's test mode (pm_test=devices) under I/O: only for
# a machine all of whose devices survive a system sleep (virtio-9p, the root
# of vm-run's VMs, has no freeze or restore and does not).

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
vbp_require_root

DRV=/sys/bus/virtio/drivers/virtio_blk_poll
DBG=/sys/kernel/debug/virtio_blk_poll
FIO_SIZE=${VBP_TEST_FIO_MB:-16}M

declare -A SECTORS QUEUES FLAGS
DISKS=()
for w in ${VBP_TEST_DISKS:-}; do
	IFS=: read -r s n q f <<< "$w"
	DISKS+=("$s")
	SECTORS[$s]=$n
	QUEUES[$s]=$q
	FLAGS[$s]=":$f:"
done

has_flag() {
	[[ "${FLAGS[$1]}" == *":$2:"* ]]
}

# The first described disk with (or without, "!flag") a flag.
disk_with() {
	local s

	for s in "${DISKS[@]}"; do
		if [ "${1:0:1}" = "!" ]; then
			has_flag "$s" "${1:1}" || { echo "$s"; return 0; }
		elif has_flag "$s" "$1"; then
			echo "$s"
			return 0
		fi
	done
	return 1
}

virtio_devs() {
	local d

	for d in /sys/bus/virtio/devices/*; do
		[ "$(cat "$d/device" 2>/dev/null)" = 0x0002 ] && basename "$d"
	done
}

mapfile -t VDEVS < <(virtio_devs)
if [ ${#VDEVS[@]} = 0 ] || [ ${#DISKS[@]} = 0 ]; then
	ktap_skip_all "no virtio-blk device described in VBP_TEST_DISKS"
	exit "$KSFT_SKIP"
fi
for m in virtio_blk virtio_blk_poll; do
	vbp_loaded $m && rmmod $m
done
mkdir -p /mnt/vbp

driver_of() {
	basename "$(readlink "/sys/bus/virtio/devices/$1/driver" 2>/dev/null)"
}

# Requests the disk completed (reads + writes + discards + flushes).
disk_ios() {
	awk '{ print $1 + $5 + $12 + $16 }' "/sys/block/$1/stat"
}

# One column of the disk's debugfs queue table, summed over its queues.
dbg_sum() {
	awk -v c="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next }
		{ n += $k } END { print n + 0 }' "$DBG/$1/queues"
}

# The disk's node in /dev, once it is the disk's (a node of an earlier
# disk of the same name can linger for a moment after a reload).
node_ready() {
	local want

	want=$(cat "/sys/block/$1/dev" 2>/dev/null) || return 1
	[ -b "/dev/$1" ] &&
		[ "$(stat -c '%Hr:%Lr' "/dev/$1" 2>/dev/null)" = "$want" ]
}

wait_disks() {
	local s b

	for _ in $(seq 100); do
		for s in "${DISKS[@]}"; do
			b=$(vbp_find_disk "$s" vbp) || continue 2
			node_ready "$b" || continue 2
		done
		return 0
	done
	for s in "${DISKS[@]}"; do
		b=$(vbp_find_disk "$s" vbp) || { echo "# no disk with serial $s"; continue; }
		node_ready "$b" || echo "# /dev/$b is not $(cat "/sys/block/$b/dev")"
	done
	return 1
}

load() {
	vbp_load_guest "$@" || return 1
	wait_disks
}

test_probe() {
	local d

	load || return 1
	for d in "${VDEVS[@]}"; do
		[ "$(driver_of "$d")" = virtio_blk_poll ] ||
			{ echo "# $d bound to '$(driver_of "$d")'"; return 1; }
	done
}

test_config() {
	local s b line q topo ok=0

	for s in "${DISKS[@]}"; do
		b=$(vbp_find_disk "$s" vbp) || return 1
		line=$(dmesg | grep " $b: .* sectors" | tail -1)
		echo "# $s: ${line#*] }"
		[[ "$line" =~ ([0-9]+)\ virtqueues ]] || return 1
		q=$(( QUEUES[$s] < $(nproc) ? QUEUES[$s] : $(nproc) ))
		[ "$(cat "/sys/block/$b/size")" = "${SECTORS[$s]}" ] ||
			{ echo "# $b: size $(cat "/sys/block/$b/size")"; ok=1; }
		[ "${BASH_REMATCH[1]}" = "$q" ] ||
			{ echo "# $b: ${BASH_REMATCH[1]} virtqueues, want $q"; ok=1; }
		[ "$(find "/sys/block/$b/mq" -mindepth 1 -maxdepth 1 | wc -l)" = "$q" ] ||
			{ echo "# $b: blk-mq queues differ"; ok=1; }
		# seg_max from the device, not the one-segment fallback.
		[ "$(cat "/sys/block/$b/queue/max_segments")" -gt 1 ] ||
			{ echo "# $b: max_segments $(cat "/sys/block/$b/queue/max_segments")"; ok=1; }
		has_flag "$s" 4k || continue
		topo=$(cd "/sys/block/$b/queue" && cat logical_block_size \
			physical_block_size minimum_io_size optimal_io_size | xargs)
		echo "# $b: block sizes and I/O sizes $topo"
		[ "$topo" = "4096 4096 8192 65536" ] || ok=1
	done
	return $ok
}

test_serial() {
	local s b

	for s in "${DISKS[@]}"; do
		b=$(vbp_find_disk "$s" vbp) || { echo "# no disk with serial $s"; return 1; }
		echo "# $b: serial '$(cat "/sys/block/$b/serial")'"
	done
}

# One queue per CPU: the blk-mq map has each CPU on its own queue when
# the device has as many queues as there are CPUs.
test_map() {
	local s b q cpus

	s=$(disk_with '!ro') || return 1
	b=$(vbp_find_disk "$s" vbp) || return 1
	for q in /sys/block/"$b"/mq/*; do
		cpus=$(cat "$q/cpu_list")
		echo "# $b hctx $(basename "$q"): CPUs $cpus"
		if [ "${QUEUES[$s]}" -ge "$(nproc)" ]; then
			[[ "$cpus" =~ ^[0-9]+$ ]] || return 1
		fi
	done
}

test_params() {
	local p=/sys/module/virtio_blk_poll/parameters ok=0 b v

	vbp_unload_guest || return 1
	for v in mode=bogus poll_queues=100000 poll_budget_us=0; do
		if vbp_load_guest "$v" 2>/dev/null; then
			echo "# $v accepted"
			vbp_unload_guest
			ok=1
		fi
	done
	load || return 1
	b=$(vbp_find_disk "${DISKS[0]}" vbp) || return 1
	if echo bogus > "/sys/block/$b/completion_mode" 2>/dev/null; then
		echo "# completion_mode bogus accepted"
		ok=1
	fi
	if echo fast > $p/mode 2>/dev/null; then
		echo "# mode=fast accepted through sysfs"
		ok=1
	fi
	[ "$(cat $p/mode)" = hybrid ] || { echo "# default mode $(cat $p/mode)"; ok=1; }
	return $ok
}

# Stock virtio_blk first takes every device; sysfs moves one to us and back.
test_coexist() {
	local d=${VDEVS[0]} ok=0

	vbp_unload_guest || return 1
	modprobe virtio_blk || return 1
	[ "$(driver_of "$d")" = virtio_blk ] || { echo "# virtio_blk did not bind"; return 1; }
	vbp_load_guest || return 1
	[ "$(driver_of "$d")" = virtio_blk ] || { echo "# $d changed hands"; ok=1; }
	echo "$d" > /sys/bus/virtio/drivers/virtio_blk/unbind || ok=1
	echo "$d" > $DRV/bind || ok=1
	[ "$(driver_of "$d")" = virtio_blk_poll ] || { echo "# bind to us failed"; ok=1; }
	echo "$d" > $DRV/unbind || ok=1
	echo "$d" > /sys/bus/virtio/drivers/virtio_blk/bind || ok=1
	[ "$(driver_of "$d")" = virtio_blk ] || { echo "# bind back failed"; ok=1; }
	vbp_unload_guest || ok=1
	rmmod virtio_blk || ok=1
	load || return 1
	return $ok
}

# fio_run DEV ARGS...: prints "read-IOPS write-IOPS"; fails as fio fails.
fio_run() {
	local dev=$1 out

	shift
	out=$(fio --name=t --filename="$dev" --direct=1 --bs=4k \
		  --output-format=terse --terse-version=3 --group_reporting "$@" 2>&1) ||
		{ printf '# %s\n' "${out//$'\n'/$'\n'# }" >&2; return 1; }
	echo "$out" | awk -F';' 'NF > 50 { printf "%d %d\n", $8, $49 }'
}

# Verified random writes from two jobs, then a short QD1 random read; the
# device's vq interrupts per request and the reapers' counters are shown.
# Sets MODE_IRQS to the interrupts the run took.
mode_run() {
	local s=$1 mode=$2 b dev v i0 n0 i1 n1 qd1 irqs ios

	b=$(vbp_find_disk "$s" vbp) || return 1
	dev=/dev/$b
	v=$(vbp_virtio_of "$b")
	echo "$mode" > "/sys/block/$b/completion_mode" || return 1
	[ "$(cat "/sys/block/$b/completion_mode")" = "$mode" ] || return 1
	i0=$(vbp_vq_irqs "$v")
	n0=$(disk_ios "$b")
	read -r _ w < <(fio_run "$dev" --rw=randwrite --iodepth=16 \
		--ioengine=libaio --numjobs=2 --size="$FIO_SIZE" \
		--offset_increment="$FIO_SIZE" --verify=crc32c \
		--verify_fatal=1) || { echo "# $mode: fio verify failed"; return 1; }
	read -r qd1 _ < <(fio_run "$dev" --rw=randread --iodepth=1 \
		--ioengine=psync --time_based --runtime=2) || return 1
	i1=$(vbp_vq_irqs "$v")
	n1=$(disk_ios "$b")
	irqs=$((i1 - i0))
	ios=$((n1 - n0))
	MODE_IRQS=$irqs
	echo "# $s $mode: randwrite QD16x2 $w IOPS, randread QD1 $qd1 IOPS," \
	     "$irqs vq interrupts for $ios requests" \
	     "($(awk -v i=$irqs -v n=$ios 'BEGIN { printf "%.4f", n ? i / n : 0 }')/req)"
	sed 's/^/#   /' "$DBG/$b/queues"
}

# The disks the mode tests run on: writable, and not the one unplugged.
io_disks() {
	local s

	for s in "${DISKS[@]}"; do
		has_flag "$s" ro || has_flag "$s" hot || echo "$s"
	done
}

test_mode_irq() {
	local s

	for s in $(io_disks); do
		mode_run "$s" irq || return 1
		# The baseline takes interrupts: the poll check below can fail.
		[ "$MODE_IRQS" -gt 0 ] || { echo "# irq mode took no interrupt"; return 1; }
	done
}

test_mode_poll() {
	local s b

	for s in $(io_disks); do
		mode_run "$s" poll || return 1
		[ "$MODE_IRQS" = 0 ] || { echo "# poll mode took $MODE_IRQS interrupts"; return 1; }
		b=$(vbp_find_disk "$s" vbp)
		[ "$(dbg_sum "$b" poller)" -gt 0 ] || { echo "# poller reaped nothing"; return 1; }
	done
}

test_mode_hybrid() {
	local s

	for s in $(io_disks); do
		mode_run "$s" hybrid || return 1
	done
}

# Idle pollers sleep: no CPU time once nothing is in flight.
test_idle() {
	local b t0 t1 pid

	b=$(vbp_find_disk "$(disk_with '!ro')" vbp) || return 1
	echo poll > "/sys/block/$b/completion_mode" || return 1
	dd if="/dev/$b" of=/dev/null bs=4k count=256 iflag=direct 2>/dev/null || return 1
	sleep 0.5
	t0=0
	for pid in $(pgrep "^${b}-q"); do
		t0=$((t0 + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
	done
	sleep 2
	t1=0
	for pid in $(pgrep "^${b}-q"); do
		t1=$((t1 + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
	done
	echo "# pollers of $b: $((t1 - t0)) ticks in 2 s idle"
	[ -n "$(pgrep "^${b}-q")" ] && [ $((t1 - t0)) -le 1 ]
}

test_iopoll() {
	local s b pq ok=0

	s=$(disk_with '!ro') || return 1
	[ "${QUEUES[$s]}" -ge 2 ] || { echo "# SKIP needs a disk with 2 queues"; return 4; }
	vbp_unload_guest || return 1
	load poll_queues=1 || return 1
	b=$(vbp_find_disk "$s" vbp) || return 1
	pq=$(awk '$2 == "poll"' "$DBG/$b/queues" | wc -l)
	[ "$pq" = 1 ] || { echo "# $pq poll queues"; ok=1; }
	[ "$(cat "/sys/block/$b/queue/io_poll")" = 1 ] || { echo "# io_poll off"; ok=1; }
	fio_run "/dev/$b" --rw=randwrite --iodepth=8 --ioengine=io_uring \
		--hipri=1 --size="$FIO_SIZE" --verify=crc32c --verify_fatal=1 \
		>/dev/null || { echo "# io_uring hipri fio failed"; ok=1; }
	sed 's/^/#   /' "$DBG/$b/queues"
	[ "$(dbg_sum "$b" blk_poll)" -gt 0 ] || { echo "# ->poll reaped nothing"; ok=1; }
	grep -q "$(vbp_virtio_of "$b")-poll" /proc/interrupts &&
		{ echo "# a poll queue has an interrupt"; ok=1; }
	vbp_unload_guest || return 1
	load || return 1
	return $ok
}

test_discard() {
	local s b dev max ok=0

	s=$(disk_with '!ro') || return 1
	b=$(vbp_find_disk "$s" vbp) || return 1
	dev=/dev/$b
	max=$(cat "/sys/block/$b/queue/discard_max_bytes")
	echo "# $b: discard_max_bytes $max, write_zeroes_max_bytes $(cat "/sys/block/$b/queue/write_zeroes_max_bytes")"
	[ "$max" -gt 0 ] || return 1
	blkdiscard "$dev" || { echo "# blkdiscard failed"; ok=1; }
	# Write zeroes: exactly the range, nothing around it.
	dd if=/dev/urandom of=/tmp/pat bs=1M count=3 2>/dev/null
	dd if=/tmp/pat of="$dev" bs=1M count=3 oflag=direct 2>/dev/null || return 1
	blkdiscard -z -o 1048576 -l 1048576 "$dev" || { echo "# blkdiscard -z failed"; ok=1; }
	cmp -n 1048576 <(dd if="$dev" bs=1M skip=1 count=1 iflag=direct 2>/dev/null) \
		/dev/zero >/dev/null || { echo "# zeroed range not zero"; ok=1; }
	cmp -n 1048576 <(dd if="$dev" bs=1M count=1 iflag=direct 2>/dev/null) /tmp/pat ||
		{ echo "# data before the range changed"; ok=1; }
	cmp -n 1048576 <(dd if="$dev" bs=1M skip=2 count=1 iflag=direct 2>/dev/null) \
		<(dd if=/tmp/pat bs=1M skip=2 count=1 2>/dev/null) ||
		{ echo "# data after the range changed"; ok=1; }
	return $ok
}

test_flush() {
	local b dev wc ok=0

	b=$(vbp_find_disk "$(disk_with '!ro')" vbp) || return 1
	dev=/dev/$b
	wc=/sys/block/$b/queue/write_cache
	echo "# $b: cache_type '$(cat "/sys/block/$b/cache_type")', write_cache '$(cat "$wc")'"
	[ "$(cat "/sys/block/$b/cache_type")" = "write back" ] || ok=1
	[ "$(cat "$wc")" = "write back" ] || ok=1
	dd if=/dev/urandom of="$dev" bs=64k count=16 conv=fsync oflag=direct 2>/dev/null ||
		{ echo "# write + fsync failed"; ok=1; }
	blockdev --flushbufs "$dev" || ok=1
	echo "write through" > "/sys/block/$b/cache_type" || { echo "# cannot set write through"; ok=1; }
	[ "$(cat "$wc")" = "write through" ] || { echo "# write_cache '$(cat "$wc")'"; ok=1; }
	echo "write back" > "/sys/block/$b/cache_type" || ok=1
	[ "$(cat "$wc")" = "write back" ] || ok=1
	return $ok
}

# writes_over DISK N: the disk has completed more than N writes (read
# without starting a program).
writes_over() {
	local f

	read -ra f < "/sys/block/$1/stat"
	[ "${f[4]}" -gt "$2" ]
}

absent() { [ ! -e "$1" ]; }
ended() { ! kill -0 "$1" 2>/dev/null; }

# sleep_cycle DISK: freeze the disk's device for 300 ms and restore it,
# through the virtio core as a system sleep does (debugfs); bounded.
sleep_cycle() {
	local pid

	(echo 300 > "$DBG/$1/sleep") 2>/tmp/sleep.err &
	pid=$!
	if ! vbp_until 60 ended "$pid"; then
		echo "# $1: freeze and restore still running after 60 s"
		vbp_show_blocked
		return 1
	fi
	wait "$pid" || { echo "# $1: freeze and restore failed: $(cat /tmp/sleep.err)"; return 1; }
}

# system_sleep STATE: suspend (mem) or hibernate (disk) the machine in the
# kernel's test mode: every device's callbacks run, nothing powers off.
system_sleep() {
	local pid

	echo devices > /sys/power/pm_test || return 1
	(echo "$1" > /sys/power/state) 2>/tmp/sleep.err &
	pid=$!
	if ! vbp_until 120 ended "$pid"; then
		echo "# $1: system sleep still running after 120 s"
		vbp_show_blocked
		return 1
	fi
	wait "$pid" || { echo "# $1: system sleep failed: $(cat /tmp/sleep.err)"; return 1; }
	echo none > /sys/power/pm_test
}

# sleep_run DISK MODE FIO_ARGS...: verified writes (written, then read back
# and checked) while the device is frozen and restored, three times while
# it writes; then every request has completed, the data verified, and the
# mode holds.
sleep_run() {
	local b=$1 mode=$2 w0 pid irq0 ios0 irqs nq n=0 rc ok=0 cycle=sleep_cycle

	shift 2
	[ "${VBP_TEST_SYSTEM_SLEEP:-0}" = 1 ] && cycle=system_sleep
	if [ "$mode" != iopoll ]; then
		echo "$mode" > "/sys/block/$b/completion_mode" || return 1
	fi
	irq0=$(dbg_sum "$b" interrupts)
	ios0=$(disk_ios "$b")
	read -ra w0 < "/sys/block/$b/stat"
	fio --name=s --filename="/dev/$b" --direct=1 --bs=4k --rw=randwrite \
		--size="$FIO_SIZE" --verify=crc32c --verify_fatal=1 "$@" \
		> /tmp/sleep.fio 2>&1 &
	pid=$!
	vbp_until 60 writes_over "$b" $((w0[4] + 200)) ||
		{ echo "# $mode: fio wrote nothing in 60 s"; kill "$pid"; return 1; }
	while [ $n -lt 3 ] && ! ended "$pid"; do
		if [ "$cycle" = system_sleep ]; then
			system_sleep "$( ((n % 2)) && echo disk || echo mem)" || { ok=1; break; }
		else
			sleep_cycle "$b" || { ok=1; break; }
		fi
		n=$((n + 1))
		vbp_nap 0.5
	done
	if ! vbp_until 300 ended "$pid"; then
		echo "# $mode: fio still running 300 s after $n freezes"
		vbp_show_blocked
		kill -9 "$pid"
		return 1
	fi
	wait "$pid"
	rc=$?
	irqs=$(($(dbg_sum "$b" interrupts) - irq0))
	echo "# $b $mode: $n freezes and restores ($cycle), fio exit $rc," \
	     "$(($(disk_ios "$b") - ios0)) requests, $irqs vq interrupts"
	[ "$rc" = 0 ] || { sed 's/^/#   /' /tmp/sleep.fio | grep -i 'err\|verify' | head -n 5; ok=1; }
	[ $n -gt 0 ] || { echo "# $mode: fio ended before the first freeze"; ok=1; }
	if [ "$mode" != iopoll ]; then
		[ "$(cat "/sys/block/$b/completion_mode")" = "$mode" ] ||
			{ echo "# mode $(cat "/sys/block/$b/completion_mode") after restore"; ok=1; }
	fi
	# Callbacks off on the new virtqueues.  With event index, disabling
	# them asks for an event at used index 0: a fresh virtqueue signals
	# its first completion once.
	nq=$(($(wc -l < "$DBG/$b/queues") - 1))
	if [ "$mode" = poll ] && [ "$irqs" -gt $((n * nq)) ]; then
		echo "# poll mode took $irqs interrupts after $n restores of $nq queues"
		ok=1
	fi
	sed 's/^/#   /' "$DBG/$b/queues"
	return $ok
}

# Freeze and restore for system sleep, under verified I/O, in each mode
# and on an io_uring poll queue.
test_sleep() {
	local s b mode ok=0

	s=$(disk_with '!ro') || return 1
	b=$(vbp_find_disk "$s" vbp) || return 1
	if [ "${VBP_TEST_SYSTEM_SLEEP:-0}" = 1 ]; then
		if ! grep -qw devices /sys/power/pm_test; then
			echo "# SKIP no system sleep test mode (CONFIG_PM_DEBUG)"
			return 4
		fi
		echo 1 > /sys/module/suspend/parameters/pm_test_delay || return 1
	elif [ ! -e "$DBG/$b/sleep" ]; then
		echo "# SKIP built without CONFIG_PM_SLEEP or CONFIG_VIRTIO_BLK_POLL_FAULT_INJECTION"
		return 4
	fi
	for mode in irq poll hybrid; do
		sleep_run "$b" $mode --ioengine=libaio --iodepth=16 --numjobs=2 \
			--offset_increment="$FIO_SIZE" || ok=1
	done
	[ "${QUEUES[$s]}" -ge 2 ] || return $ok
	vbp_unload_guest || return 1
	load poll_queues=1 || return 1
	b=$(vbp_find_disk "$s" vbp) || return 1
	sleep_run "$b" iopoll --ioengine=io_uring --hipri=1 --iodepth=8 || ok=1
	[ "$(dbg_sum "$b" blk_poll)" -gt 0 ] || { echo "# ->poll reaped nothing"; ok=1; }
	vbp_unload_guest || return 1
	load || return 1
	return $ok
}

test_readonly() {
	local s b ok=0

	s=$(disk_with ro) || { echo "# SKIP no read-only disk"; return 4; }
	b=$(vbp_find_disk "$s" vbp) || return 1
	[ "$(blockdev --getro "/dev/$b")" = 1 ] || { echo "# not read-only"; ok=1; }
	dd if="/dev/$b" of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null ||
		{ echo "# read failed"; ok=1; }
	if dd if=/dev/zero of="/dev/$b" bs=4k count=1 oflag=direct 2>/dev/null; then
		echo "# write accepted"
		ok=1
	fi
	return $ok
}

# Kernel uevents of block devices, one per line, until killed.
# exec: the background job is the listener itself, so that killing it
# leaves nothing holding the test's output open.
uevents() {
	exec python3 -c '
import socket, sys
s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)
s.bind((0, 1))
print("listening", flush=True)
while True:
    m = s.recv(65536).split(b"\0")
    print(" ".join(f.decode(errors="replace") for f in m), flush=True)
'
}

test_resize() {
	local s b size want i mon

	[ -n "${VMRUN_QMP:-}" ] || { echo "# SKIP no QMP channel (vm-run -Q)"; return 4; }
	s=$(disk_with resize) || { echo "# SKIP no resizable disk"; return 4; }
	b=$(vbp_find_disk "$s" vbp) || return 1
	size=$(cat "/sys/block/$b/size")
	want=$((size * 2))
	uevents > /tmp/uevents 2>&1 &
	mon=$!
	for i in $(seq 50); do
		grep -q listening /tmp/uevents && break
		sleep 0.1
	done
	vbp_qmp "{\"execute\":\"block_resize\",\"arguments\":{\"device\":\"$s\",\"size\":$((want * 512))}}" \
		>/dev/null || { echo "# block_resize failed"; kill $mon; return 1; }
	for i in $(seq 50); do
		[ "$(cat "/sys/block/$b/size")" = "$want" ] && break
		sleep 0.1
	done
	sleep 0.5
	kill $mon
	wait $mon 2>/dev/null
	echo "# $b: $size -> $(cat "/sys/block/$b/size") sectors after $((i / 10)).$((i % 10)) s"
	[ "$(cat "/sys/block/$b/size")" = "$want" ] || return 1
	grep -q "^change@.*/block/$b .*RESIZE=1" /tmp/uevents ||
		{ echo "# no change uevent with RESIZE=1:"; sed 's/^/#   /' /tmp/uevents; return 1; }
	# The new space is usable.
	dd if=/dev/urandom of="/dev/$b" bs=4k count=1 seek=$(( (want - 8) / 8 )) \
		oflag=direct 2>/dev/null
}

test_fs() {
	local b dev ok=0

	b=$(vbp_find_disk "$(disk_with '!ro')" vbp) || return 1
	dev=/dev/$b
	echo hybrid > "/sys/block/$b/completion_mode" || return 1
	modprobe ext4 || return 1
	mkfs.ext4 -q -F "$dev" || return 1
	mount -t ext4 "$dev" /mnt/vbp || return 1
	fio --name=f --directory=/mnt/vbp --rw=randwrite --bs=4k --size=8M \
		--numjobs=2 --ioengine=libaio --iodepth=8 --direct=1 \
		--verify=crc32c --verify_fatal=1 >/dev/null 2>&1 ||
		{ echo "# fio on ext4 failed"; ok=1; }
	# The same data read back through the page cache, after a sync.
	sync
	fio --name=f --directory=/mnt/vbp --rw=randwrite --bs=4k --size=8M \
		--numjobs=2 --verify=crc32c --verify_only=1 >/dev/null 2>&1 ||
		{ echo "# verify_only on ext4 failed"; ok=1; }
	umount /mnt/vbp || return 1
	fsck.ext4 -fn "$dev" >/tmp/fsck.out 2>&1 || { sed 's/^/# /' /tmp/fsck.out; ok=1; }
	return $ok
}

# Unload while a disk is in use is refused; it goes through once closed.
test_unload_busy() {
	local b pid ok=0

	b=$(vbp_find_disk "$(disk_with '!ro')" vbp) || return 1
	fio --name=u --filename="/dev/$b" --rw=randread --bs=4k --direct=1 \
		--ioengine=libaio --iodepth=4 --time_based --runtime=20 >/dev/null 2>&1 &
	pid=$!
	# Until fio has the disk open (the module is then in use): fio starts
	# slowly on an emulated CPU, the more so on a debug kernel.
	for _ in $(seq 600); do
		[ "$(cat /sys/module/virtio_blk_poll/refcnt)" -gt 0 ] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	sleep 1
	if rmmod virtio_blk_poll 2>/dev/null; then
		echo "# unloaded with the disk open"
		ok=1
	fi
	kill "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	vbp_unload_guest || return 1
	load || return 1
	return $ok
}

# A device that writes a bad used ring, through the driver's fault
# injection (it corrupts the used ring in memory, as the device would).
read1() {
	timeout 60 dd if="/dev/$1" of=/dev/null bs=4k count="${2:-1}" \
		iflag=direct 2>/dev/null
}

test_bad_device() {
	local s b v f mode bad0 ok=0

	for s in $(io_disks); do
		[ "${QUEUES[$s]}" = 1 ] && break
	done
	b=$(vbp_find_disk "$s" vbp) || return 1
	v=$(vbp_virtio_of "$b")
	[ -e "$DBG/$b/inject" ] ||
		{ echo "# SKIP built without CONFIG_VIRTIO_BLK_POLL_FAULT_INJECTION"; return 4; }
	if echo "0 bogus" > "$DBG/$b/inject" 2>/dev/null; then
		echo "# unknown fault accepted"
		ok=1
	fi
	# A used length beyond the buffer fails that request only.
	for mode in irq poll; do
		echo $mode > "/sys/block/$b/completion_mode" || return 1
		bad0=$(dbg_sum "$b" bad)
		echo "0 len" > "$DBG/$b/inject" || return 1
		if read1 "$b"; then
			echo "# $mode: a read with a bad used length succeeded"
			ok=1
		fi
		[ "$(dbg_sum "$b" bad)" = $((bad0 + 1)) ] ||
			{ echo "# $mode: bad count $(dbg_sum "$b" bad), was $bad0"; ok=1; }
		read1 "$b" 64 || { echo "# $mode: the device failed after one bad length"; ok=1; }
	done
	# A bad used id, or a used index running ahead: the device is broken,
	# its I/O fails, nothing hangs; rebinding resets it and it works.
	for f in id idx; do
		b=$(vbp_find_disk "$s" vbp) || return 1
		dmesg -C
		echo "0 $f" > "$DBG/$b/inject" || return 1
		read1 "$b"
		dmesg | grep -q "$v: device broke the virtqueue protocol" ||
			{ echo "# $f: device not marked broken"; ok=1; }
		# A dead disk has no capacity left: reads find nothing.
		[ "$(cat "/sys/block/$b/size")" = 0 ] ||
			{ echo "# $f: disk still has $(cat "/sys/block/$b/size") sectors"; ok=1; }
		if [ "$(timeout 60 dd if="/dev/$b" bs=4k count=1 iflag=direct 2>/dev/null |
			wc -c)" != 0 ]; then
			echo "# $f: data still read after a bad used $f"
			ok=1
		fi
		echo "$v" > $DRV/unbind || return 1
		echo "$v" > $DRV/bind || return 1
		wait_disks || return 1
		b=$(vbp_find_disk "$s" vbp) || return 1
		dd if=/dev/urandom of=/tmp/bad.pat bs=64k count=4 2>/dev/null
		if ! dd if=/tmp/bad.pat of="/dev/$b" bs=64k oflag=direct 2>/dev/null ||
		   ! cmp -n 262144 /tmp/bad.pat "/dev/$b"; then
			echo "# $f: the device does not work after rebind"
			ok=1
		fi
	done
	return $ok
}

test_unplug() {
	local s b v pid rc w0 t

	[ -n "${VMRUN_QMP:-}" ] || { echo "# SKIP no QMP channel (vm-run -Q)"; return 4; }
	s=$(disk_with hot) || { echo "# SKIP no hot-pluggable disk"; return 4; }
	b=$(vbp_find_disk "$s" vbp) || return 1
	v=$(vbp_virtio_of "$b")
	echo poll > "/sys/block/$b/completion_mode" || return 1
	read -ra w0 < "/sys/block/$b/stat"
	fio --name=h --filename="/dev/$b" --rw=randwrite --bs=4k --direct=1 \
		--ioengine=libaio --iodepth=8 --time_based --runtime=60 \
		> /tmp/unplug.fio 2>&1 &
	pid=$!
	# Unplug once the writes flow.
	vbp_until 30 writes_over "$b" $((w0[4] + 100)) ||
		{ echo "# fio wrote nothing in 30 s"; kill $pid; return 1; }
	vbp_qmp "{\"execute\":\"device_del\",\"arguments\":{\"id\":\"$s-pci\"}}" \
		>/dev/null || { echo "# device_del failed"; kill $pid; return 1; }
	# QEMU's q35 hot-plugs through ACPI: the guest unbinds at once.  A
	# PCIe hot-plug controller waits 5 s first.
	if ! vbp_until 120 absent "/sys/bus/virtio/devices/$v"; then
		echo "# $v still there after $vbp_waited s"
		vbp_show_blocked
		dmesg | tail -n 20 | sed 's/^/# /'
		kill $pid 2>/dev/null
		return 1
	fi
	t=$vbp_waited
	if ! vbp_until 60 ended "$pid"; then
		echo "# fio still running 60 s after the unplug"
		vbp_show_blocked
		kill -9 "$pid"
		return 1
	fi
	wait "$pid"
	rc=$?
	echo "# $v gone after $t s; fio exit $rc: $(grep -m1 -o 'err=[^:]*' /tmp/unplug.fio)"
	[ ! -e "/dev/$b" ] || { echo "# /dev/$b still there"; return 1; }
	[ "$rc" != 0 ]
}

run() {
	local rc

	"$2"
	rc=$?
	if [ $rc = 4 ]; then
		ktap_test_skip "$1"
	elif [ $rc = 0 ]; then
		ktap_test_pass "$1"
	else
		ktap_test_fail "$1"
	fi
}

ktap_print_header
ktap_set_plan 20
run "probe binds every virtio-blk device (${#VDEVS[@]})" test_probe
run "capacity and queue count from the device, one queue per CPU" test_config
run "serial numbers (GET_ID) in sysfs" test_serial
run "blk-mq maps CPUs to queues" test_map
run "bad module parameters and modes refused" test_params
run "coexists with virtio_blk through sysfs unbind/bind" test_coexist
run "irq mode: verified fio, vq interrupts taken" test_mode_irq
run "poll mode: verified fio, no vq interrupt" test_mode_poll
run "hybrid mode: verified fio" test_mode_hybrid
run "idle pollers use no CPU" test_idle
run "io_uring IOPOLL on a poll queue" test_iopoll
run "discard and write zeroes" test_discard
run "flush and cache_type" test_flush
run "freeze and restore for system sleep under verified I/O, every mode" test_sleep
run "read-only device refuses writes" test_readonly
run "resize seen by the guest, with a uevent" test_resize
run "ext4: mkfs, fio verify, fsck clean" test_fs
run "unload refused while a disk is in use" test_unload_busy
run "bad used length, id and index from the device: I/O fails, no hang" test_bad_device
run "device_del during I/O fails the I/O cleanly" test_unplug
vbp_loaded virtio_blk_poll && vbp_unload_guest
ktap_finished
