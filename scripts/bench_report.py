#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
#
# The report of make bench (scripts/bench.sh): reads RAW (fio's JSON and the
# snapshots taken around each job, one directory per path) and writes to
# OUT bench.json (one object per path, backend and workload), bench.md (the
# tables, with the ratios to native and to QEMU's virtio-blk-pci) and
# bench.png (IOPS per workload, drawn by gnuplot).
#
# usage: bench_report.py RAW OUT

import datetime
import json
import math
import os
import platform
import subprocess
import sys

# The paths in the order of the tables: directory, label.
PATHS = [
    ("native", "native (fio in L1)"),
    ("vhost-blk+poll", "vhost-blk-pci, virtio_blk_poll poll"),
    ("vhost-blk+hybrid", "vhost-blk-pci, virtio_blk_poll hybrid"),
    ("vhost-blk+virtio_blk", "vhost-blk-pci, virtio_blk"),
    ("virtio-blk-native+virtio_blk",
     "QEMU virtio-blk-pci, iothread-vq-mapping, aio=native"),
    ("virtio-blk-uring+virtio_blk",
     "QEMU virtio-blk-pci, iothread-vq-mapping, aio=io_uring"),
    ("vhost-user-blk+virtio_blk", "vhost-user-blk-pci, qemu-storage-daemon"),
]
BASE_QEMU = "virtio-blk-native+virtio_blk"
# The command lines of the paths (bench.sh's "commands"): its name there,
# what it is.
COMMANDS = [
    ("L2", "L2, every path: QEMU, memory shared with the vhost backends"),
    ("vhost-blk", "vhost-blk-pci"),
    ("virtio-blk-native", "QEMU virtio-blk-pci, aio=native"),
    ("virtio-blk-uring", "QEMU virtio-blk-pci, aio=io_uring"),
    ("vhost-user-blk", "vhost-user-blk-pci and its qemu-storage-daemon in L1"),
]
BACKENDS = [("null", "null_blk"), ("file", "raw file on tmpfs")]
USER_HZ = os.sysconf("SC_CLK_TCK")


def snapshot(path):
    """uptime (s), busy CPU (s), host (requests, kicks, signals), irqs"""
    snap = {}
    with open(path) as f:
        for line in f:
            w = line.split()
            if not w:
                continue
            if w[0] == "uptime":
                snap["t"] = float(w[1])
            elif w[0] == "cpu":
                # user nice system idle iowait irq softirq steal ...
                v = [int(x) for x in w[1:9]]
                snap["busy"] = (sum(v) - v[3] - v[4]) / USER_HZ
            elif w[0] == "host":
                snap["host"] = [int(x) for x in w[1:4]]
            elif w[0] == "irqs":
                snap["irqs"] = int(w[1])
    return snap


def workload_name(w):
    rw, bs, qd, nj = w.split("-")
    return f"{'seqread' if rw == 'read' else rw} {bs} {qd} {nj}"


def rows_of(raw, path):
    d = os.path.join(raw, path)
    with open(os.path.join(d, "fio.json")) as f:
        text = f.read()
    # fio may log lines ("Saving output of prerun ...") before the JSON.
    fio = json.loads(text[text.find("\n{") + 1 if not text.startswith("{")
                          else 0:])
    rows = []
    for job in fio["jobs"]:
        name = job["jobname"]
        _, backend, wl = name.split(".", 2)
        pre = snapshot(os.path.join(d, name + ".pre"))
        post = snapshot(os.path.join(d, name + ".post"))
        ios = sum(job[k]["total_ios"] for k in ("read", "write"))
        side = job["write"] if job["write"]["total_ios"] else job["read"]
        lat = side["lat_ns"]
        p99 = lat.get("percentile", {}).get("99.000000")
        r, k, s = (b - a for a, b in zip(pre["host"], post["host"]))
        irqs = post["irqs"] - pre["irqs"]
        guest = path != "native"
        row = {
            "path": path,
            "backend": backend,
            "workload": wl,
            "iops": round(sum(job[k]["iops"] for k in ("read", "write")), 1),
            "mb_s": round(sum(job[k]["bw_bytes"]
                              for k in ("read", "write")) / 1e6, 2),
            "lat_mean_us": round(lat["mean"] / 1e3, 1),
            "lat_p99_us": None if p99 is None else round(p99 / 1e3, 1),
            "ios": ios,
            "host_requests": r if guest else None,
            "kicks_per_req": round(k / r, 4) if guest and r else None,
            "signals_per_req": round(s / r, 4) if guest and r else None,
            "guest_irqs_per_req": round(irqs / ios, 4) if guest and ios
                                  else None,
            "host_cpu_s": round(post["busy"] - pre["busy"], 2),
            "host_cpu_s_per_mio": round((post["busy"] - pre["busy"])
                                        / ios * 1e6) if ios else None,
            "wall_s": round(post["t"] - pre["t"], 2),
        }
        rows.append(row)
    return rows


def ratio(a, b):
    return round(a / b, 4) if a and b else None


def fmt(v, p=0):
    if v is None:
        return "-"
    if isinstance(v, float) and p:
        return f"{v:.{p}f}"
    return f"{v:,.0f}" if isinstance(v, (int, float)) and abs(v) >= 100 \
        else f"{v:g}"


def geomean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def read_setup(raw):
    setup = {}
    try:
        with open(os.path.join(raw, "setup")) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("=")
                setup[k] = v
    except OSError:
        pass
    return setup


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown(rows, setup, paths, workloads):
    by = {(r["path"], r["backend"], r["workload"]): r for r in rows}
    accel = setup.get("l2_accel", "?")
    out = [
        "# make bench",
        "",
        f"Run on {datetime.date.today().isoformat()}: {cpu_model()}, "
        f"{os.cpu_count()} CPUs; L1 {setup.get('l1_cpus', '?')} vCPUs "
        f"(kernel {setup.get('kernel', '?')}), L2 {setup.get('l2_cpus', '?')} "
        f"vCPU under {accel.upper()}; {setup.get('qemu', '')}; "
        f"{setup.get('seconds', '?')} s per job; vhost-blk poll budget "
        f"{setup.get('poll_us', '?')} us.",
        "",
    ]
    if accel != "kvm":
        out += [
            "Caveat: without KVM, L1 runs under software emulation and L2 "
            "under software emulation inside it (nested TCG).  Every guest "
            "figure here measures that emulation far more than any I/O "
            "path; the ratios between the guest paths are what this run "
            "can say, and only roughly.  Run `make bench` on a host with "
            "KVM for real figures.",
            "",
        ]
    out += [
        "Ratios are of IOPS: to native (fio in L1 on the same backend) and "
        "to QEMU's virtio-blk-pci with an iothread per virtqueue "
        "(iothread-vq-mapping) and aio=native.  "
        "Kicks and signals per request are the host module's counters "
        "(vhost-blk-pci only); guest interrupts are L2's virtqueue "
        "interrupts per I/O; host CPU is L1's busy CPU time (all CPUs, "
        "guest emulation included) per million I/Os.",
        "",
        "## Summary: geometric mean over the workloads",
        "",
        "| path | backend | x native | x QEMU virtio-blk |",
        "|---|---|---:|---:|",
    ]
    for p, label in paths:
        for b, blabel in BACKENDS:
            rs = [by.get((p, b, w)) for w in workloads]
            rs = [r for r in rs if r]
            if not rs:
                continue
            out.append(f"| {label} | {blabel} | "
                       f"{fmt(geomean([r['x_native'] for r in rs]), 4)} | "
                       f"{fmt(geomean([r['x_qemu'] for r in rs]), 4)} |")
    for b, blabel in BACKENDS:
        if not any(r["backend"] == b for r in rows):
            continue
        out += [
            "",
            f"## {blabel}",
            "",
            "| workload | path | IOPS | MB/s | mean us | p99 us | kicks/req "
            "| signals/req | guest irqs/req | host CPU s/Mio | x native "
            "| x QEMU |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for w in workloads:
            for p, label in paths:
                r = by.get((p, b, w))
                if not r:
                    continue
                out.append(
                    f"| {workload_name(w)} | {label} | {fmt(r['iops'])} | "
                    f"{fmt(r['mb_s'])} | {fmt(r['lat_mean_us'])} | "
                    f"{fmt(r['lat_p99_us'])} | "
                    f"{fmt(r['kicks_per_req'], 4)} | "
                    f"{fmt(r['signals_per_req'], 4)} | "
                    f"{fmt(r['guest_irqs_per_req'], 4)} | "
                    f"{fmt(r['host_cpu_s_per_mio'])} | "
                    f"{fmt(r['x_native'], 4)} | {fmt(r['x_qemu'], 4)} |")
    return "\n".join(out) + "\n"


def command_lines(raw):
    """The command line of each path, as bench.sh recorded them."""
    cmds = {}
    try:
        with open(os.path.join(raw, "commands")) as f:
            for line in f:
                path, _, cmd = line.rstrip("\n").partition("\t")
                cmds.setdefault(path, []).append(cmd)
    except OSError:
        return ""
    out = ["", "## Command lines", ""]
    for path, label in COMMANDS:
        if path not in cmds:
            continue
        out += [f"{label}:", "", "```"] + cmds[path] + ["```", ""]
    return "\n".join(out)


def plot(rows, paths, workloads, out, title):
    by = {(r["path"], r["backend"], r["workload"]): r for r in rows}
    backends = [(b, lab) for b, lab in BACKENDS
                if any(r["backend"] == b and r["iops"] for r in rows)]
    dat = os.path.join(out, "bench.dat")
    with open(dat, "w") as f:
        for b, _ in backends:
            f.write("workload " + " ".join(f'"{lab}"' for _, lab in paths)
                    + "\n")
            for w in workloads:
                vals = [by.get((p, b, w)) for p, _ in paths]
                f.write(f'"{workload_name(w)}" ' + " ".join(
                    str(v["iops"]) if v and v["iops"] else "NaN"
                    for v in vals) + "\n")
            f.write("\n\n")
    n = len(paths)
    script = f"""
set terminal png size 1400,1000 font ",10" noenhanced
set output "{os.path.join(out, 'bench.png')}"
set multiplot layout {len(backends)},1 title "{title}"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.9 border -1
set logscale y
set ylabel "IOPS (log scale)"
set xtics rotate by -20 scale 0
set key outside right top vertical
set grid ytics
"""
    for i, (b, blabel) in enumerate(backends):
        script += f'set title "{blabel}"\n'
        script += (f'plot "{dat}" index {i} using 2:xtic(1) title '
                   'columnheader(2)')
        for c in range(3, n + 2):
            script += f', "" index {i} using {c} title columnheader({c})'
        script += "\n"
    script += "unset multiplot\n"
    subprocess.run(["gnuplot"], input=script, text=True, check=True)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: bench_report.py RAW OUT")
    raw, out = sys.argv[1:]
    setup = read_setup(raw)
    rows = []
    paths = []
    missing = []
    for p, label in PATHS:
        try:
            rows += rows_of(raw, p)
            paths.append((p, label))
        except (OSError, ValueError, KeyError) as e:
            missing.append(f"{label} ({os.path.join(raw, p)}: "
                           f"{type(e).__name__}, the run did not finish)")
    if not rows:
        sys.exit(f"bench_report: no results in {raw}")
    workloads = []
    for r in rows:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])
    by = {(r["path"], r["backend"], r["workload"]): r for r in rows}
    for r in rows:
        key = (r["backend"], r["workload"])
        nat = by.get(("native",) + key)
        qemu = by.get((BASE_QEMU,) + key)
        r["x_native"] = ratio(r["iops"], nat and nat["iops"])
        r["x_qemu"] = ratio(r["iops"], qemu and qemu["iops"])
        r["accel"] = setup.get("l2_accel")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench.json"), "w") as f:
        json.dump(rows, f, indent=1)
    table = markdown(rows, setup, paths, workloads)
    table += command_lines(raw)
    if missing:
        table += ("\n## Not measured\n\nNo complete results of: "
                  + "; ".join(missing) + ".\n")
    # The host side (make bench-host), when it ran before.
    host = os.path.join(out, "bench-host.md")
    if os.path.exists(host):
        with open(host) as f:
            table += ("\n## Host side (make bench-host): the mini-VMM on "
                      "vhost_blk_poll, no guest\n\n" + f.read())
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(table)
    plot(rows, paths, workloads, out,
         f"make bench {datetime.date.today().isoformat()}: L2 under "
         f"{setup.get('l2_accel', '?').upper()}, "
         f"{setup.get('seconds', '?')} s per job")
    print(table)


if __name__ == "__main__":
    main()
