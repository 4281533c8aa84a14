#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# End to end, nested: this VM (L1) loads vhost_blk_poll and runs QEMU with
# vhost-blk-pci ($VBP_QEMU, qemu/build.sh) for a guest (L2) whose disks are
# a memory-backed null_blk and a raw file (passed to QEMU in an fdset, as
# a management layer does), both served by the module, and a brd RAM disk
# whose topology (4 KiB physical blocks) it must see.  L2
# (vhost_blk_e2e_guest.sh) checks the stock virtio_blk and virtio_blk_poll
# in poll mode, counts kicks, signals and interrupts per request, reboots,
# checks again, and keeps I/O running while this side kills its QEMU with
# SIGKILL; then the module must let go of everything and unload.  Last, the
# errors QEMU gives for a missing module and for bad properties.

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
vbp_require_root

vbp_require_qemu

# One vCPU: the guest's vCPU threads, its QEMU and the module's workers
# share this VM's two.
L2_CPUS=1
# null_blk names a disk made through configfs after its directory.
NULLB=$VBP_NULLB_CONFIG/nullb-e2e
NULLB_DEV=/dev/nullb-e2e
IMG=/tmp/e2e.img
# 512-byte logical, 4 KiB physical blocks
TOPO_DEV=/dev/ram0
L2LOG=/tmp/e2e-l2.log
L2CONSOLE=/tmp/e2e-l2-console.log
# Tests reported by the guest: 8 before its reboot, 1 after.
L2_TESTS=9
L2QMP=/tmp/e2e-l2.qmp
# The polled disk's poll budget: 1 s.  The guest runs under emulation
# inside an emulated machine, where its requests come tens to hundreds of
# milliseconds apart (a polling guest and a polling worker share this VM's
# two vCPUs), and the module's default budget (50 us) would have the worker
# asleep for nearly every request.
POLL_US=1000000

# A memory-backed, multi-queue null_blk with discard.
nullb_create() {
	local a

	modprobe null_blk nr_devices=0 || return 1
	mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
	mkdir "$NULLB" || return 1
	for a in size=256 memory_backed=1 discard=1 queue_mode=2 submit_queues=2; do
		echo "${a#*=}" > "$NULLB/${a%%=*}" || return 1
	done
	echo 1 > "$NULLB/power" || return 1
	vbp_wait_for "$NULLB_DEV"
}

nullb_remove() {
	[ -d "$NULLB" ] && rmdir "$NULLB"
	rmmod null_blk
}

# blockdev's physical block, minimum and optimal I/O size of a disk.
topology() {
	echo "$(blockdev --getpbsz "$1") $(blockdev --getiomin "$1") $(blockdev --getioopt "$1")"
}

host_requests() {
	local r

	read -r r _ < <(vbp_host_counters "$VBP_STATS")
	echo "$r"
}

# The guest keeps writing; kill its QEMU with SIGKILL and check that the
# module lets go of its devices.
kill_vmm() {
	local qpid r0 r1 i

	# The only QEMU here (the command name is cut to 15 characters)
	qpid=$(pgrep -o -x qemu-system-x86)
	r0=$(host_requests)
	sleep 2
	r1=$(host_requests)
	echo "# QEMU $qpid: $((r1 - r0)) requests served in the last 2 s; SIGKILL"
	kill -KILL "$qpid"
	if [ "$r1" -gt "$r0" ]; then
		ktap_test_pass "guest I/O in flight when QEMU is killed"
	else
		ktap_test_fail "guest I/O in flight when QEMU is killed"
	fi
	for i in $(seq 100); do
		[ -z "$(ls "$VBP_STATS")" ] && break
		sleep 0.1
	done
	if [ -z "$(ls "$VBP_STATS")" ]; then
		ktap_test_pass "the killed QEMU's devices are released ($((i / 10)).$((i % 10)) s)"
	else
		ktap_test_fail "the killed QEMU's devices are released: $(ls "$VBP_STATS")"
	fi
}

# resize ID BYTES: the guest asks for its disk ID (the device's id and
# serial) to get a new size.
resize() {
	local out

	if out=$("$VBP_SELFTEST_DIR/vbp_qmp.py" "$L2QMP" qom-set \
		"{\"path\": \"/machine/peripheral/$1\", \"property\": \"size\", \"value\": $2}" 2>&1); then
		echo "# qom-set $1 size $2: $(stat -c %s "$IMG") bytes in $IMG now"
	else
		echo "# qom-set $1 size $2 failed: $out"
	fi
}

# QEMU serves write-through from a descriptor of each backend opened
# O_DSYNC, beside the one it serves write-back from: also for the file
# passed in an fdset, whose descriptors are dups that fcntl() cannot make
# O_DSYNC.
check_dsync_fds() {
	local qpid be fd flags dsync plain ok=0

	qpid=$(pgrep -o -x qemu-system-x86)
	for be in "$NULLB_DEV" "$IMG"; do
		dsync=0 plain=0
		for fd in "/proc/$qpid/fd/"*; do
			[ "$(readlink "$fd")" = "$be" ] || continue
			flags=$(awk '$1 == "flags:" { print $2 }' \
				"/proc/$qpid/fdinfo/${fd##*/}")
			# O_DSYNC is octal 010000
			if (( 8#$flags & 8#10000 )); then
				dsync=$((dsync + 1))
			else
				plain=$((plain + 1))
			fi
		done
		echo "# QEMU $qpid holds $be $((plain + dsync)) times, $dsync O_DSYNC"
		[ "$dsync" -ge 1 ] && [ "$plain" -ge 1 ] || ok=1
	done
	if [ "$ok" = 0 ]; then
		ktap_test_pass "write-through has an O_DSYNC descriptor of each backend, an fdset's too"
	else
		ktap_test_fail "write-through has an O_DSYNC descriptor of each backend, an fdset's too"
	fi
}

# The guest's results become this test's TAP; other lines are comments.
run_l2() {
	local line vmpid seen=0 killed=0 fds=0 rid rbytes

	truncate -s 64M "$IMG"
	"$VBP_SELFTEST_DIR/vm-run" -q "$QEMU" -c "$L2_CPUS" -m 1G -t 1500 -r \
		-l "$L2CONSOLE" \
		-a -device -a "vhost-blk-pci,id=e2e-null,backend=$NULLB_DEV,serial=e2e-null,num-queues=2,poll-us=$POLL_US" \
		-a -add-fd -a "fd=7,set=1,opaque=$IMG" \
		-a -device -a "vhost-blk-pci,id=e2e-file,backend=/dev/fdset/1,serial=e2e-file" \
		-a -device -a "vhost-blk-pci,id=e2e-topo,backend=$TOPO_DEV,serial=e2e-topo" \
		-a -qmp -a "unix:$L2QMP,server=on,wait=off" \
		-a -virtfs -a "$(vbp_stats_share)" \
		-e "E2E_DISKS=e2e-null e2e-file" -e E2E_POLLED=e2e-null \
		-e "E2E_POLL_US=$POLL_US" -e "E2E_TOPO=e2e-topo $(topology "$TOPO_DEV")" \
		-- "$VBP_SELFTEST_DIR/vhost_blk_e2e_guest.sh" > "$L2LOG" 2>&1 7<>"$IMG" &
	vmpid=$!
	while IFS= read -r line; do
		# The guest is up: its QEMU has opened the backends.
		if [ "$fds" = 0 ] && [[ "$line" == "e2e: "* ]]; then
			fds=1
			check_dsync_fds
		fi
		case "$line" in
		"e2e: ok "*)
			seen=$((seen + 1))
			ktap_test_pass "L2: ${line#e2e: ok }" ;;
		"e2e: not ok "*)
			seen=$((seen + 1))
			ktap_test_fail "L2: ${line#e2e: not ok }" ;;
		"e2e: kill the VMM now")
			killed=1
			kill_vmm ;;
		"e2e: resize "*|"# e2e: resize "*)
			read -r rid _ rbytes <<< "${line#*e2e: resize }"
			resize "$rid" "$rbytes" ;;
		*)
			echo "# L2: $line" ;;
		esac
	done < <(tail -n +1 -F --pid=$vmpid "$L2LOG" 2>/dev/null)
	wait $vmpid
	echo "# L2's vm-run ended with $? (125: its QEMU was killed)"
	[ "$seen" = "$L2_TESTS" ] ||
		echo "# L2 reported $seen of its $L2_TESTS tests"
	while [ "$seen" -lt "$L2_TESTS" ]; do
		seen=$((seen + 1))
		ktap_test_fail "L2: test $seen did not run"
	done
	[ "$fds" = 1 ] ||
		ktap_test_fail "write-through has an O_DSYNC descriptor of each backend, an fdset's too"
	if [ "$killed" = 0 ]; then
		ktap_test_fail "guest I/O in flight when QEMU is killed"
		ktap_test_fail "the killed QEMU's devices are released"
	fi
	if grep -E -q 'WARNING:|BUG:|Oops|Call Trace|hung_task|blocked for more' "$L2CONSOLE"; then
		grep -E -A 10 'WARNING:|BUG:|Oops|Call Trace' "$L2CONSOLE" | sed 's/^/# /'
		ktap_test_fail "L2's kernel log is clean"
	else
		ktap_test_pass "L2's kernel log is clean"
	fi
}

# expect_error DESCRIPTION REGEX QEMU-ARG...: QEMU refuses to start and
# says why.  It runs as the user run_as sets up, root when empty.
run_as=()
expect_error() {
	local desc=$1 re=$2 out rc

	shift 2
	out=$(timeout 120 "${run_as[@]}" "$QEMU" -machine q35,accel=tcg -nodefaults \
		-display none -S -monitor none "$@" </dev/null 2>&1)
	rc=$?
	echo "# $desc: $(head -n 1 <<< "$out")"
	if [ "$rc" != 0 ] && [ "$rc" != 124 ] && grep -E -q -- "$re" <<< "$out"; then
		ktap_test_pass "QEMU error: $desc"
	else
		ktap_test_fail "QEMU error: $desc (exit $rc)"
	fi
}

# qmp_session QEMU-ARG... -- COMMAND...: QEMU, as the user run_as sets up
# (root when empty), with -S and QMP on standard input: the commands given,
# then quit.
qmp_session() {
	local args=()

	while [ "$1" != -- ]; do
		args+=("$1")
		shift
	done
	shift
	{
		echo '{"execute": "qmp_capabilities"}'
		for c in "$@"; do
			echo "$c"
		done
		echo '{"execute": "quit"}'
	} | timeout 120 "${run_as[@]}" "$QEMU" -machine q35,accel=tcg -nodefaults \
		-display none -S -qmp stdio "${args[@]}" 2>&1
}

test_errors() {
	local out rc

	expect_error "module not loaded" \
		"/dev/vhost-blk-poll does not exist: the host module is not loaded \(modprobe vhost_blk_poll\)" \
		-device "vhost-blk-pci,backend=$IMG"
	vbp_load_host || return 1
	vbp_wait_for "$VBP_DEV"
	expect_error "backend not given" "backend is mandatory" \
		-device vhost-blk-pci
	expect_error "backend missing" "backend '/nonexistent' does not exist" \
		-device vhost-blk-pci,backend=/nonexistent
	expect_error "backend not a disk" "'/dev/null' is neither a block device nor a regular file" \
		-device vhost-blk-pci,backend=/dev/null
	expect_error "num-queues=0" "num-queues must be between 1 and [0-9]+" \
		-device "vhost-blk-pci,backend=$IMG,num-queues=0"
	expect_error "queue-size=100" "queue-size must be a power of 2" \
		-device "vhost-blk-pci,backend=$IMG,queue-size=100"
	expect_error "poll-us=-2" "poll-us must be from 0 to" \
		-device "vhost-blk-pci,backend=$IMG,poll-us=-2"
	expect_error "poll-cpus=2-x" "poll-cpus '2-x' is not a list of host CPUs" \
		-device "vhost-blk-pci,backend=$IMG,poll-cpus=2-x"
	expect_error "poll-cpus=4096" "poll-cpus: the host has no CPU 4096" \
		-device "vhost-blk-pci,backend=$IMG,poll-cpus=4096"
	expect_error "serial too long" "serial must not be longer than 20" \
		-device "vhost-blk-pci,backend=$IMG,serial=123456789012345678901"
	expect_error "vhostfd not open" "vhostfd" \
		-device "vhost-blk-pci,backend=$IMG,vhostfd=77"
	# Without root: the device node, and a backend only root may open.
	chmod 0600 "$IMG"
	run_as=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
	expect_error "no permission for /dev/vhost-blk-poll" \
		"/dev/vhost-blk-poll: permission denied .*vhostfd=" \
		-device "vhost-blk-pci,backend=$IMG"
	expect_error "no permission for the backend" \
		"backend '$IMG': permission denied" \
		-device "vhost-blk-pci,backend=$IMG,vhostfd=3" 3<>"$VBP_DEV"
	# That backend passed in an fdset, opened without O_DIRECT: QEMU
	# starts, and says it cannot serve write-through, which needs the file
	# opened once more.
	out=$(qmp_session -add-fd fd=4,set=1 \
		-device "vhost-blk-pci,backend=/dev/fdset/1,vhostfd=3" -- \
		3<>"$VBP_DEV" 4<>"$IMG")
	rc=$?
	echo "# $(grep -m 1 'vhost-blk' <<< "$out")"
	if [ "$rc" = 0 ] && grep -q "vhost-blk: backend '/dev/fdset/1' cannot be opened again with O_DSYNC .*no write-through" <<< "$out" &&
	   ! grep -q '"error"' <<< "$out"; then
		ktap_test_pass "a backend in an fdset QEMU may not open: served, without write-through, with a warning"
	else
		printf '# %s\n' "${out//$'\n'/$'\n'# }"
		ktap_test_fail "a backend in an fdset QEMU may not open: served, without write-through, with a warning (exit $rc)"
	fi
	run_as=()

	# Started, with an inherited /dev/vhost-blk-poll; migratable=off
	# refuses migration with the reason.
	out=$(qmp_session -device "vhost-blk-pci,backend=$NULLB_DEV,vhostfd=3,poll-cpus=0-1,poll-us=100,migratable=off" -- \
		'{"execute": "migrate", "arguments": {"uri": "exec:cat >/dev/null"}}' \
		3<>"$VBP_DEV")
	echo "# $(grep -o '"desc": "[^"]*"' <<< "$out" | head -n 1)"
	if grep -q 'vhost-blk with migratable=off cannot migrate' <<< "$out"; then
		ktap_test_pass "vhostfd= works, and migratable=off refuses migration with the reason"
	else
		printf '# %s\n' "${out//$'\n'/$'\n'# }"
		ktap_test_fail "vhostfd= works, and migratable=off refuses migration with the reason"
	fi
}

ktap_print_header
# L2's, its kernel log, the O_DSYNC descriptors, the kill (2), unload,
# null_blk, 13 errors, the fdset without access, vhostfd
ktap_set_plan $((L2_TESTS + 1 + 1 + 2 + 1 + 1 + 13 + 1 + 1))

vbp_load_host || exit "$KSFT_FAIL"
vbp_wait_for "$VBP_DEV" || exit "$KSFT_FAIL"
nullb_create || { echo "# cannot create the null_blk"; exit "$KSFT_FAIL"; }
if ! modprobe brd rd_nr=1 rd_size=16384 || ! vbp_wait_for "$TOPO_DEV"; then
	echo "# cannot create the brd disk"
	exit "$KSFT_FAIL"
fi
echo "# $TOPO_DEV: physical block, minimum and optimal I/O size $(topology "$TOPO_DEV")"

run_l2

if vbp_unload_host; then
	ktap_test_pass "vhost_blk_poll unloads after its VMM was killed"
else
	ktap_test_fail "vhost_blk_poll unloads after its VMM was killed"
	lsmod | sed 's/^/# /'
fi
if nullb_remove && rmmod brd; then
	ktap_test_pass "the backends are released: null_blk and brd removed"
else
	ktap_test_fail "the backends are released: null_blk and brd removed"
fi
nullb_create || exit "$KSFT_FAIL"
test_errors
vbp_loaded vhost_blk_poll && vbp_unload_host
nullb_remove
ktap_finished
