#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Load vhost_blk_poll and run the device and ioctl tests on it, with the
# default number of queues and with one queue.

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
vbp_require_root

rc=0
for params in "" "max_queues=1"; do
	if vbp_loaded vhost_blk_poll; then
		vbp_unload_host || exit "$KSFT_FAIL"
	fi
	# shellcheck disable=SC2086
	vbp_load_host $params || exit "$KSFT_FAIL"
	vbp_wait_for "$VBP_DEV" || { echo "no $VBP_DEV"; exit "$KSFT_FAIL"; }
	echo "# vhost_blk_poll ${params:-with default parameters}"
	"$VBP_SELFTEST_DIR/vhost_blk_dev_test" || rc=$KSFT_FAIL
	vbp_unload_host || rc=$KSFT_FAIL
done
exit "$rc"
