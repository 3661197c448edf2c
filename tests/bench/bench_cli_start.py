"""How long the ``sipmob`` command takes from exec to exit, for ``sipmob calls`` against a phone.

Run: ``.venv/bin/python tests/bench/bench_cli_start.py [--runs N] [--daemons PATH]``.
A stand-in phone (a thread here) answers each ``calls`` request on a real unix socket at once, so the
figure is the command's own cost: interpreter start, imports, one exchange. ``--daemons`` points at
another tree's ``daemons`` directory to compare (for example an older checkout). Debian's
/usr/bin/python3 runs the command, as on the gateway. Prints median and 90th percentile wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _serve(server: socket.socket, stop: threading.Event) -> None:
    server.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        with conn:
            line = conn.makefile("rb").readline()
            if line:
                rid = json.loads(line)["id"]
                conn.sendall(json.dumps({"id": rid, "ok": True, "result": []}).encode() + b"\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--daemons", default=str(ROOT / "daemons"))
    ap.add_argument("--python", default="/usr/bin/python3")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "control.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(8)
        stop = threading.Event()
        thread = threading.Thread(target=_serve, args=(server, stop), daemon=True)
        thread.start()
        env = {"PYTHONPATH": args.daemons, "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
        cmd = [args.python, "-m", "sipmob.mn.cli", "--config", os.path.join(tmp, "absent.toml"),
               "--control", path, "calls"]
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=30)
            times.append((time.perf_counter() - t0) * 1000)
        stop.set()
        thread.join(2)
        server.close()
    times.sort()
    print(f"sipmob calls ({args.daemons}): runs={len(times)} median={statistics.median(times):.1f} ms "
          f"p90={times[int(0.9 * (len(times) - 1))]:.1f} ms min={times[0]:.1f} ms")


if __name__ == "__main__":
    main()
