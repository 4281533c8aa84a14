#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The tables of make bench-host: cost per request of each host path.

usage: bench_host_report.py RAW_DIR INSNS_JSONL OUT_DIR
       bench_host_report.py --compare A/bench-host.json B/bench-host.json

RAW_DIR holds what bench_host.sh wrote in the VM (runs.jsonl, setup.json);
a run without a backend (older records) ran on nullb-poll.
INSNS_JSONL is the TCG plugin's output (insn_count.c), one snapshot of every
vCPU's counters per mark, missing when the VM ran under KVM.  The k-th run
of runs.jsonl is measured between the k-th pair of marks.  Writes
OUT_DIR/bench-host.{json,md} and prints the markdown.

The projection to a real host uses the constants below; the arithmetic is
in Documentation/testing.rst, with the sources of the constants.
"""

import json
import os
import sys

# One instruction per cycle at 3 GHz: a stated assumption, not a
# measurement; scale the projected IOPS by your CPU's figure.
IPS = 3.0e9
HZ = 3.0e9
# Cycles of one VM exit (a guest's kick: an MMIO write trapped to KVM's
# ioeventfd) and of one interrupt injected into a running guest (its exit
# and the EOI's, without posted interrupts); Documentation/testing.rst.
EXIT_CYCLES = 2000
IRQ_CYCLES = 4000

BACKENDS = ("nullb-poll", "nullb", "file")
PATHS = ("native", "native-poll", "vhost-poll", "vhost-notify",
         "vu-poll", "vu-notify")
USER, KERNEL, SYSCALLS, IRETS = range(4)


def load_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def windows(runs, marks):
    """The plugin's counters between each run's two marks, per CPU."""
    if not marks:
        return None
    if len(marks) != 2 * len(runs):
        sys.exit(f"bench-host: {len(marks)} marks for {len(runs)} runs")
    out = []
    for k in range(len(runs)):
        a, b = marks[2 * k], marks[2 * k + 1]
        if a["mark"] != 1 or b["mark"] != 2:
            sys.exit(f"bench-host: marks {2 * k}, {2 * k + 1} are not a "
                     "start and an end")
        out.append([[y - x for x, y in zip(ca, cb)]
                    for ca, cb in zip(a["cpus"], b["cpus"])])
    return out


def sides(run, d, setup):
    """(host, guest) instructions and their kernel entries in the window."""
    g, h = setup["cpu_guest"], setup["cpu_host"]
    if run["transport"] == "native":
        # One CPU: fio (the application) in user mode, the host kernel's
        # path in kernel mode.
        return ({"insns": d[g][KERNEL], "syscalls": d[g][SYSCALLS],
                 "irets": d[g][IRETS]},
                {"insns": d[g][USER], "syscalls": 0, "irets": 0})
    return ({"insns": d[h][USER] + d[h][KERNEL], "syscalls": d[h][SYSCALLS],
             "irets": d[h][IRETS]},
            {"insns": d[g][USER] + d[g][KERNEL], "syscalls": d[g][SYSCALLS],
             "irets": d[g][IRETS]})


def per_run(runs, wins, setup):
    """Each run's figures per request; idle polling costed per pass."""
    idle = {}
    rows = []
    for k, r in enumerate(runs):
        row = dict(r)
        row.setdefault("backend", BACKENDS[0])
        n = r["requests"]
        row["iops"] = round(n * 1e9 / r["window_ns"]) if r["window_ns"] else 0
        if wins is not None:
            host, guest = sides(r, wins[k], setup)
            row["host"], row["guest"] = host, guest
        if r["path"] in ("vhost-idle", "vu-idle"):
            if wins is not None:
                c = idle.setdefault((r["rep"], r["transport"]), {})
                c["guest_per_spin"] = guest["insns"] / max(r["spins"], 1)
                if r.get("module"):
                    c["host_per_pass"] = (host["insns"] /
                                          max(r["module"]["idle_passes"], 1))
                else:
                    c["host_per_ns"] = host["insns"] / r["window_ns"]
                row.update(c)
            rows.append(row)
            continue
        if wins is not None and n:
            c = idle.get((r["rep"], r["transport"]), {})
            h_idle = g_idle = 0.0
            if r.get("module") and "host_per_pass" in c:
                h_idle = r["module"]["idle_passes"] * c["host_per_pass"]
            elif "host_per_ns" in c:
                h_idle = min(host["insns"], r["window_ns"] * c["host_per_ns"])
            if r.get("spins") and "guest_per_spin" in c:
                g_idle = r["spins"] * c["guest_per_spin"]
            row["host_serve_per_req"] = (host["insns"] - h_idle) / n
            row["host_idle_per_req"] = h_idle / n
            row["guest_serve_per_req"] = (guest["insns"] - g_idle) / n
            row["guest_idle_per_req"] = g_idle / n
            row["host_entries_per_req"] = (host["syscalls"] +
                                           host["irets"]) / n
            row["guest_syscalls_per_req"] = guest["syscalls"] / n
            row["guest_irets_per_req"] = guest["irets"] / n
        rows.append(row)
    return rows


def mean(v):
    return sum(v) / len(v) if v else None


def spread(v):
    """(max - min) / mean of the rounds, in percent."""
    m = mean(v)
    return 100.0 * (max(v) - min(v)) / m if v and m else None


def summary(rows):
    keys = ("iops", "lat_mean_us", "lat_p99_us",
            "host_serve_per_req", "host_idle_per_req",
            "guest_serve_per_req", "guest_idle_per_req",
            "host_entries_per_req", "guest_syscalls_per_req",
            "guest_irets_per_req", "kicks_per_req", "signals_per_req")
    out = {}
    for r in rows:
        if r["path"].endswith("-idle"):
            continue
        key = (r.get("backend", BACKENDS[0]), r["rw"], r["qd"], r["path"])
        s = out.setdefault(key, {"runs": []})
        s["runs"].append(r)
    for s in out.values():
        for k in keys:
            v = [r[k] for r in s["runs"] if r.get(k) is not None]
            s[k] = mean(v)
            if k in ("host_serve_per_req", "guest_serve_per_req", "iops"):
                s[k + "_spread"] = spread(v)
    return out


def job_order(key):
    """Backends in BACKENDS order, their workloads in order, the paths of
    each in PATHS order."""
    backend, rw, qd, path = key
    b = BACKENDS.index(backend) if backend in BACKENDS else len(BACKENDS)
    return b, backend, rw, qd, PATHS.index(path)


def backends(summ):
    """The backends of a summary, in order."""
    return sorted({key[0] for key in summ},
                  key=lambda b: job_order((b, "", 0, PATHS[0])))


def fmt(v, p=0):
    return "-" if v is None else f"{v:,.{p}f}"


def projection(s, native):
    """IOPS of one queue on a real host: its host core and guest vCPU."""
    host = s.get("host_serve_per_req")
    guest = s.get("guest_serve_per_req")
    if host is None or guest is None:
        return None, None
    if native:
        return IPS / (host + guest), None
    notif = (s.get("kicks_per_req") or 0) * EXIT_CYCLES + \
        (s.get("signals_per_req") or 0) * IRQ_CYCLES
    return IPS / host, 1.0 / (guest / IPS + notif / HZ)


def by_backend(summ):
    """(backend, [(job, summary), ...]) in order."""
    jobs = sorted(summ.items(), key=lambda i: job_order(i[0]))
    return [(b, [j for j in jobs if j[0][0] == b]) for b in backends(summ)]


def cost_table(lines, jobs):
    lines.append("| workload | path | IOPS (emulated) | host insns/req | "
                 "host idle insns/req | guest insns/req | guest "
                 "idle-poll insns/req | host kernel entries/req | guest "
                 "syscalls/req | guest irets/req | kicks/req | signals/req "
                 "| spread host insns | spread IOPS |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
                 "---:|---:|---:|")
    for (_, rw, qd, path), s in jobs:
        sp = s.get("host_serve_per_req_spread")
        lines.append(
            f"| {rw} qd{qd} | {path} | {fmt(s['iops'])} | "
            f"{fmt(s.get('host_serve_per_req'))} | "
            f"{fmt(s.get('host_idle_per_req'))} | "
            f"{fmt(s.get('guest_serve_per_req'))} | "
            f"{fmt(s.get('guest_idle_per_req'))} | "
            f"{fmt(s.get('host_entries_per_req'), 3)} | "
            f"{fmt(s.get('guest_syscalls_per_req'), 3)} | "
            f"{fmt(s.get('guest_irets_per_req'), 3)} | "
            f"{fmt(s.get('kicks_per_req'), 3)} | "
            f"{fmt(s.get('signals_per_req'), 3)} | "
            f"{fmt(sp, 2)}{'' if sp is None else ' %'} | "
            f"{fmt(s.get('iops_spread'), 1)} % |")


def projection_table(lines, jobs):
    lines.append("| workload | path | host core kIOPS | guest vCPU kIOPS | "
                 "queue kIOPS |")
    lines.append("|---|---|---:|---:|---:|")
    for (_, rw, qd, path), s in jobs:
        hc, gc = projection(s, path.startswith("native"))
        q = hc if gc is None else (None if hc is None else min(hc, gc))
        k = (lambda v: None if v is None else v / 1e3)
        lines.append(f"| {rw} qd{qd} | {path} | {fmt(k(hc))} | "
                     f"{fmt(k(gc))} | {fmt(k(q))} |")


def tables(summ, setup, have_insns):
    lines = []
    lines.append(f"{setup['seconds']} s windows, poll budget "
                 f"{setup['poll_us']} us, {setup['cpus']} CPUs (marks on "
                 f"CPU {setup['cpu_marks']}, guest side on CPU "
                 f"{setup['cpu_guest']}, host side on CPU "
                 f"{setup['cpu_host']}), one queue, 4 KiB, on")
    lines.append("")
    desc = setup.get("backends", {BACKENDS[0]: "null_blk, poll queues"})
    for b in backends(summ):
        lines.append(f"- `{b}`: {desc.get(b, '?')}")
    lines.append("")
    lines.append(f"qemu-storage-daemon: `{setup['qsd']}`")
    lines.append("")
    if not have_insns:
        lines.append("No instruction counts: the VM did not run under "
                     "software emulation with the TCG plugin.")
        lines.append("")
    lines.append("### Cost per request")
    lines.append("")
    for b, jobs in by_backend(summ):
        lines.append(f"#### {b}")
        lines.append("")
        cost_table(lines, jobs)
        lines.append("")
    if not have_insns:
        return "\n".join(lines) + "\n"

    lines.append("### Ratios of host instructions per request")
    lines.append("")
    lines.append("| backend | workload | vhost-poll / native-poll (goal <= "
                 "1.25) | vhost-poll / native | vhost-poll / vu-poll (goal "
                 "<= 0.5) | vhost-notify / vu-notify | vhost-notify / "
                 "native |")
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    workloads = sorted({key[1:3] for key in summ})
    for b in backends(summ):
        for rw, qd in workloads:
            def h(path):
                return summ.get((b, rw, qd, path),
                                {}).get("host_serve_per_req")

            def ratio(x, y):
                return fmt(h(x) / h(y), 2) if h(x) and h(y) else "-"
            lines.append(f"| {b} | {rw} qd{qd} | "
                         f"{ratio('vhost-poll', 'native-poll')} | "
                         f"{ratio('vhost-poll', 'native')} | "
                         f"{ratio('vhost-poll', 'vu-poll')} | "
                         f"{ratio('vhost-notify', 'vu-notify')} | "
                         f"{ratio('vhost-notify', 'native')} |")
    lines.append("")
    lines.append("### Projection to a real host")
    lines.append("")
    lines.append(f"At {IPS / 1e9:.1f} G instructions per second per core, "
                 f"{EXIT_CYCLES} cycles per exit (kick) and {IRQ_CYCLES} "
                 f"per injected interrupt at {HZ / 1e9:.1f} GHz: host core "
                 "IOPS = IPS / host insns per request; guest vCPU IOPS = 1 / "
                 "(guest insns / IPS + (kicks x exit + signals x "
                 "interrupt) / Hz); native: one core runs both, IPS / (host "
                 "+ guest insns).")
    for b, jobs in by_backend(summ):
        lines.append("")
        lines.append(f"#### {b}")
        lines.append("")
        projection_table(lines, jobs)
    return "\n".join(lines) + "\n"


def compare(a, b):
    """Host instructions per request of two runs, job by job."""
    runs = []
    for path in (a, b):
        with open(path) as f:
            runs.append(summary(json.load(f)["runs"]))
    lines = [f"host insns/req: {a} against {b}", "",
             "| backend | workload | path | run A | run B | B / A - 1 |",
             "|---|---|---|---:|---:|---:|"]
    for key in sorted(set(runs[0]) | set(runs[1]), key=job_order):
        x = runs[0].get(key, {}).get("host_serve_per_req")
        y = runs[1].get(key, {}).get("host_serve_per_req")
        d = None if not x or y is None else 100.0 * (y / x - 1)
        lines.append(f"| {key[0]} | {key[1]} qd{key[2]} | {key[3]} | "
                     f"{fmt(x)} | {fmt(y)} | "
                     f"{fmt(d, 2)}{'' if d is None else ' %'} |")
    print("\n".join(lines))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--compare":
        compare(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    raw, insns, out = sys.argv[1:]
    with open(os.path.join(raw, "setup.json")) as f:
        setup = json.load(f)
    runs = load_lines(os.path.join(raw, "runs.jsonl"))
    if not runs:
        sys.exit(f"bench-host: no runs in {raw}/runs.jsonl")
    wins = windows(runs, load_lines(insns))
    rows = per_run(runs, wins, setup)
    summ = summary(rows)
    text = tables(summ, setup, wins is not None)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench-host.json"), "w") as f:
        json.dump({"setup": setup, "runs": rows,
                   "constants": {"ips": IPS, "hz": HZ,
                                 "exit_cycles": EXIT_CYCLES,
                                 "irq_cycles": IRQ_CYCLES}}, f, indent=1)
    with open(os.path.join(out, "bench-host.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
