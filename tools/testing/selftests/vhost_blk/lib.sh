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
# Where null_blk devices are made (configfs).
VBP_NULLB_CONFIG=/sys/kernel/config/nullb

# shellcheck source=/dev/null
. "$VBP_SELFTEST_DIR/../kselftest/ktap_helpers.sh"

# vbp_require_qemu: QEMU with vhost-blk-pci in $VBP_QEMU (make qemu) as
# $QEMU, or the whole test skipped.
vbp_require_qemu() {
	QEMU=${VBP_QEMU:-}
	if [ ! -x "$QEMU" ] ||
	   ! "$QEMU" -device help 2>/dev/null | grep -q '"vhost-blk-pci"'; then
		ktap_skip_all "no QEMU with vhost-blk-pci in VBP_QEMU (make qemu)"
		exit "$KSFT_SKIP"
	fi
}

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

# vbp_until SECONDS COMMAND...: run COMMAND every 0.1 s until it succeeds
# (return 0) or SECONDS of wall time have passed (return 1); the time it
# took is left in vbp_waited, in seconds with one decimal.
vbp_until() {
	local t0=${EPOCHREALTIME/./} end rc=0 d

	end=$((t0 + $1 * 1000000))
	shift
	until "$@"; do
		[ "${EPOCHREALTIME/./}" -lt "$end" ] || { rc=1; break; }
		vbp_nap 0.1
	done
	d=$(((${EPOCHREALTIME/./} - t0) / 100000))
	vbp_waited=$((d / 10)).$((d % 10))
	return $rc
}

# vbp_show_blocked: print the kernel stack of every task in
# uninterruptible sleep, as "# " comments (what a wait that never ends is
# stuck on).
vbp_show_blocked() {
	local f pid

	# One program for all tasks: grep skips those that exit meanwhile.
	while read -r f; do
		pid=${f#/proc/}
		pid=${pid%/status}
		echo "# blocked: $pid $(cat "/proc/$pid/comm" 2>/dev/null)"
		sed 's/^/#   /' "/proc/$pid/stack" 2>/dev/null
	done < <(grep -ls '^State:[[:space:]]*D' /proc/[0-9]*/status)
}

# vbp_nap SECONDS: sleep without starting a program (each one started costs
# seconds in a nested, emulated guest).
vbp_nap() {
	[ -n "${_vbp_nap_fd:-}" ] || exec {_vbp_nap_fd}<> <(:)
	read -r -t "$1" -u "$_vbp_nap_fd" || true
}

# vbp_find_disk SERIAL [PREFIX]: the name of the disk (PREFIX*, any disk by
# default) with that serial.
vbp_find_disk() {
	local b serial

	for b in /sys/block/"${2:-}"*; do
		serial=
		[ -r "$b/serial" ] && read -r serial < "$b/serial"
		[ "$serial" = "$1" ] && { echo "${b##*/}"; return 0; }
	done
	return 1
}

# vbp_disk_by_serial SERIAL [PREFIX]: the same, once the disk and its device
# node are there (up to 10 s).
vbp_disk_by_serial() {
	local b

	for _ in {1..100}; do
		b=$(vbp_find_disk "$@") && [ -b "/dev/$b" ] && { echo "$b"; return 0; }
		vbp_nap 0.1
	done
	return 1
}

# vbp_virtio_of DISK: the virtio device (virtioN) under a disk.
vbp_virtio_of() {
	(cd -P "/sys/block/$1/device" 2>/dev/null && echo "${PWD##*/}")
}

# vbp_vq_irqs [VIRTIO_DEV...]: interrupts taken by the request virtqueues of
# these virtio devices (virtioN), of every virtio device without argument.
vbp_vq_irqs() {
	local n=0 ncpu f v x i

	{
		read -r -a f
		ncpu=${#f[@]}
		while read -r -a f; do
			[[ "${f[-1]}" == virtio*-req.* ]] || continue
			if [ $# -gt 0 ]; then
				for v in "$@"; do
					[[ "${f[-1]}" == "$v-req."* ]] && break
				done
				[[ "${f[-1]}" == "$v-req."* ]] || continue
			fi
			for ((i = 1; i <= ncpu; i++)); do
				x=${f[i]}
				[[ "$x" =~ ^[0-9]+$ ]] && n=$((n + x))
			done
		done
	} < /proc/interrupts
	echo "$n"
}

# The host module's counters (one directory per device, a line per vring),
# and how a guest of vm-run reads them: the VM that runs vhost_blk_poll
# shares the directory over 9p (vm-run -a -virtfs -a "$(vbp_stats_share)")
# and the guest mounts it (vbp_stats_mount DIR).
VBP_STATS=/sys/kernel/debug/vhost_blk_poll
VBP_STATS_TAG=vbpstats

vbp_stats_share() {
	echo "local,path=$VBP_STATS,mount_tag=$VBP_STATS_TAG,security_model=none,readonly=on"
}

vbp_stats_mount() {
	[ -d "$1" ] || mkdir -p "$1" || return
	mount -t 9p -o trans=virtio,version=9p2000.L,ro "$VBP_STATS_TAG" "$1"
}

# vbp_host_counters DIR [POLL_US]: "requests kicks signals" summed over the
# vrings of every device in DIR ($VBP_STATS or its mount in a guest), or
# over those polled with a budget of POLL_US.
vbp_host_counters() {
	local f vq req kicks sig poll r=0 k=0 s=0

	for f in "$1"/*/stats; do
		[ -r "$f" ] || continue
		while read -r vq req kicks sig _ _ _ _ poll _; do
			[[ "$vq" =~ ^[0-9]+$ ]] || continue
			[ -n "${2:-}" ] && [ "$poll" != "$2" ] && continue
			r=$((r + req)) k=$((k + kicks)) s=$((s + sig))
		done < "$f"
	done
	echo "$r $k $s"
}

vbp_require_root() {
	if [ "$(id -u)" -ne 0 ]; then
		ktap_skip_all "needs root"
		exit "$KSFT_SKIP"
	fi
}

# QMP of the VM's own QEMU, in a guest of vm-run -Q: $VMRUN_QMP is a serial
# port that vm-run joins to a QMP monitor.  Replies and events share the one
# stream; events read while waiting for something else are kept in
# $VBP_QMP_STATE/events for vbp_qmp_wait_event.  Callers are serialised by a
# lock, so the functions work from subshells ($(vbp_qmp ...)) and background
# jobs too; a vbp_qmp_wait_event holds it while it waits.  The port carries
# about 5 KB/s in an emulated guest: fine for commands and events, slow for
# big replies (query-qmp-schema: 200 KB).
VBP_QMP_STATE=${VBP_QMP_STATE:-/run/vbp-qmp}
VBP_QMP_TIMEOUT=${VBP_QMP_TIMEOUT:-30}

# _vbp_qmp_deadline SECONDS: set _vbp_qmp_end to SECONDS (a fraction too)
# from now, in microseconds since the epoch.  No subshells here and below:
# each fork costs milliseconds in an emulated guest.
_vbp_qmp_deadline() {
	local s=${1%%.*} f=''

	[[ "$1" == *.* ]] && f=${1#*.}
	f=${f}000000
	_vbp_qmp_end=$((${EPOCHREALTIME/./} + 10#${s:-0} * 1000000 + 10#${f:0:6}))
}

# _vbp_qmp_open: take the lock, open the port in _vbp_qmp_fd and, the first
# time in this VM, make it raw without echo and negotiate capabilities (the
# port stays raw: vm-run keeps it open).  _vbp_qmp_close undoes it.
_vbp_qmp_open() {
	local rc=0

	if [ -z "${VMRUN_QMP:-}" ] || [ ! -c "$VMRUN_QMP" ]; then
		echo "vbp_qmp: no QMP port (\$VMRUN_QMP; vm-run -Q)" >&2
		return 2
	fi
	[ -d "$VBP_QMP_STATE" ] || mkdir -p "$VBP_QMP_STATE" || return 2
	exec {_vbp_qmp_lock}>>"$VBP_QMP_STATE/lock" || return 2
	if ! flock -w "$VBP_QMP_TIMEOUT" "$_vbp_qmp_lock"; then
		echo "vbp_qmp: $VBP_QMP_STATE/lock still held" >&2
		exec {_vbp_qmp_lock}>&-
		return 2
	fi
	if ! exec {_vbp_qmp_fd}<>"$VMRUN_QMP"; then
		_vbp_qmp_close
		return 2
	fi
	[ -e "$VBP_QMP_STATE/ready" ] && return 0
	if ! stty raw -echo <&"$_vbp_qmp_fd"; then
		_vbp_qmp_close
		return 2
	fi
	# A second negotiation (a lost marker) is refused as complete: rc 1.
	_vbp_qmp_execute '{"execute": "qmp_capabilities"}' >/dev/null || rc=$?
	if [ "$rc" -gt 1 ]; then
		_vbp_qmp_close
		return $rc
	fi
	: > "$VBP_QMP_STATE/ready"
}

_vbp_qmp_close() {
	[ -n "${_vbp_qmp_fd:-}" ] && exec {_vbp_qmp_fd}>&-
	exec {_vbp_qmp_lock}>&-
	_vbp_qmp_fd=
}

# _vbp_qmp_read id ID | event NAME MATCH: read the port until the reply with
# that id (or an error without id), or that event with MATCH in its line,
# before _vbp_qmp_end (after it, only what has come already), and set
# _vbp_qmp_line to it.  Other
# events are kept, other replies (to commands that timed out), the greeting
# and partial lines are dropped.  Returns 1 at the deadline or on a read
# error.
_vbp_qmp_read() {
	local kind=$1 want=$2 match=${3:-} line part='' left rc

	while :; do
		left=$((_vbp_qmp_end - ${EPOCHREALTIME/./}))
		if [ "$left" -le 0 ]; then
			read -t 0 -u "$_vbp_qmp_fd" || return 1
			left=100000
		fi
		printf -v left %d.%06d $((left / 1000000)) $((left % 1000000))
		rc=0
		# -n: read unbuffered.  A plain "read -t" reads a tty ahead into
		# a buffer that subshells inherit, so they read lines twice.
		IFS= read -r -s -n 16777216 -t "$left" -u "$_vbp_qmp_fd" line ||
			rc=$?
		if [ "$rc" -gt 128 ]; then
			# A timeout keeps the start of a line for the next read.
			part+=$line
			continue
		fi
		[ "$rc" = 0 ] || return 1
		line=${part}${line%$'\r'}
		part=
		if [[ "$line" == *"\"id\": \"$want\""* ]]; then
			[ "$kind" = id ] && { _vbp_qmp_line=$line; return 0; }
		elif [ "$kind" = id ] && [[ "$line" == "{\"error\": "* ]] &&
		     [[ "$line" != *"\"id\": "* ]]; then
			# QEMU could not parse the command: no id to answer with.
			_vbp_qmp_line=$line
			return 0
		elif [[ "$line" == "{\"timestamp\": "*"\"event\": \""* ]]; then
			if [ "$kind" = event ] &&
			   [[ "$line" == *"\"event\": \"$want\""* ]] &&
			   [[ "$line" == *"$match"* ]]; then
				_vbp_qmp_line=$line
				return 0
			fi
			echo "$line" >> "$VBP_QMP_STATE/events"
		fi
	done
}

# _vbp_qmp_execute JSON: send one command with an id of its own and wait
# for its reply (see vbp_qmp).
_vbp_qmp_execute() {
	local cmd=${1#"${1%%[![:space:]]*}"} id

	if [ "${cmd:0:1}" != "{" ]; then
		echo "vbp_qmp: not a JSON object: $1" >&2
		return 2
	fi
	id=vbp-$BASHPID-${EPOCHREALTIME/./}
	_vbp_qmp_deadline "$VBP_QMP_TIMEOUT"
	printf '{"id": "%s", %s\n' "$id" "${cmd:1}" >&"$_vbp_qmp_fd" || return 2
	if ! _vbp_qmp_read id "$id"; then
		echo "vbp_qmp: no reply in ${VBP_QMP_TIMEOUT}s to $1" >&2
		return 124
	fi
	echo "$_vbp_qmp_line"
	# An error reply has no "return" (a quote within a string is \").
	[[ "$_vbp_qmp_line" == *"\"return\": "* ]]
}

# vbp_qmp JSON: send one QMP command, one JSON object without an "id" of its
# own (one is added), e.g. for the drive of -drive ...,id=d1:
#   vbp_qmp '{"execute": "block_resize", "arguments": {"device": "d1", "size": 1073741824}}'
# wait up to $VBP_QMP_TIMEOUT s for its reply and print the reply's line.
# Returns 1 on an error reply, 124 on timeout, 2 when there is no QMP port.
vbp_qmp() {
	local rc=0

	_vbp_qmp_open || return
	_vbp_qmp_execute "$1" || rc=$?
	_vbp_qmp_close
	return $rc
}

# vbp_qmp_wait_event NAME [TIMEOUT [MATCH]]: wait up to TIMEOUT s (default
# $VBP_QMP_TIMEOUT) for an event NAME whose line holds the string MATCH,
# print its line and forget it.  Events that came before the call count,
# the oldest first; for example after device_del of a device with id vd1:
#   vbp_qmp_wait_event DEVICE_DELETED 60 '"device": "vd1"'
# Returns 124 on timeout.
vbp_qmp_wait_event() {
	local name=$1 timeout=${2:-$VBP_QMP_TIMEOUT} match=${3:-}
	local kept=$VBP_QMP_STATE/events n=0 found=0 line

	_vbp_qmp_open || return
	_vbp_qmp_deadline "$timeout"
	if [ -s "$kept" ]; then
		while IFS= read -r line; do
			n=$((n + 1))
			if [[ "$line" == *"\"event\": \"$name\""* ]] &&
			   [[ "$line" == *"$match"* ]]; then
				found=$n
				break
			fi
		done < "$kept"
	fi
	if [ "$found" -gt 0 ]; then
		sed -i "${found}d" "$kept"
		echo "$line"
		_vbp_qmp_close
		return 0
	fi
	if ! _vbp_qmp_read event "$name" "$match"; then
		echo "vbp_qmp: no event $name ${match:+($match) }in ${timeout}s" >&2
		_vbp_qmp_close
		return 124
	fi
	echo "$_vbp_qmp_line"
	_vbp_qmp_close
}

# vbp_polled_nullb NAME MIB [ATTR=VALUE...]: make /dev/NAME, a memory-backed
# null_blk of MIB MiB with two submission and two poll queues (and the
# configfs attributes given), through configfs, and write all of it once.  A memory-backed null_blk allocates the page of a
# sector on its first write, in its poll handler too, and Linux 6.12 does
# that under the RCU read lock of bio polling (null_poll ->
# null_insert_page, which a kernel with DEBUG_ATOMIC_SLEEP reports).
# Written beforehand, polled I/O finds every page there.
vbp_polled_nullb() {
	local name=$1 mib=$2

	shift 2
	if ! vbp_loaded null_blk; then
		modprobe null_blk nr_devices=0 queue_mode=2 submit_queues=2 \
			poll_queues=2 || return
	fi
	vbp_nullb_make "$name" "$@" size="$mib" memory_backed=1 &&
		dd if=/dev/zero of="/dev/$name" bs=1M count="$mib" \
			oflag=direct status=none
}

# vbp_nullb_make NAME ATTR=VALUE...: make /dev/NAME, a null_blk (the module
# loaded) through configfs with these attributes, written in this order,
# then powered on.
vbp_nullb_make() {
	local name=$1 d=$VBP_NULLB_CONFIG/$1 a

	shift
	mountpoint -q /sys/kernel/config ||
		mount -t configfs none /sys/kernel/config || return
	mkdir "$d" || return
	for a in "$@" power=1; do
		echo "${a#*=}" > "$d/${a%%=*}" || return
	done
	vbp_wait_for "/dev/$name"
}

# vbp_nullb_remove NAME: power off and remove a null_blk made through
# configfs, if it is there.
vbp_nullb_remove() {
	local d=$VBP_NULLB_CONFIG/$1

	[ -d "$d" ] || return 0
	echo 0 > "$d/power" && rmdir "$d"
}
