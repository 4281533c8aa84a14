#!/bin/busybox sh
# SPDX-License-Identifier: GPL-2.0
# shellcheck shell=sh
#
# The guest of vhost_blk_migrate.sh: /init of its initramfs (busybox, fio
# and the virtio-blk drivers; no 9p share, which would block migration).
# In each phase it drives the disk with serial mig-data with one driver:
# one fio writes a region and reads it back checking every block, loop
# after loop, while the host migrates the guest; every 2 s the guest says
# how many writes and reads its disk completed ("mig: phase P io W writes
# R reads").  The disk with serial mig-ctl tells it when to end the phase
# ("phase P" in its first sector) or stop ("stop"); then fio stops and
# the guest says whether every block verified ("mig: phase P fio ok").
# Phases: virtio_blk_poll in poll mode, in hybrid mode, the stock
# virtio_blk.

/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp

say() {
	echo "mig: $*" > /dev/ttyS0
}

# disk_of SERIAL: the disk with this serial, once it and its node exist.
disk_of() {
	i=0
	while [ $i -lt 300 ]; do
		for b in /sys/block/*; do
			[ "$(cat "$b/serial" 2>/dev/null)" = "$1" ] || continue
			[ -b "/dev/${b##*/}" ] && { echo "${b##*/}"; return 0; }
		done
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}

# What the host wrote in the control disk's first sector.
ctl() {
	dd if="/dev/$ctl" bs=512 count=1 iflag=direct 2>/dev/null | tr -d '\000\n'
}

load() {
	case $1 in
	poll|hybrid) insmod /modules/virtio_blk_poll.ko mode="$1" ;;
	stock) insmod /modules/virtio_blk.ko ;;
	esac
}

unload() {
	case $1 in
	poll|hybrid) rmmod virtio_blk_poll ;;
	stock) rmmod virtio_blk ;;
	esac
}

finish() {
	say "end: $*"
	sync
	poweroff -f
}

phase=0
for mode in poll hybrid stock; do
	phase=$((phase + 1))
	load $mode || finish "cannot load the driver of $mode"
	if ! data=$(disk_of mig-data) || ! ctl=$(disk_of mig-ctl); then
		finish "no disks with $mode"
	fi
	say "phase $phase $mode: /dev/$data"
	# One fio for the phase: each start costs this guest about a minute.
	fio --name=mig --filename="/dev/$data" --thread --ioengine=libaio \
		--direct=1 --rw=randwrite --bs=4k --iodepth=8 --size=1m \
		--loops=1000000 --verify=crc32c --verify_fatal=1 \
		--randrepeat=0 > /tmp/fio.out 2>&1 &
	fio=$!
	while :; do
		sleep 2
		if ! kill -0 $fio 2>/dev/null; then
			say "phase $phase fio FAILED: it ended by itself"
			sed 's/^/mig: fio: /' /tmp/fio.out > /dev/ttyS0
			finish "fio failed"
		fi
		# shellcheck disable=SC2046 # the fields of the disk's stat
		set -- $(cat "/sys/block/$data/stat")
		say "phase $phase io $5 writes $1 reads"
		c=$(ctl)
		if [ "$c" = stop ] || [ "$c" = "phase $((phase + 1))" ]; then
			break
		fi
	done
	kill -INT $fio
	wait $fio
	if grep -q 'err= *0' /tmp/fio.out &&
	   ! grep -q -i 'verify' /tmp/fio.out; then
		say "phase $phase fio ok: every block verified"
	else
		say "phase $phase fio FAILED"
		sed 's/^/mig: fio: /' /tmp/fio.out > /dev/ttyS0
	fi
	[ "$c" = stop ] && finish "stopped"
	unload $mode || finish "cannot unload the driver of $mode"
done
finish "no phase after $phase"
