# SPDX-License-Identifier: GPL-2.0
# shellcheck shell=bash disable=SC2034 # variables for the tests that source this
#
# Shared by the shell selftests: where the freshly built modules are and how
# to load them.  The kernel's own modules (vhost, ...) come from the Debian
# image of the running kernel; the project's are loaded from the build tree.

VBP_SELFTEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VBP_ROOT=${VBP_ROOT:-$(cd "$VBP_SELFTEST_DIR/../../../.." && pwd)}
VHOST_BLK_KO=${VHOST_BLK_KO:-$VBP_ROOT/drivers/vhost/vhost_blk_poll.ko}
VIRTIO_BLK_POLL_KO=${VIRTIO_BLK_POLL_KO:-$VBP_ROOT/drivers/block/virtio_blk_poll.ko}
VBP_DEV=/dev/vhost-blk-poll

# shellcheck source=/dev/null
. "$VBP_SELFTEST_DIR/../kselftest/ktap_helpers.sh"

vbp_loaded() {
	[ -d "/sys/module/$1" ]
}

# vbp_load_host [param=value...]: load vhost_blk_poll and what it needs.
vbp_load_host() {
	modprobe vhost || return
	insmod "$VHOST_BLK_KO" "$@"
}

vbp_unload_host() {
	rmmod vhost_blk_poll
}

vbp_load_guest() {
	insmod "$VIRTIO_BLK_POLL_KO" "$@"
}

vbp_unload_guest() {
	rmmod virtio_blk_poll
}

# Wait up to 5 s for a path to appear (devtmpfs creates nodes asynchronously).
vbp_wait_for() {
	for _ in $(seq 50); do
		[ -e "$1" ] && return 0
		sleep 0.1
	done
	return 1
}

vbp_require_root() {
	if [ "$(id -u)" -ne 0 ]; then
		ktap_skip_all "needs root"
		exit "$KSFT_SKIP"
	fi
}
