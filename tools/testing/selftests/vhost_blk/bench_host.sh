#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The host-side benchmark, run in a VM of three CPUs by "make bench-host".
# On each of BENCH_BACKENDS (default: all three)
#   nullb-poll   a null_blk without memory backing and merging, 4 GiB, with
#                poll queues (/dev/nullb0)
#   nullb        the same without poll queues (/dev/nullb1, configfs)
#   file         a 512 MiB file, written in full, on ext4 (no journal,
#                lazytime) on a memory-backed null_blk without poll queues
#                (/dev/nullb2): direct I/O, asynchronous
# 4 KiB random reads and writes at queue depth 1 and 32 on one queue,
# through
#   native       fio, io_uring, direct, completions without polling
#   native-poll  the same, polled (IOPOLL, hipri) on the device's poll
#                queues: nullb-poll only
#   vhost-poll   the mini-VMM as a polling guest (no kicks while the vring
#                polls, no interrupts asked for) on vhost_blk_poll, the
#                vring's worker pinned and polling
#   vhost-notify the same with kicks and interrupts, poll budget 0
#   vu-poll      the mini-VMM's polling guest on qemu-storage-daemon's
#   vu-notify    vhost-user-blk export, and its notifying guest
# CPU 0 runs everything else and sets the marks, CPU 1 the guest side (fio,
# or the mini-VMM's queue), CPU 2 the host side (the vring's worker, or
# qemu-storage-daemon).  Each run measures a window of BENCH_SECONDS
# (default 5) between two marks, after a warm-up; under the TCG plugin
# insn_count.c the marks give each CPU's instructions in the window.  A
# polling run's idle passes are costed by a run whose ring polls with
# nothing to do (vhost-idle, on nullb-poll: an idle pass does not reach the
# backend); qemu-storage-daemon's instructions while it has nothing to do
# (timers, its main loop: vu-idle) are costed per second and taken off its
# runs.  Everything runs BENCH_REPS times (default 2), interleaved, for the
# spread; BENCH_PATHS narrows the paths.  The records go to BENCH_OUT
# (default $VMRUN_OUT): runs.jsonl, one line per run, each with its
# backend; scripts/bench_host_report.py makes the tables.  Figures, not
# assertions.

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
vbp_require_root

secs=${BENCH_SECONDS:-5}
warm=2
reps=${BENCH_REPS:-2}
backends=${BENCH_BACKENDS:-nullb-poll nullb file}
paths=${BENCH_PATHS:-native native-poll vhost-poll vhost-notify vu-poll vu-notify}
# The vrings' poll budget in the poll runs (microseconds): long enough
# that a polling ring never sleeps between two requests of a run, also on
# a loaded machine under software emulation (a sleep and a kick would be
# counted as serving).
poll_us=${BENCH_POLL_US:-100000}
out=${BENCH_OUT:-${VMRUN_OUT:-$PWD}}
BENCH=$VBP_SELFTEST_DIR/vhost_blk_bench
MARK=$VBP_SELFTEST_DIR/vbp_mark
hk=0 guest=1 host=2
nullb_mib=4096
file_mib=512
raw=$(mktemp -d)
mnt=$(mktemp -d)
qsd_pid=
# Per backend: what the I/O goes to, the stat file that counts fio's
# requests (the device's, or that of the device below the file system),
# qemu-storage-daemon's socket and a description.
declare -A target stat sock desc
cleanup() {
	if [ -n "$qsd_pid" ]; then
		kill "$qsd_pid" 2>/dev/null
		wait "$qsd_pid" 2>/dev/null
	fi
	! mountpoint -q "$mnt" || umount "$mnt"
	rmdir "$mnt"
	rm -rf "$raw"
}
trap cleanup EXIT

die() {
	echo "bench: $*" >&2
	exit 1
}

# backend_paths BACKEND: the paths of BENCH_PATHS that BACKEND has (all
# but native-poll without poll queues).
backend_paths() {
	local p

	for p in $paths; do
		if [ "$p" != native-poll ] || [ "$1" = nullb-poll ]; then
			echo "$p"
		fi
	done
}

# nullb_make NAME ATTR=VALUE...: vbp_nullb_make, and merging off.
nullb_make() {
	vbp_nullb_make "$@" && echo 2 > "/sys/block/$1/queue/nomerges"
}

[ "$(nproc)" -ge 3 ] || die "needs three CPUs (vm-run -c 3), has $(nproc)"
for t in fio qemu-storage-daemon python3 taskset mkfs.ext4; do
	command -v "$t" >/dev/null || die "$t is missing (make deps)"
done
for b in $backends; do
	case $b in
	nullb-poll | nullb | file) ;;
	*) die "BENCH_BACKENDS: no backend $b (nullb-poll, nullb, file)" ;;
	esac
done
cpus=$(nproc)
# nullb0 also serves the idle runs, whatever the backends.
modprobe null_blk nr_devices=1 queue_mode=2 submit_queues="$cpus" \
	poll_queues="$cpus" gb=$((nullb_mib / 1024)) memory_backed=0 || exit 1
vbp_wait_for /dev/nullb0 || exit 1
echo 2 > /sys/block/nullb0/queue/nomerges
target[nullb-poll]=/dev/nullb0
stat[nullb-poll]=/sys/block/nullb0/stat
sock[nullb-poll]=/run/bench-host-vu-nullb-poll.sock
desc[nullb-poll]="null_blk, no memory backing, nomerges=2, $nullb_mib MiB, $cpus submission and $cpus poll queues"
case " $backends " in
*" nullb "*)
	nullb_make nullb1 queue_mode=2 submit_queues="$cpus" poll_queues=0 \
		size=$nullb_mib memory_backed=0 || die "nullb1 failed"
	target[nullb]=/dev/nullb1
	stat[nullb]=/sys/block/nullb1/stat
	sock[nullb]=/run/bench-host-vu-nullb.sock
	desc[nullb]="null_blk, no memory backing, nomerges=2, $nullb_mib MiB, $cpus submission queues, no poll queues"
	;;
esac
case " $backends " in
*" file "*)
	# ext4 keeps its metadata still while the benchmark runs: no journal,
	# inode tables written now, timestamps kept in memory (lazytime).  The
	# file is written in full, so that every block is allocated and
	# written: direct I/O on it goes to the device, one bio a request.
	nullb_make nullb2 queue_mode=2 submit_queues="$cpus" poll_queues=0 \
		size=$((file_mib + 64)) memory_backed=1 || die "nullb2 failed"
	modprobe ext4 || exit 1
	mkfs.ext4 -q -F -O ^has_journal -E lazy_itable_init=0,nodiscard \
		/dev/nullb2 || die "mkfs.ext4 failed"
	mount -o noatime,lazytime /dev/nullb2 "$mnt" || die "mount failed"
	dd if=/dev/zero of="$mnt/image" bs=1M count=$file_mib oflag=direct \
		conv=fsync status=none || die "writing the file failed"
	target[file]=$mnt/image
	stat[file]=/sys/block/nullb2/stat
	sock[file]=/run/bench-host-vu-file.sock
	desc[file]="a $file_mib MiB file written in full on ext4 (no journal, lazytime) on a memory-backed null_blk without poll queues: direct I/O"
	;;
esac
vbp_loaded vhost_blk_poll || vbp_load_host || exit 1
vbp_wait_for "$VBP_DEV" || exit 1

# qemu-storage-daemon on the host CPU, without polling (poll-max-ns=0):
# every instruction it runs serves a request.  One export per backend;
# nullb-poll's also serves the idle runs.
# shellcheck disable=SC2054 # commas are QEMU's
qsd=(qemu-storage-daemon --object iothread,id=io0,poll-max-ns=0)
vu_backends=nullb-poll
for b in $backends; do
	[ "$b" = nullb-poll ] || vu_backends+=" $b"
done
for b in $vu_backends; do
	case $b in
	file) driver="file" ;;
	*) driver=host_device ;;
	esac
	# shellcheck disable=SC2054 # commas are QEMU's
	qsd+=(--blockdev "driver=$driver,node-name=$b,filename=${target[$b]},cache.direct=on,aio=native,locking=off"
	      --export "type=vhost-user-blk,id=$b,node-name=$b,iothread=io0,addr.type=unix,addr.path=${sock[$b]},writable=on,num-queues=1")
done
taskset -c "$host" "${qsd[@]}" > "$raw/qsd.log" 2>&1 &
qsd_pid=$!
for b in $vu_backends; do
	vbp_wait_for "${sock[$b]}" ||
		{ cat "$raw/qsd.log" >&2; die "qemu-storage-daemon did not start"; }
done

runs=$out/runs.jsonl
mkdir -p "$out"
: > "$runs"
descs=()
for b in $backends; do
	descs+=("$b=${desc[$b]}")
done
python3 - "${qsd[*]}" "$poll_us" "$secs" "$cpus" "${descs[@]}" \
	> "$out/setup.json" <<'EOF'
import json, sys
print(json.dumps({"qsd": sys.argv[1], "poll_us": int(sys.argv[2]),
                  "seconds": int(sys.argv[3]), "cpus": int(sys.argv[4]),
                  "cpu_marks": 0, "cpu_guest": 1, "cpu_host": 2,
                  "backends": dict(a.split("=", 1) for a in sys.argv[5:])}))
EOF

# record REP BACKEND PATH RW QD KIND FILE...: one line of runs.jsonl.  KIND
# fio: FILE is fio's JSON, the stat file and the two marks; KIND vmm: the
# mini-VMM's line.
record() {
	python3 - "$@" >> "$runs" <<'EOF'
import json, sys

rep, backend, path, rw, qd, kind = sys.argv[1:7]
r = {"rep": int(rep), "backend": backend, "path": path, "rw": rw,
     "qd": int(qd)}
if kind == "fio":
    with open(sys.argv[7]) as f:
        j = json.load(f)["jobs"][0][rw[4:]]
    stat = sys.argv[8]
    marks = []
    for m in sys.argv[9:11]:
        with open(m) as f:
            marks.append(json.loads(f.read()))
    ios = []
    for m in marks:
        v = [int(x) for x in m["files"][stat].split()]
        ios.append(v[0] + v[4])
    ns = marks[1]["ns"] - marks[0]["ns"]
    r.update({"transport": "native", "window_ns": ns,
              "requests": ios[1] - ios[0],
              "lat_mean_us": round(j["lat_ns"]["mean"] / 1e3, 2),
              "lat_p99_us": round(
                  j["lat_ns"]["percentile"]["99.000000"] / 1e3, 2)})
else:
    with open(sys.argv[7]) as f:
        r.update(json.loads(f.read()))
print(json.dumps(r))
EOF
}

# io_count STAT: the reads and writes that a block device's stat file has
# counted.
io_count() {
	local v

	read -ra v < "$1" && echo $((v[0] + v[4]))
}

# io_moved STAT COUNT PID: whether STAT has counted more than COUNT, or fio
# (PID) has ended.
io_moved() {
	[ "$(io_count "$1")" != "$2" ] || ! kill -0 "$3" 2>/dev/null
}

fio_run() {
	local rep=$1 backend=$2 path=$3 rw=$4 qd=$5 hipri=0 pid n

	[ "$path" = native-poll ] && hipri=1
	rm -f "$raw/fio.stop"
	n=$(io_count "${stat[$backend]}")
	# fio's main process stays off the guest CPU, its job alone there.
	# Under emulation fio takes seconds to start and a mark seconds to
	# set: the warm-up begins with fio's I/O, and fio runs until told to
	# stop (its trigger file), its runtime only a bound.
	taskset -c "$hk" fio --name=bench --filename="${target[$backend]}" \
		--cpus_allowed="$guest" \
		--ioengine=io_uring --direct=1 --rw="$rw" --bs=4k \
		--iodepth="$qd" --hipri="$hipri" --time_based \
		--runtime=$((warm + secs + 120)) \
		--trigger-file="$raw/fio.stop" --lat_percentiles=1 \
		--output-format=json > "$raw/fio.json" 2> "$raw/fio.err" &
	pid=$!
	vbp_until 60 io_moved "${stat[$backend]}" "$n" "$pid" ||
		{ echo "bench: fio did no I/O in 60 s" >&2; return 1; }
	sleep "$warm"
	taskset -c "$hk" "$MARK" start "${stat[$backend]}" > "$raw/m0" ||
		return 1
	sleep "$secs"
	taskset -c "$hk" "$MARK" end "${stat[$backend]}" > "$raw/m1" ||
		return 1
	kill -0 "$pid" 2>/dev/null ||
		{ cat "$raw/fio.err" >&2; echo "bench: fio ended early" >&2; return 1; }
	touch "$raw/fio.stop"
	wait "$pid" || { cat "$raw/fio.err" >&2; return 1; }
	record "$rep" "$backend" "$path" "$rw" "$qd" fio "$raw/fio.json" \
		"${stat[$backend]}" "$raw/m0" "$raw/m1"
}

vmm_run() {
	local rep=$1 backend=$2 path=$3 rw=$4 qd=$5 mode=${3#*-} vu=''
	local budget=$poll_us

	[ "${path%%-*}" = vu ] && vu=${sock[$backend]}
	case $mode in
	notify) budget=0 ;;
	# The ring polls the whole run with nothing to do.
	idle) budget=$(( (warm + secs + 5) * 1000000 )) mode=poll qd=0 ;;
	esac
	rm -f "$raw/vmm.json"
	VBP_TEST_BDEV=${target[$backend]} VBP_BENCH_MODE=$mode \
	VBP_BENCH_RW=$rw VBP_BENCH_QD=$qd VBP_BENCH_QUEUES=1 \
	VBP_BENCH_SECONDS=$secs VBP_BENCH_WARMUP=$warm \
	VBP_BENCH_POLL_US=$budget VBP_BENCH_CPUS=$hk,$guest,$host \
	VBP_BENCH_VHOST_USER=$vu VBP_BENCH_OUT="$raw/vmm.json" \
		"$BENCH" > "$raw/log" 2>&1 || { cat "$raw/log" >&2; return 1; }
	record "$rep" "$backend" "$path" "$rw" "$qd" vmm "$raw/vmm.json"
}

for rep in $(seq "$reps"); do
	for path in vhost-idle vu-idle; do
		echo "bench: round $rep of $reps: $path" >&2
		vmm_run "$rep" nullb-poll "$path" randread 0 ||
			die "$path failed"
	done
	for backend in $backends; do
		for rw in randread randwrite; do
			for qd in 1 32; do
				for path in $(backend_paths "$backend"); do
					echo "bench: round $rep of $reps: $backend $rw qd$qd $path" >&2
					case $path in
					native*) fio_run "$rep" "$backend" "$path" "$rw" "$qd" ;;
					*) vmm_run "$rep" "$backend" "$path" "$rw" "$qd" ;;
					esac || die "$backend $rw qd$qd $path failed"
				done
			done
		done
	done
done
echo "bench: $(wc -l < "$runs") runs in $runs" >&2
