"""OPTIONS transactions per second through SIPTransport and the transaction layer, sipp as the load.

Run: ``.venv/bin/python tests/bench/bench_sip_options.py [--calls N] [--rate R] [--limit L]``.
A UAS process (this file with ``--serve``) answers every OPTIONS with 200 over loopback UDP; sipp
sends N OPTIONS at up to R per second with at most L in flight. The figure is sipp's own count of
completed transactions (from its ``-trace_stat`` CSV) divided by its wall-clock run time, plus the UAS's
peak memory, live transaction count (every server transaction lingers 64*T1 in Completed) and
CPU time per transaction, the figure that other processes on the machine disturb least.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"

SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="options">
  <send retrans="500"><![CDATA[
      OPTIONS sip:uas@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      To: <sip:uas@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      Max-Forwards: 70
      CSeq: 1 OPTIONS
      Content-Length: 0

  ]]></send>
  <recv response="200"/>
</scenario>
"""


def serve(port: int) -> None:
    from twisted.internet import reactor

    from sipmob.service.sipnet import SIPTransport
    from sipmob.sip.message import make_response
    from sipmob.sip.transaction import RequestReceived, TransactionLayer
    from sipmob.sip.transport import Address

    listen = [("127.0.0.1", port, "udp")]
    layer = TransactionLayer([Address(*a) for a in listen])
    peak = {"live": 0, "requests": 0}

    def on_event(event: object) -> None:
        if isinstance(event, RequestReceived):
            sip.send_response(make_response(event.request, 200, to_tag="bench"))
            peak["live"] = max(peak["live"], len(layer))
            peak["requests"] += 1

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def report() -> None:
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        used = cpu() - idle_cpu
        per = used / max(1, peak["requests"]) * 1e6
        print(f"uas: peak live transactions {peak['live']}, peak RSS {rss_mb:.0f} MiB "
              f"({start_rss:.0f} MiB when ready), "
              f"{used:.2f} s CPU for {peak['requests']} requests = {per:.0f} us CPU per transaction "
              f"(at most {1e6 / per:.0f}/s on one free core)", flush=True)

    sip = SIPTransport(reactor, layer, listen, on_event)
    sip.start()
    idle_cpu = cpu()
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reactor.addSystemEventTrigger("before", "shutdown", report)  # type: ignore[attr-defined]
    print("ready", flush=True)
    reactor.run()  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=30000)
    parser.add_argument("--rate", type=int, default=8000)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--serve", type=int, metavar="PORT")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp is not installed")
        return 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="bench-sip-"))
    uas_log = tmp / "uas.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "daemons"))
    uas = subprocess.Popen([str(PYTHON), __file__, "--serve", str(port)], stdout=uas_log.open("w"),
                           stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 10
        while "ready" not in uas_log.read_text():
            if uas.poll() is not None or time.monotonic() > deadline:
                print(uas_log.read_text())
                return 1
            time.sleep(0.05)
        (tmp / "options.xml").write_text(SCENARIO)
        stats = tmp / "stats.csv"
        bound = max(30, args.calls // 1000)
        started = time.monotonic()
        proc = subprocess.Popen(
            [sipp, f"127.0.0.1:{port}", "-sf", "options.xml", "-i", "127.0.0.1", "-p", "0",
             "-r", str(args.rate), "-l", str(args.limit), "-m", str(args.calls),
             "-timeout", f"{bound}s", "-nostdin", "-trace_stat", "-stf", str(stats), "-fd", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
        try:
            proc.wait(bound + 10)
            wall = time.monotonic() - started
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
            wall = time.monotonic() - started
        with stats.open() as f:
            rows = list(csv.DictReader(f, delimiter=";"))
        last = rows[-1]
        ok = int(last["SuccessfulCall(C)"])
        failed = int(last["FailedCall(C)"])
        retransmissions = int(last["Retransmissions(C)"])
        # sipp exits as soon as its -m calls are done, so its wall time is the run's length
        print(f"OPTIONS over loopback UDP: {ok} transactions ok, {failed} failed, {retransmissions} "
              f"retransmitted by sipp, in {wall:.2f} s = {ok / wall:.0f} transactions/s "
              f"(offered {args.rate}/s, at most {args.limit} in flight)")
    finally:
        if uas.poll() is None:
            os.kill(uas.pid, signal.SIGTERM)
            try:
                uas.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(uas.pid, signal.SIGKILL)
                uas.wait(5)
        print(uas_log.read_text().replace("ready\n", ""), end="")
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
