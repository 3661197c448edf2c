"""Benchmark a transfer through the transcoder: from the command to the CN's first converted packet
at the device.

Run: .venv/bin/python tests/bench/bench_transfer_transcoder.py [--rounds 20] [--grace 0.5]

The real `sipmob phone`, `sipmob-slpda` and `sipmob-transcoder` processes, baresip as the CN (Opus
and PCMA; the call runs on PCMA) and as a desk phone that speaks PCMU only, all on loopback. Each
round sends ``transfer`` over the control socket (no Python start-up in the figure), which finds the
transcoder in the DA, invokes it, INVITEs the desk phone, re-INVITEs the CN and tells the transcoder
where both are; then ``retrieve``, which releases it. tshark captures what leaves the transcoder's
RTP ports: the first PCMU packet (payload type 0, only ever sent to the desk phone, and only made
from a packet the CN sent) after the command is "the CN's first RTP converted at the device".

Printed per figure: median, p95 and max over the rounds of (a) command -> first converted packet
at the device, (b) command -> reply (it includes the OPTIONS capability check, the SLP lookups and
the grace period), (c) retrieve's command -> reply.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "daemons"), str(ROOT / "tests/integration/slpda"),
                str(ROOT / "tests/integration/mn")]

from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402
from tests.integration.transcoder.transcoder_process import Transcoder  # noqa: E402
from tests.peers.baresip import Baresip  # noqa: E402
from tests.peers.tshark import LiveCapture, tshark  # noqa: E402

from sipmob.mn.control import request  # noqa: E402


class OpusBaresip(Baresip):
    def _write_config(self, *args: object) -> None:
        super()._write_config(*args)  # type: ignore[arg-type]
        config = self.dir / "config"
        config.write_text(config.read_text() + "module opus.so\n")


def figures(name: str, values: list[float]) -> None:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    print(f"{name:<50} median {statistics.median(ms):7.1f} ms  p95 {p95:7.1f} ms  max {ms[-1]:7.1f} ms  "
          f"(n={len(ms)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--grace", type=float, default=0.5)
    parser.add_argument("--keep", action="store_true", help="on a round without converted packets, copy "
                        "the logs and the capture to a directory of their own")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "da").mkdir()
        (d / "tx").mkdir()
        stops: list[object] = []
        try:
            da = Slpda(d / "da").start()
            stops.append(da.stop)
            transcoder = Transcoder(d / "tx", slp=f'das = ["{HOST}:{da.port}"]\nupdate_interval = 0.5')
            transcoder.start()
            stops.append(transcoder.stop)
            cn = OpusBaresip(d, user="cn", codecs="opus/48000/2,PCMA")
            stops.append(cn.stop)
            desk = Baresip(d, user="desk", codecs="PCMU")
            stops.append(desk.stop)
            with da.client() as slp:
                slp.register(desk.uri, "(name=Desk phone),(media=audio-sendrecv),(audio-codecs=PCMU)")
                until(lambda: getattr(slp.udp(slp.srv_rqst("service:sip-transcoder")), "urls", ()), 10)
            phone = Phone(d, f"{HOST}:{da.port}", grace=args.grace, auto_answer=True)
            stops.append(phone.stop)
            capture = LiveCapture(d / "rtp.pcap",
                                  f"udp and src portrange {transcoder.rtp_low}-{transcoder.rtp_high}")
            stops.append(capture.stop)
            request(phone.control, "call", {"uri": cn.uri}, timeout=10)
            until(lambda: phone.received() > 20, 10)
            starts: list[float] = []
            replies: list[float] = []
            retrieves: list[float] = []
            for _ in range(args.rounds):
                t0 = time.time()
                said = request(phone.control, "transfer", {"call": "1", "to": ["desk-phone"], "media": "all"},
                               timeout=30)
                replies.append(time.time() - t0)
                starts.append(t0)
                assert "via transcoder" in str(said), said
                time.sleep(0.5)
                t1 = time.time()
                request(phone.control, "retrieve", {"call": "1", "media": "all"}, timeout=30)
                retrieves.append(time.time() - t1)
                time.sleep(0.5)
            path = capture.stop()
            stops.remove(capture.stop)
            # Decoded as RTP by port, not by heuristics: a port another dissector claims (3000 is
            # DIS) would otherwise hide a round's packets.
            ports = set(tshark("-r", str(path), "-T", "fields", "-e", "udp.dstport").split())
            decode = [arg for port in sorted(ports) for arg in ("-d", f"udp.port=={port},rtp")]
            rows = tshark("-r", str(path), *decode, "-Y", "rtp.p_type == 0", "-T", "fields",
                          "-e", "frame.time_epoch").split()
            times = sorted(float(t) for t in rows)
            firsts: list[float] = []
            missing: list[int] = []
            for i, t0 in enumerate(starts):
                end = starts[i + 1] if i + 1 < len(starts) else float("inf")
                first = next((t for t in times if t0 < t < end), None)
                if first is not None:
                    firsts.append(first - t0)
                else:
                    missing.append(i + 1)
            print(f"transfer through sipmob-transcoder (PCMA <-> PCMU), {args.rounds} rounds, "
                  f"grace {args.grace:g} s, loopback")
            if len(firsts) < len(starts):
                print(f"  rounds {missing} had no converted packet at the device (see the transcoder's log: "
                      f"{transcoder.log_path})")
                if args.keep:
                    import shutil

                    kept = Path(tempfile.mkdtemp(prefix="bench-transcoder-"))
                    shutil.copytree(d, kept, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))
                    print(f"  logs and capture copied to {kept}")
            if firsts:
                figures("command -> CN's first converted RTP at device", firsts)
            figures("transfer: command -> reply", replies)
            figures("retrieve: command -> reply (transcoder released)", retrieves)
        finally:
            for stop in reversed(stops):
                stop()  # type: ignore[operator]


if __name__ == "__main__":
    main()
