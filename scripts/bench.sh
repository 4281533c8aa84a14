#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# make bench: guest I/O side by side with the host and with QEMU's own
# block paths, every path on the same backends in one run.
#
# Boots a VM (L1) with this machine's kernel and root file system, loads
# vhost_blk_poll there and makes two backends: a multi-queue null_blk and a
# raw file on tmpfs.  fio measures them in L1 (native), then one guest (L2)
# of the patched QEMU 10 (make qemu) gets each backend four times:
#   vhost-blk-pci              served by vhost_blk_poll; L2 drives it with
#                              virtio_blk_poll in poll and in hybrid mode,
#                              and with the stock virtio_blk
#   virtio-blk-pci             QEMU's own device with iothread-vq-mapping
#                              (an iothread per virtqueue), aio=native
#   virtio-blk-pci             the same with aio=io_uring
#   vhost-user-blk-pci         served by the qemu-storage-daemon of the
#                              same build (aio=native, an iothread)
# and fio measures each with the stock virtio_blk (and vhost-blk-pci with
# virtio_blk_poll too).  The report gives the command line of each.  Workloads: 4 KiB random read and random write at
# queue depth 1 and 32 with 1 and 2 jobs, and 64 KiB sequential read at
# queue depth 32, BENCH_SECONDS (default 5) each.  Around every fio job a
# snapshot records L1's CPU time, the host module's counters and L2's
# virtqueue interrupts; scripts/bench_report.py turns fio's results and the
# snapshots into build/bench/bench.{json,md,png}.
#
# Knobs: BENCH_SECONDS, BENCH_WORKLOADS, BENCH_L1_CPUS (default 2),
# BENCH_L2_CPUS (default 1, also the queues of each guest device),
# BENCH_L2_POLL_US (the vhost-blk vrings' poll budget).
#
# Under software emulation L2 runs emulated inside an emulated machine: its
# figures are those of this setup, not of a real host.  With KVM (the VMs
# use it when /dev/kvm is usable) the same run gives real ones.
#
# The same script runs each stage: without argument on this machine, with
# "l1" in L1 and with "l2" in L2.

set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"
st=$VBP_ROOT/tools/testing/selftests/vhost_blk
# shellcheck source=tools/testing/selftests/vhost_blk/lib.sh
. "$st/lib.sh"

SECS=${BENCH_SECONDS:-5}
# The region of each backend the jobs use.
SIZE_MB=512
# workload: rw:block size:queue depth:jobs (BENCH_WORKLOADS: some of them)
WORKLOADS=${BENCH_WORKLOADS:-"randread:4k:1:1 randread:4k:1:2 randread:4k:32:1
randread:4k:32:2 randwrite:4k:1:1 randwrite:4k:1:2 randwrite:4k:32:1
randwrite:4k:32:2 read:64k:32:1"}
BACKENDS="null file"
# Where L2's devices sit on its PCI bus: slot of each path and backend.
declare -A SLOT=(
	[vhost-blk.null]=10 [vhost-blk.file]=11
	[virtio-blk-native.null]=12 [virtio-blk-native.file]=13
	[vhost-user-blk.null]=14 [vhost-user-blk.file]=15
	[virtio-blk-uring.null]=16 [virtio-blk-uring.file]=17
)
# The paths of L2 with the stock virtio_blk, in the order of their slots.
STOCK_PATHS="vhost-blk virtio-blk-native vhost-user-blk virtio-blk-uring"
L1_PROC=/run/l1proc
L1_PROC_TAG=l1proc
STATS_MNT=/run/vbpstats

# Time limit of L2 (seconds): its boot, then fio's jobs (six runs, two
# backends each), each up to a minute beyond its run time in a nested,
# emulated guest.  L1 has 20 minutes more for its own boot and runs.
l2_timeout() {
	echo $((900 + 6 * 2 * $(wc -w <<< "$WORKLOADS") * (SECS + 60)))
}

say() {
	echo "bench: $*"
}

die() {
	echo "bench: FAILED: $*"
	exit 1
}

# The snapshot fio takes before and after each job (exec_prerun and
# exec_postrun), in <job>.pre and <job>.post: L1's uptime and CPU times, the
# host module's counters, and the virtqueue interrupts of this machine.
# The clock and CPU times are read last before the job and first after it.
# fio runs the command in every clone of a job (numjobs) at about the same
# time: the clones that come first wait, the last one takes the snapshot
# before any of them starts its I/O, and the last to finish takes the one
# after (files created with noclobber number the clones).  In L2 every
# program start costs about a second and every read of a file shared over
# 9p a round trip through both emulators (the shell's "read" takes a byte
# at a time: a snapshot took half a minute).  So busybox's cat (the static
# busybox, one program) copies the shared files in one read each to /run
# and the shell parses the copies with its builtins.  fio runs the command
# with /bin/sh, which sources the snapshot (POSIX shell, with job= and nj=
# set) rather than start another shell; in L2, /bin/sh is the static
# busybox (stage_l2).
# write_snapshot FILE PROC STATS_DIR MODE
write_snapshot() {
	local dir

	dir=$(dirname "$1")
	{
		echo "# fio's exec_${4}run, sourced by its /bin/sh with job= and nj= set."
		echo "mode=$4 proc=$2 stats=$3 out=$dir"
		cat <<'SNAP'
t=/run/vbp-snap
clock() {
	/bin/busybox cat "$proc/uptime" "$proc/stat" > "$t.clock"
	{
		read -r up _
		echo "uptime $up"
		read -r cpu
		echo "$cpu"
	} < "$t.clock"
}
counters() {
	r=0 k=0 s=0
	/bin/busybox cat "$stats"/*/stats > "$t.host" 2>/dev/null
	while read -r vq req kick sig _; do
		case "$vq" in *[!0-9]*|"") continue ;; esac
		r=$((r + req)) k=$((k + kick)) s=$((s + sig))
	done < "$t.host"
	echo "host $r $k $s"
	n=0
	{
		read -r head
		set -- $head
		ncpu=$#
		while read -r _ rest; do
			case "$rest" in *virtio*-req.*) ;; *) continue ;; esac
			set -- $rest
			i=0
			while [ $i -lt $ncpu ]; do
				n=$((n + $1))
				shift
				i=$((i + 1))
			done
		done
	} < /proc/interrupts
	echo "irqs $n"
}
# This clone's number in the order of arrival.
c=1
until { set -C; true > "$t.$job.$mode.$c"; } 2>/dev/null; do
	c=$((c + 1))
done
set +C
if [ "$mode" = pre ]; then
	if [ "$c" -lt "$nj" ]; then
		while [ ! -e "$t.$job.pre.done" ]; do :; done
		exit 0
	fi
	{ counters; clock; } > "$out/$job.pre"
	true > "$t.$job.pre.done"
else
	[ "$c" -eq "$nj" ] || exit 0
	{ clock; counters; } > "$out/$job.post"
fi
exit 0
SNAP
	} > "$1"
}

# run_fio PATH-LABEL DIR BACKEND=DEVICE...: one fio run, a job per backend
# and workload one after the other, results and snapshots in DIR.
run_fio() {
	local label=$1 dir=$2 jobs=$2/jobs.fio bd w rw bs qd nj snap job

	shift 2
	mkdir -p "$dir" || return 1
	snap=$dir/snapshot
	write_snapshot "$snap.pre" "$PROC" "$STATS_DIR" pre
	write_snapshot "$snap.post" "$PROC" "$STATS_DIR" post
	{
		echo "[global]"
		echo "ioengine=libaio"
		echo "direct=1"
		echo "time_based=1"
		echo "runtime=$SECS"
		echo "size=${SIZE_MB}m"
		echo "group_reporting=1"
		echo "lat_percentiles=1"
		echo "randrepeat=0"
		echo "thread=1"
		for bd in "$@"; do
			for w in $WORKLOADS; do
				IFS=: read -r rw bs qd nj <<< "$w"
				job=$label.${bd%%=*}.$rw-$bs-qd$qd-j$nj
				echo "[$job]"
				echo "exec_prerun=job=$job nj=$nj . $snap.pre"
				echo "exec_postrun=job=$job nj=$nj . $snap.post"
				echo "stonewall"
				echo "filename=${bd#*=}"
				echo "rw=$rw"
				echo "bs=$bs"
				echo "iodepth=$qd"
				echo "numjobs=$nj"
			done
		done
	} > "$jobs"
	say "$label: $(($# * $(wc -w <<< "$WORKLOADS"))) jobs of $SECS s on $*"
	(cd "$dir" && fio --output-format=json --output=fio.json jobs.fio \
		> fio.log 2>&1) || { cat "$dir/fio.log"; return 1; }
}

# The disk of L2 at a PCI slot (vda, vbp0, ...), once it is there.
disk_at() {
	local b

	for _ in {1..100}; do
		for b in "/sys/bus/pci/devices/0000:00:$1.0/"virtio*/block/*; do
			[ -b "/dev/${b##*/}" ] && { echo "/dev/${b##*/}"; return 0; }
		done
		vbp_nap 0.1
	done
	return 1
}

# disks PATH...: "backend=device" of these paths' disks.
disks() {
	local p b d

	for p in "$@"; do
		for b in $BACKENDS; do
			d=$(disk_at "${SLOT[$p.$b]}") || { say "L2: no disk of $p on $b"; continue; }
			echo "$b=$d"
		done
	done
}

stage_l2() {
	local d out=$VMRUN_OUT i x

	say "L2: booted"
	vbp_stats_mount $STATS_MNT || die "L2 cannot read the host module's counters"
	mkdir -p $L1_PROC
	mount -t 9p -o trans=virtio,version=9p2000.L,ro $L1_PROC_TAG $L1_PROC ||
		die "L2 cannot read L1's /proc"
	PROC=$L1_PROC STATS_DIR=$STATS_MNT

	# fio starts its snapshots with /bin/sh: a start of dash costs L2
	# three seconds, one of the static busybox (its shell) one.
	mount --bind /bin/busybox /bin/sh || say "L2: /bin/sh stays as it is"

	modprobe virtio_blk || die "no virtio_blk"
	# shellcheck disable=SC2086 # a list of names
	mapfile -t d < <(disks $STOCK_PATHS)
	[ ${#d[@]} = $((2 * $(wc -w <<< "$STOCK_PATHS"))) ] ||
		die "L2 lacks disks: ${d[*]}"
	i=0
	for x in $STOCK_PATHS; do
		run_fio "$x+virtio_blk" "$out/$x+virtio_blk" "${d[@]:$i:2}" ||
			die "fio failed"
		i=$((i + 2))
	done

	rmmod virtio_blk
	vbp_load_guest mode=poll || die "cannot load virtio_blk_poll"
	mapfile -t d < <(disks vhost-blk)
	[ ${#d[@]} = 2 ] || die "virtio_blk_poll lacks disks: ${d[*]}"
	run_fio "vhost-blk+poll" "$out/vhost-blk+poll" "${d[@]}" || die "fio failed"
	for x in "${d[@]}"; do
		echo hybrid > "/sys/block/${x##*/}/completion_mode" ||
			die "cannot switch ${x#*=} to hybrid"
	done
	run_fio "vhost-blk+hybrid" "$out/vhost-blk+hybrid" "${d[@]}" || die "fio failed"
	vbp_unload_guest
	say "L2: done"
}

# command_line PATH ARG...: a line of the report's command lines, the
# arguments quoted where the shell needs it.
command_line() {
	local path=$1 a line=''

	shift
	for a in "$@"; do
		if [[ "$a" =~ ^[][A-Za-z0-9_,=./:+@%-]+$ ]]; then
			line+=" $a"
		else
			line+=" '$a'"
		fi
	done
	printf '%s\t%s\n' "$path" "${line# }" >> "$VMRUN_OUT/commands"
}

# l2_args PATH ARG...: QEMU arguments of L2 for PATH's device, recorded.
l2_args() {
	local path=$1 a

	shift
	for a in "$@"; do
		args+=(-a "$a")
	done
	command_line "$path" "$@"
}

stage_l1() {
	local qemu=${BENCH_QEMU:?} img=/tmp/bench.img q poll='' args=() qsd=() pid
	local sock=/run/bench-vu b dev rc accel i map iot aio

	say "L1: booted; loading vhost_blk_poll"
	vbp_load_host || die "cannot load vhost_blk_poll"
	vbp_wait_for "$VBP_DEV" || die "no $VBP_DEV"
	modprobe null_blk nr_devices=1 queue_mode=2 submit_queues=2 gb=1 \
		memory_backed=0 || die "cannot create a null_blk"
	vbp_wait_for /dev/nullb0 || die "no /dev/nullb0"
	truncate -s 1G "$img" || die "no room for $img"

	PROC=/proc STATS_DIR=$VBP_STATS
	run_fio native "$VMRUN_OUT/native" null=/dev/nullb0 file=$img ||
		die "fio failed"

	# One queue per L2 vCPU on every device.
	q=${BENCH_L2_CPUS:-1}
	# Poll budget of the vhost-blk vrings: the module's default with KVM;
	# under emulation L2's requests come milliseconds apart, far beyond it.
	accel=$("$st/vm-run" --accel)
	if [ -n "${BENCH_L2_POLL_US:-}" ]; then
		poll=$BENCH_L2_POLL_US
	elif [ "$accel" != kvm ]; then
		poll=1000000
	fi
	{
		echo "l1_cpus=$(nproc)"
		echo "l2_cpus=$q"
		echo "l2_accel=$accel"
		echo "poll_us=${poll:-default}"
		echo "seconds=$SECS"
		echo "kernel=$(uname -r)"
		echo "qemu=$("$qemu" --version | head -n 1)"
	} > "$VMRUN_OUT/setup"

	mkdir -p $sock
	# The qemu-storage-daemon of the same build.
	qsd=("${qemu%/*}/qemu-storage-daemon")
	for b in $BACKENDS; do
		case $b in
		null) qsd+=(--blockdev "driver=host_device,node-name=$b,filename=/dev/nullb0,cache.direct=on,aio=native,locking=off") ;;
		file) qsd+=(--blockdev "driver=file,node-name=$b,filename=$img,cache.direct=on,aio=native,locking=off") ;;
		esac
		qsd+=(--object "iothread,id=vu-io-$b"
		      --export "type=vhost-user-blk,id=vu-$b,node-name=$b,iothread=vu-io-$b,addr.type=unix,addr.path=$sock/$b.sock,writable=on,num-queues=$q")
	done
	: > "$VMRUN_OUT/commands"
	command_line vhost-user-blk "${qsd[@]}"
	"${qsd[@]}" > /tmp/qsd.log 2>&1 &
	pid=$!
	for b in $BACKENDS; do
		vbp_wait_for "$sock/$b.sock" || { cat /tmp/qsd.log; die "qemu-storage-daemon did not start"; }
	done

	# shellcheck disable=SC2054 # commas are QEMU's
	args=(-a -object -a memory-backend-memfd,id=mem,size=1G,share=on
	      -a -machine -a memory-backend=mem)
	for b in $BACKENDS; do
		case $b in
		null) dev=/dev/nullb0 ;;
		file) dev=$img ;;
		esac
		l2_args vhost-blk -device "vhost-blk-pci,backend=$dev,num-queues=$q${poll:+,poll-us=$poll},addr=${SLOT[vhost-blk.$b]}"
		# QEMU's device, an iothread per virtqueue.
		for aio in native uring; do
			map='' iot=()
			for ((i = 0; i < q; i++)); do
				iot+=(-object "iothread,id=io-$aio-$b-$i")
				map+="${map:+,}{\"iothread\":\"io-$aio-$b-$i\"}"
			done
			l2_args "virtio-blk-$aio" "${iot[@]}" \
				-drive "file=$dev,if=none,id=$aio-$b,format=raw,cache=none,aio=${aio/uring/io_uring},file.locking=off" \
				-device "{\"driver\":\"virtio-blk-pci\",\"drive\":\"$aio-$b\",\"num-queues\":$q,\"iothread-vq-mapping\":[$map],\"addr\":\"${SLOT[virtio-blk-$aio.$b]}\"}"
		done
		l2_args vhost-user-blk -chardev "socket,id=vu-$b,path=$sock/$b.sock" \
			-device "vhost-user-blk-pci,chardev=vu-$b,num-queues=$q,addr=${SLOT[vhost-user-blk.$b]}"
	done
	args+=(-a -virtfs -a "$(vbp_stats_share)"
	       -a -virtfs -a "local,path=/proc,mount_tag=$L1_PROC_TAG,security_model=none,readonly=on")
	command_line L2 "$qemu" "(vm-run -c $q -m 1G: its machine, kernel and 9p shares)" \
		-object memory-backend-memfd,id=mem,size=1G,share=on \
		-machine memory-backend=mem
	say "L1: starting L2: $q vCPU, $accel, vhost-blk poll budget ${poll:-default} us"
	"$st/vm-run" -q "$qemu" -c "$q" -m 1G -t "$(l2_timeout)" -O "$VMRUN_OUT" \
		-e "BENCH_SECONDS=$SECS" -e "BENCH_WORKLOADS=$WORKLOADS" \
		"${args[@]}" -- "$here/bench.sh" l2
	rc=$?
	kill "$pid"
	wait "$pid"
	[ "$rc" = 0 ] || die "L2 ended with $rc"
	vbp_unload_host || die "vhost_blk_poll does not unload"
	rmmod null_blk
	say "L1: done"
}

stage_host() {
	local t0 qemu out raw log rc

	t0=$(date +%s)
	for c in fio busybox cpio qemu-system-x86_64 gnuplot python3; do
		command -v "$c" >/dev/null || die "$c is missing: run make deps first (as root)"
	done
	[ -r "$VBP_VMLINUZ" ] || die "no kernel $VBP_VMLINUZ: run make deps first (as root)"
	out=$VBP_BUILD/bench
	raw=$out/raw
	rm -rf "$raw"
	mkdir -p "$raw"
	log=$out/bench.log
	say "QEMU with vhost-blk-pci (make qemu; about 8 minutes the first time)"
	qemu=$("$VBP_ROOT/qemu/build.sh" 2>"$log") || die "make qemu failed (see $log)"
	say "booting L1; L2 boots inside it"
	(cd "$st" && "$st/vm-run" -c "${BENCH_L1_CPUS:-2}" -m 4G -t $(($(l2_timeout) + 1200)) -O "$raw" \
		-e "BENCH_QEMU=$qemu" -e "BENCH_SECONDS=$SECS" \
		-e "BENCH_WORKLOADS=$WORKLOADS" \
		${BENCH_L2_POLL_US:+-e "BENCH_L2_POLL_US=$BENCH_L2_POLL_US"} \
		${BENCH_L2_CPUS:+-e "BENCH_L2_CPUS=$BENCH_L2_CPUS"} \
		-- "$here/bench.sh" l1) 2>&1 | tee -a "$log" |
		while IFS= read -r line; do
			case "$line" in
			"bench: "*) printf 'bench: [%4d s] %s\n' $(( $(date +%s) - t0 )) "${line#bench: }" ;;
			esac
		done
	rc=${PIPESTATUS[0]}
	# What was measured is reported also when a path did not finish.
	python3 "$here/bench_report.py" "$raw" "$out" || die "no report"
	[ "$rc" = 0 ] || { tail -n 30 "$log"; die "see $log; $out/bench.md has what was measured"; }
	say "done in $(( $(date +%s) - t0 )) s: $out/bench.{json,md,png}"
}

case "${1:-}" in
l1) stage_l1 ;;
l2) stage_l2 ;;
"") stage_host ;;
*) echo "usage: $0" >&2; exit 2 ;;
esac
