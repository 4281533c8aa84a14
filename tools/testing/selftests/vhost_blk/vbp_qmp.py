#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
#
# A QMP client for the tests: one command to a QEMU's QMP socket.
#
#   vbp_qmp.py SOCKET COMMAND [ARGUMENTS-JSON]
#       runs COMMAND, prints its "return" as JSON on one line; an error
#       reply goes to standard error as "CLASS: desc", exit 1
#   vbp_qmp.py SOCKET --wait-migration SECONDS
#       polls query-migrate until the migration ends; prints its status,
#       then its figures ("downtime 190 ms, total 4100 ms, 210 MiB sent"),
#       then the last reply as JSON, a line each; exit 0 when it completed,
#       1 when it failed or was cancelled, 2 on a timeout
#
# Exit 3: no QEMU on SOCKET.

import json
import socket
import sys
import time


class Qmp:
    def __init__(self, path, timeout=60):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.read()                     # the greeting
        self.execute("qmp_capabilities")

    def read(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("QEMU closed the monitor")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, cmd, args=None):
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self.read()
            if "event" in reply:
                continue
            return reply


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: vbp_qmp.py SOCKET COMMAND [ARGUMENTS-JSON] | "
                 "SOCKET --wait-migration SECONDS")
    try:
        qmp = Qmp(sys.argv[1])
    except (OSError, ConnectionError, ValueError) as e:
        print(f"vbp_qmp: no QEMU on {sys.argv[1]}: {e}", file=sys.stderr)
        return 3

    if sys.argv[2] == "--wait-migration":
        end = time.monotonic() + float(sys.argv[3])
        while True:
            reply = qmp.execute("query-migrate").get("return", {})
            status = reply.get("status")
            done = status in ("completed", "failed", "cancelled")
            if done or time.monotonic() > end:
                ram = reply.get("ram", {})
                print(status)
                print(f"downtime {reply.get('downtime', '?')} ms, "
                      f"total {reply.get('total-time', '?')} ms, "
                      f"{ram.get('transferred', 0) // 1048576} MiB sent")
                print(json.dumps(reply))
                if not done:
                    return 2
                return 0 if status == "completed" else 1
            time.sleep(0.5)

    args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    reply = qmp.execute(sys.argv[2], args)
    if "error" in reply:
        err = reply["error"]
        print(f"{err.get('class')}: {err.get('desc')}", file=sys.stderr)
        return 1
    print(json.dumps(reply.get("return")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
