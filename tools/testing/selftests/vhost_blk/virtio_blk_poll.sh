#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# virtio_blk_poll on the machine's virtio-blk devices (QEMU's virtio-blk-pci
# in the test VM): probe, virtqueue count, sysfs unbind/bind, unload while
# bound.  VBP_TEST_VIRTIO_BLK="<sectors>:<num-queues>" states what the first
# device is, for the checks of what the driver read from it.

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
vbp_require_root

DRV=/sys/bus/virtio/drivers/virtio_blk_poll

devs=()
for d in /sys/bus/virtio/devices/*; do
	[ "$(cat "$d/device" 2>/dev/null)" = 0x0002 ] && devs+=("$(basename "$d")")
done
if [ ${#devs[@]} = 0 ]; then
	ktap_skip_all "no virtio-blk device in this machine"
	exit "$KSFT_SKIP"
fi
for m in virtio_blk virtio_blk_poll; do
	vbp_loaded $m && rmmod $m
done

bound_to_us() {
	[ "$(basename "$(readlink "/sys/bus/virtio/devices/$1/driver")")" = virtio_blk_poll ]
}

all_bound() {
	local d

	for d in "${devs[@]}"; do
		bound_to_us "$d" || { echo "# $d not bound"; return 1; }
	done
}

test_probe() {
	dmesg -C
	vbp_load_guest || return 1
	all_bound
}

test_config() {
	local want=${VBP_TEST_VIRTIO_BLK:-} line sectors queues

	line=$(dmesg | grep -m1 "virtio_blk_poll ${devs[0]}: ")
	echo "# ${line#*] }"
	[[ "$line" =~ ([0-9]+)\ sectors,\ ([0-9]+)\ virtqueues ]] || return 1
	sectors=${BASH_REMATCH[1]}
	queues=${BASH_REMATCH[2]}
	[ -n "$want" ] || return 0
	[ "$sectors" = "${want%%:*}" ] || return 1
	# One virtqueue per CPU, at most as many as the device has.
	[ "$queues" = "$(( ${want#*:} < $(nproc) ? ${want#*:} : $(nproc) ))" ]
}

test_unbind_bind() {
	local d=${devs[0]}

	echo "$d" > $DRV/unbind || return 1
	! bound_to_us "$d" || return 1
	echo "$d" > $DRV/bind || return 1
	bound_to_us "$d"
}

test_unload_bound() {
	vbp_unload_guest || return 1
	[ ! -e "/sys/bus/virtio/devices/${devs[0]}/driver" ] || return 1
	vbp_load_guest || return 1
	all_bound || return 1
	vbp_unload_guest
}

ktap_print_header
ktap_set_plan 4
ktap_test_result "probe binds every virtio-blk device (${#devs[@]})" test_probe
ktap_test_result "capacity and virtqueue count read from the device" test_config
ktap_test_result "sysfs unbind and bind" test_unbind_bind
ktap_test_result "unload while bound, reload binds again" test_unload_bound
ktap_finished
