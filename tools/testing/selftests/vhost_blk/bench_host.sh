#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The host-side benchmark, run in a VM by "make bench-host".  On one
# multi-queue null_blk (no memory backing), 4 KiB random reads and writes at
# queue depth 1 and 32, on 1 and 2 queues:
#   native       fio, io_uring, direct, interrupt-driven completions
#   native-poll  the same, polled (hipri) on the device's poll queues
#   poll         the mini-VMM as a polling guest (no kicks while the vring
#                polls, no interrupts asked for) on vhost_blk_poll with
#                polling vrings, one pinned worker per vring
#   notify       the same with kicks and interrupts, poll budget 0
# Writes bench-host.json and bench-host.md to BENCH_OUT (default
# $VMRUN_OUT) and prints the table.  Figures, not assertions.

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
vbp_require_root

secs=${BENCH_SECONDS:-5}
# The vrings' poll budget in the poll runs (microseconds); software
# emulation needs a longer one than real hardware.
poll_us=${BENCH_POLL_US:-500}
out=${BENCH_OUT:-${VMRUN_OUT:-$PWD}}
VMM_TEST=$VBP_SELFTEST_DIR/vhost_blk_vmm_test
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT

modprobe null_blk nr_devices=1 queue_mode=2 submit_queues=2 poll_queues=2 \
	gb=4 memory_backed=0 || exit 1
vbp_wait_for /dev/nullb0 || exit 1
vbp_loaded vhost_blk_poll || vbp_load_host || exit 1
vbp_wait_for "$VBP_DEV" || exit 1

for rw in randread randwrite; do
	for qd in 1 32; do
		for nq in 1 2; do
			cfg="$rw qd$qd q$nq"
			for hipri in 0 1; do
				echo "bench: $cfg native hipri=$hipri" >&2
				fio --name=bench --filename=/dev/nullb0 \
				    --ioengine=io_uring --direct=1 --rw="$rw" \
				    --bs=4k --iodepth="$qd" --numjobs="$nq" \
				    --hipri="$hipri" --time_based \
				    --runtime="$secs" --group_reporting \
				    --lat_percentiles=1 --output-format=json \
				    > "$raw/fio-$rw-$qd-$nq-$hipri.json" ||
					exit 1
			done
			for mode in poll notify; do
				echo "bench: $cfg vhost $mode" >&2
				VBP_TEST_BDEV=/dev/nullb0 VBP_BENCH_MODE=$mode \
				VBP_BENCH_RW=$rw VBP_BENCH_QD=$qd \
				VBP_BENCH_QUEUES=$nq VBP_BENCH_SECONDS=$secs \
				VBP_BENCH_POLL_US=$poll_us \
				VBP_BENCH_OUT="$raw/vhost.jsonl" \
					"$VMM_TEST" -r bench.run > "$raw/log" 2>&1 ||
					{ cat "$raw/log" >&2; exit 1; }
			done
		done
	done
done

mkdir -p "$out"
python3 - "$raw" "$out" "$secs" "$poll_us" <<'EOF'
import json, os, sys

raw, out, secs, poll_us = sys.argv[1:5]
rows = []
for rw in ("randread", "randwrite"):
    for qd in (1, 32):
        for nq in (1, 2):
            for hipri in (0, 1):
                with open(f"{raw}/fio-{rw}-{qd}-{nq}-{hipri}.json") as f:
                    j = json.load(f)["jobs"][0][rw[4:]]
                rows.append({
                    "config": f"{rw} qd{qd} q{nq} native"
                              + ("-poll" if hipri else ""),
                    "iops": round(j["iops"]),
                    "lat_mean_us": round(j["lat_ns"]["mean"] / 1e3, 2),
                    "lat_p99_us": round(
                        j["lat_ns"]["percentile"]["99.000000"] / 1e3, 2),
                    "kicks_per_req": None, "signals_per_req": None})
with open(f"{raw}/vhost.jsonl") as f:
    for line in f:
        r = json.loads(line)
        r["config"] = f"{r['rw']} qd{r['qd']} q{r['queues']} {r['mode']}"
        for k in ("mode", "rw", "qd", "queues"):
            del r[k]
        rows.append(r)

with open(f"{out}/bench-host.json", "w") as f:
    json.dump(rows, f, indent=1)

by = {r["config"]: r for r in rows}
fmt = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"
lines = ["| workload | path | IOPS | mean us | p99 us | kicks/req | "
         "signals/req | module kicks+signals/req | poll/native | "
         "poll/native-poll | poll/notify |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    w, path = r["config"].rsplit(" ", 1)
    poll = by[f"{w} poll"]["iops"]
    ratios = ["", "", ""]
    if path == "poll":
        ratios = [fmt(poll / by[f"{w} native"]["iops"]),
                  fmt(poll / by[f"{w} native-poll"]["iops"]),
                  fmt(poll / by[f"{w} notify"]["iops"])]
    mod = r.get("module_kicks_per_req")
    mod = None if mod is None else mod + r["module_signals_per_req"]
    lines.append(f"| {w} | {path} | {r['iops']} | {fmt(r['lat_mean_us'])} "
                 f"| {fmt(r['lat_p99_us'])} | {fmt(r['kicks_per_req'], 4)} "
                 f"| {fmt(r['signals_per_req'], 4)} | {fmt(mod, 4)} | "
                 + " | ".join(ratios) + " |")
table = (f"{secs} s per run, poll budget {poll_us} us, "
         f"{os.cpu_count()} CPUs\n\n" + "\n".join(lines) + "\n")
with open(f"{out}/bench-host.md", "w") as f:
    f.write(table)
print(table)
EOF
