#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Reads behind flushes on their ring, run in a VM of three CPUs by "make
# bench-hol".  The backend is a dm-delay target over a memory-backed
# null_blk with a volatile write cache: it delays each flush by
# BENCH_FLUSH_MS (default 50) and reads not at all.  The mini-VMM
# (vhost_blk_bench) reads 4 KiB at random on one queue at queue depths
# BENCH_QDS (default "1 4 16"), polling (the vring polls, no kicks, no
# interrupts) and notified (poll budget 0), each once without flushes and
# once with one flush in flight on the same queue at all times, made again
# as soon as it is answered.  A flush that holds up the reads behind it
# shows as a 99th percentile of the read latency near the flush's delay,
# where reads that pass it keep the one they have without flushes.  CPU 0
# runs the main thread, CPU 1 the queue's thread, CPU 2 the vring's worker.
# Each run measures BENCH_SECONDS (default 5) after a warm-up of one.
#
# Writes to BENCH_OUT (default $VMRUN_OUT): bench-hol-runs.jsonl (one line
# per run, vhost_blk_bench's), bench-hol.json (per mode and queue depth:
# the reads' p99 and mean latency and IOPS without and with flushes, the
# ratios of the latencies, the flushes answered per second and their mean
# latency) and bench-hol.md (the table).  Figures, not assertions.

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
vbp_require_root

secs=${BENCH_SECONDS:-5}
warm=1
flush_ms=${BENCH_FLUSH_MS:-50}
qds=${BENCH_QDS:-1 4 16}
# The polling runs' budget (microseconds): the ring never sleeps between
# two requests, also under software emulation.
poll_us=100000
out=${BENCH_OUT:-${VMRUN_OUT:-$PWD}}
BENCH=$VBP_SELFTEST_DIR/vhost_blk_bench
NULLB=vbphol
NULLB_MIB=64
DM=vbpholdelay
raw=$(mktemp -d)
dm=

# shellcheck disable=SC2317 # called by the trap
cleanup() {
	[ -n "$dm" ] && dmsetup remove --noudevsync "$DM"
	vbp_nullb_remove "$NULLB"
	rm -rf "$raw"
}
trap cleanup EXIT

die() {
	echo "bench-hol: $*" >&2
	exit 1
}

[ "$(nproc)" -ge 3 ] || die "needs three CPUs (vm-run -c 3), has $(nproc)"
for t in dmsetup python3; do
	command -v "$t" >/dev/null || die "$t is missing (make deps)"
done
modprobe dm-delay || die "no dm-delay module"
# dmsetup runs without udev here.
export DM_DISABLE_UDEV=1
vbp_polled_nullb "$NULLB" "$NULLB_MIB" cache_size=16 || die "no null_blk"
nullb=/dev/$NULLB
sectors=$((NULLB_MIB * 2048))
dmsetup create --noudevsync "$DM" --table \
	"0 $sectors delay $nullb 0 0 $nullb 0 0 $nullb 0 $flush_ms" ||
	die "dm-delay does not take a flush delay"
dm=/dev/dm-$(dmsetup info -c --noheadings -o minor "$DM")
vbp_wait_for "$dm" || die "no $dm"
vbp_loaded vhost_blk_poll || vbp_load_host || die "vhost_blk_poll not loaded"
vbp_wait_for "$VBP_DEV" || die "no $VBP_DEV"

mkdir -p "$out"
runs=$out/bench-hol-runs.jsonl
: > "$runs"
for mode in poll notify; do
	budget=$poll_us
	[ "$mode" = notify ] && budget=0
	for qd in $qds; do
		for flush in 0 1; do
			echo "bench-hol: $mode qd$qd flushes $flush" >&2
			rm -f "$raw/run.json"
			VBP_TEST_BDEV=$dm VBP_BENCH_MODE=$mode \
			VBP_BENCH_RW=randread VBP_BENCH_QD=$qd \
			VBP_BENCH_FLUSH=$flush VBP_BENCH_QUEUES=1 \
			VBP_BENCH_SECONDS=$secs VBP_BENCH_WARMUP=$warm \
			VBP_BENCH_POLL_US=$budget VBP_BENCH_CPUS=0,1,2 \
			VBP_BENCH_OUT="$raw/run.json" "$BENCH" > "$raw/log" 2>&1 ||
				{ cat "$raw/log" >&2; die "$mode qd$qd flushes $flush failed"; }
			cat "$raw/run.json" >> "$runs"
		done
	done
done

python3 - "$runs" "$out" "$flush_ms" "$secs" <<'EOF'
import json, sys

runs, out, flush_ms, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
by = {}
with open(runs) as f:
    for line in f:
        r = json.loads(line)
        by[(r["mode"], r["qd"], r["flush"])] = r

rows = []
for (mode, qd, flush), r in by.items():
    if flush:
        continue
    w = by.get((mode, qd, True))
    if not w:
        continue

    def iops(x):
        return round(x["requests"] / (x["window_ns"] / 1e9), 1)

    rows.append({
        "mode": mode, "qd": qd,
        "p99_us": r["lat_p99_us"], "p99_flush_us": w["lat_p99_us"],
        "p99_ratio": round(w["lat_p99_us"] / r["lat_p99_us"], 2),
        "mean_us": r["lat_mean_us"], "mean_flush_us": w["lat_mean_us"],
        "mean_ratio": round(w["lat_mean_us"] / r["lat_mean_us"], 2),
        "iops": iops(r), "iops_flush": iops(w),
        "flushes_per_s": round(w["flushes"] / (w["window_ns"] / 1e9), 1),
        "flush_lat_mean_us": w["flush_lat_mean_us"],
    })
doc = {"flush_delay_ms": flush_ms, "seconds": secs, "rw": "randread",
       "bs": 4096, "rows": rows}
with open(f"{out}/bench-hol.json", "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")

with open(f"{out}/bench-hol.md", "w") as f:
    f.write("# Reads behind flushes on their ring\n\n")
    f.write(f"4 KiB random reads on one queue of vhost_blk_poll (the mini-VMM), "
            f"a dm-delay target over a null_blk that delays each flush by "
            f"{flush_ms} ms; without flushes, and with one flush in flight on "
            f"the same queue at all times.  {secs} s per run.\n\n")
    f.write("| mode | QD | p99 us | p99 us, flushes | ratio | mean us | "
            "mean us, flushes | ratio | IOPS | IOPS, flushes | flushes/s | "
            "flush mean us |\n")
    f.write("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for x in rows:
        fl = x["flush_lat_mean_us"]
        f.write(f"| {x['mode']} | {x['qd']} | {x['p99_us']:.1f} | "
                f"{x['p99_flush_us']:.1f} | {x['p99_ratio']:.2f} | "
                f"{x['mean_us']:.1f} | {x['mean_flush_us']:.1f} | "
                f"{x['mean_ratio']:.2f} | "
                f"{x['iops']:.0f} | {x['iops_flush']:.0f} | "
                f"{x['flushes_per_s']:.1f} | "
                f"{'-' if fl is None else format(fl, '.0f')} |\n")
EOF
[ -s "$out/bench-hol.md" ] || die "no report"
cat "$out/bench-hol.md"
