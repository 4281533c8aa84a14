#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The mini-VMM's ring fuzzer and races (vhost_blk_fuzz_test) on a file on
# tmpfs and on a polled null_blk.  The VM runner checks the
# kernel log; unloading the module at the end destroys its request cache,
# which warns (and fails the run) if a request was never freed.
#
# VBP_FUZZ_REQUESTS   fuzzed requests on the file (default 100000); the
#                     null_blk gets a fifth of them
# VBP_RACE_ROUNDS     raced batches on each backend (default 350)
# VBP_FUZZ_SEED       the seed of every run (default: from the clock)

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
vbp_require_root

FUZZ_TEST=$VBP_SELFTEST_DIR/vhost_blk_fuzz_test
REQUESTS=${VBP_FUZZ_REQUESTS:-100000}
ROUNDS=${VBP_RACE_ROUNDS:-350}
rc=0
tmp=$(mktemp -d)

# shellcheck disable=SC2317 # called by the trap
cleanup() {
	vbp_nullb_remove vbppoll
	vbp_loaded null_blk && rmmod null_blk
	vbp_loaded vhost_blk_poll && vbp_unload_host
	rm -rf "$tmp"
}
trap cleanup EXIT

vbp_loaded vhost_blk_poll || vbp_load_host || exit "$KSFT_FAIL"
vbp_wait_for "$VBP_DEV" || exit "$KSFT_FAIL"

# fuzz NAME TESTS REQUESTS [VAR=VALUE...]: the fuzz.* tests named (a
# harness option, -f fuzz for all of them)
fuzz() {
	local name=$1 tests=$2 n=$3

	shift 3
	echo "# backend: $name"
	# shellcheck disable=SC2086 # the harness options are words
	env VBP_FUZZ_REQUESTS="$n" VBP_RACE_ROUNDS="$ROUNDS" "$@" \
		"$FUZZ_TEST" $tests || rc=$KSFT_FAIL
}

fuzz "file on tmpfs" "-f fuzz" "$REQUESTS" VBP_TEST_DIR="$tmp"

# Polled I/O: the vrings that poll submit to the poll queues.
vbp_polled_nullb vbppoll 64 || exit "$KSFT_FAIL"
fuzz "polled null_blk" "-r fuzz.rings" $((REQUESTS / 5)) \
	VBP_TEST_DIR="$tmp" VBP_TEST_BDEV=/dev/vbppoll
fuzz "polled null_blk" "-r fuzz.races" 0 VBP_TEST_DIR="$tmp" \
	VBP_TEST_BDEV=/dev/vbppoll
vbp_nullb_remove vbppoll || rc=$KSFT_FAIL
rmmod null_blk || rc=$KSFT_FAIL

vbp_unload_host || rc=$KSFT_FAIL
exit "$rc"
