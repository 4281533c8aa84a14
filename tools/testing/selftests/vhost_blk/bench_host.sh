#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The host-side benchmark, run in a VM of three CPUs by "make bench-host".
# On one null_blk (no memory backing, no merging, poll queues), 4 KiB
# random reads and writes at queue depth 1 and 32 on one queue, through
#   native       fio, io_uring, direct, completions without polling
#   native-poll  the same, polled (IOPOLL, hipri) on the device's poll queues
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
# nothing to do (vhost-idle); qemu-storage-daemon's instructions while it
# has nothing to do (timers, its main loop: vu-idle) are costed per second
# and taken off its runs.  Everything runs BENCH_REPS times (default 2),
# interleaved, for the spread; BENCH_PATHS narrows the paths.  The records go to BENCH_OUT (default
# $VMRUN_OUT): runs.jsonl, one line per run; scripts/bench_host_report.py
# makes the tables.  Figures, not assertions.

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
vbp_require_root

secs=${BENCH_SECONDS:-5}
warm=2
reps=${BENCH_REPS:-2}
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
nullb=/dev/nullb0
stat=/sys/block/nullb0/stat
sock=/run/bench-host-vu.sock
raw=$(mktemp -d)
qsd_pid=
cleanup() {
	[ -z "$qsd_pid" ] || kill "$qsd_pid" 2>/dev/null
	rm -rf "$raw"
}
trap cleanup EXIT

die() {
	echo "bench: $*" >&2
	exit 1
}

[ "$(nproc)" -ge 3 ] || die "needs three CPUs (vm-run -c 3), has $(nproc)"
for t in fio qemu-storage-daemon python3 taskset; do
	command -v "$t" >/dev/null || die "$t is missing (make deps)"
done
cpus=$(nproc)
modprobe null_blk nr_devices=1 queue_mode=2 submit_queues="$cpus" \
	poll_queues="$cpus" gb=4 memory_backed=0 || exit 1
vbp_wait_for "$nullb" || exit 1
echo 2 > /sys/block/nullb0/queue/nomerges
vbp_loaded vhost_blk_poll || vbp_load_host || exit 1
vbp_wait_for "$VBP_DEV" || exit 1

# qemu-storage-daemon on the host CPU, without polling (poll-max-ns=0):
# every instruction it runs serves a request.
# shellcheck disable=SC2054 # commas are QEMU's
qsd=(qemu-storage-daemon
     --object iothread,id=io0,poll-max-ns=0
     --blockdev "driver=host_device,node-name=nullb,filename=$nullb,cache.direct=on,aio=native,locking=off"
     --export "type=vhost-user-blk,id=vu,node-name=nullb,iothread=io0,addr.type=unix,addr.path=$sock,writable=on,num-queues=1")
taskset -c "$host" "${qsd[@]}" > "$raw/qsd.log" 2>&1 &
qsd_pid=$!
vbp_wait_for "$sock" || { cat "$raw/qsd.log" >&2; die "qemu-storage-daemon did not start"; }

runs=$out/runs.jsonl
mkdir -p "$out"
: > "$runs"
python3 - "${qsd[*]}" "$poll_us" "$secs" "$cpus" > "$out/setup.json" <<'EOF'
import json, sys
print(json.dumps({"qsd": sys.argv[1], "poll_us": int(sys.argv[2]),
                  "seconds": int(sys.argv[3]), "cpus": int(sys.argv[4]),
                  "cpu_marks": 0, "cpu_guest": 1, "cpu_host": 2}))
EOF

# record REP PATH RW QD KIND FILE...: one line of runs.jsonl.  KIND fio:
# FILE is fio's JSON and the two marks; KIND vmm: the mini-VMM's line.
record() {
	python3 - "$@" >> "$runs" <<'EOF'
import json, sys

rep, path, rw, qd, kind = sys.argv[1:6]
r = {"rep": int(rep), "path": path, "rw": rw, "qd": int(qd)}
if kind == "fio":
    with open(sys.argv[6]) as f:
        j = json.load(f)["jobs"][0][rw[4:]]
    marks = []
    for m in sys.argv[7:9]:
        with open(m) as f:
            marks.append(json.loads(f.read()))
    ios = []
    for m in marks:
        v = [int(x) for x in m["files"]["/sys/block/nullb0/stat"].split()]
        ios.append(v[0] + v[4])
    ns = marks[1]["ns"] - marks[0]["ns"]
    r.update({"transport": "native", "window_ns": ns,
              "requests": ios[1] - ios[0],
              "lat_mean_us": round(j["lat_ns"]["mean"] / 1e3, 2),
              "lat_p99_us": round(
                  j["lat_ns"]["percentile"]["99.000000"] / 1e3, 2)})
else:
    with open(sys.argv[6]) as f:
        r.update(json.loads(f.read()))
print(json.dumps(r))
EOF
}

fio_run() {
	local rep=$1 path=$2 rw=$3 qd=$4 hipri=0 pid

	[ "$path" = native-poll ] && hipri=1
	# fio's main process stays off the guest CPU, its job alone there.
	taskset -c "$hk" fio --name=bench --filename="$nullb" \
		--cpus_allowed="$guest" \
		--ioengine=io_uring --direct=1 --rw="$rw" --bs=4k \
		--iodepth="$qd" --hipri="$hipri" --time_based \
		--runtime=$((warm + secs + 1)) --lat_percentiles=1 \
		--output-format=json > "$raw/fio.json" 2> "$raw/fio.err" &
	pid=$!
	sleep "$warm"
	taskset -c "$hk" "$MARK" start "$stat" > "$raw/m0" || return 1
	sleep "$secs"
	taskset -c "$hk" "$MARK" end "$stat" > "$raw/m1" || return 1
	wait "$pid" || { cat "$raw/fio.err" >&2; return 1; }
	record "$rep" "$path" "$rw" "$qd" fio "$raw/fio.json" "$raw/m0" "$raw/m1"
}

vmm_run() {
	local rep=$1 path=$2 rw=$3 qd=$4 mode=${2#*-} vu='' budget=$poll_us

	[ "${path%%-*}" = vu ] && vu=$sock
	case $mode in
	notify) budget=0 ;;
	# The ring polls the whole run with nothing to do.
	idle) budget=$(( (warm + secs + 5) * 1000000 )) mode=poll qd=0 ;;
	esac
	rm -f "$raw/vmm.json"
	VBP_TEST_BDEV=$nullb VBP_BENCH_MODE=$mode VBP_BENCH_RW=$rw \
	VBP_BENCH_QD=$qd VBP_BENCH_QUEUES=1 VBP_BENCH_SECONDS=$secs \
	VBP_BENCH_WARMUP=$warm VBP_BENCH_POLL_US=$budget \
	VBP_BENCH_CPUS=$hk,$guest,$host VBP_BENCH_VHOST_USER=$vu \
	VBP_BENCH_OUT="$raw/vmm.json" "$BENCH" > "$raw/log" 2>&1 ||
		{ cat "$raw/log" >&2; return 1; }
	record "$rep" "$path" "$rw" "$qd" vmm "$raw/vmm.json"
}

for rep in $(seq "$reps"); do
	for path in vhost-idle vu-idle; do
		echo "bench: round $rep of $reps: $path" >&2
		vmm_run "$rep" "$path" randread 0 || die "$path failed"
	done
	for rw in randread randwrite; do
		for qd in 1 32; do
			for path in $paths; do
				echo "bench: round $rep of $reps: $rw qd$qd $path" >&2
				case $path in
				native*) fio_run "$rep" "$path" "$rw" "$qd" ;;
				*) vmm_run "$rep" "$path" "$rw" "$qd" ;;
				esac || die "$rw qd$qd $path failed"
			done
		done
	done
done
echo "bench: $(wc -l < "$runs") runs in $runs" >&2
