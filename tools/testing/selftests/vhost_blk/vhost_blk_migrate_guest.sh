#!/bin/busybox sh
# SPDX-License-Identifier: GPL-2.0
# shellcheck shell=sh
#
# The guest of vhost_blk_migrate.sh: /init of its initramfs (busybox, fio
# and the virtio-blk drivers; no 9p share, which would block migration).
# In each phase it drives the disk with serial mig-data with one driver,
# running fio with verification again and again ("mig: phase P run N ok"),
# while the host migrates it; the disk with serial mig-ctl tells it when
# to go on to the next phase ("phase P" in its first sector) and when to
# stop ("stop").  Phases: virtio_blk_poll in poll mode, in hybrid mode,
# the stock virtio_blk.

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
	run=0
	while :; do
		run=$((run + 1))
		# Writes the region once, then reads it all back and checks it.
		if fio --name=mig --filename="/dev/$data" --thread \
			--ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
			--iodepth=8 --size=8m --offset=$(((run % 4) * 8))m \
			--verify=crc32c --verify_fatal=1 --randrepeat=0 \
			--output=/tmp/fio.out > /dev/null 2>&1; then
			say "phase $phase run $run ok"
		else
			say "phase $phase run $run FAILED"
			sed 's/^/mig: fio: /' /tmp/fio.out > /dev/ttyS0
		fi
		c=$(ctl)
		[ "$c" = stop ] && finish "stopped"
		[ "$c" = "phase $((phase + 1))" ] && break
	done
	unload $mode || finish "cannot unload the driver of $mode"
done
finish "no phase after $phase"
