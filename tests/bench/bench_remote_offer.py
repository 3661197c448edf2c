"""Benchmark the CN moving its media: how soon our RTP reaches its new port, and whether any still
goes to the old one; and a long call with RFC 4028 session timers from PJSIP.

Run: .venv/bin/python tests/bench/bench_remote_offer.py [--rounds 10] [--on phone|device|both]
     [--session-expires 90 --duration 100] [--pcap FILE] [--max-seconds 240]

The real `sipmob phone` calls PJSIP (pjsua2, the CN); with ``--on device`` the call is first
transferred (MNC mode, 3PCC) to a second `sipmob phone` registered in the real `sipmob-slpda` as
"Desk phone". Each round PJSIP re-INVITEs with its media transport recreated (a new RTP port, as
after a network change). tshark captures the CN's SIP and our RTP on `lo` with kernel timestamps:

- latency: the CN's re-INVITE on the wire → our first RTP packet to the new port (on a device
  that includes the phone's re-INVITE of the device and the device's answer);
- stale: RTP packets from us to the old port after the 200 that answered the re-INVITE left.
Targets: p95 < 20 ms on the phone, < 100 ms on a device; stale == 0.

With ``--session-expires S`` PJSIP asks for session timers (Session-Expires: S; the phone agrees in
its 200 and names PJSIP, which supports timers, the refresher) and the call is held for ``--duration``
seconds (default 100: two refreshes at S = 90); printed: the refreshes PJSIP sent, the phone's
answer to each, and whether the call was still up at the end.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "daemons"), str(ROOT / "tests/integration/slpda"),
                str(ROOT / "tests/integration/mn"), str(ROOT / "tests/bench")]

from bench_mn_lapse import percentile, verdict  # noqa: E402
from phone_process import Phone  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402
from tests.peers.pjsua import Pjsua  # noqa: E402
from tests.peers.ports import free_udp_port  # noqa: E402
from tests.peers.tshark import LiveCapture, tshark  # noqa: E402

from sipmob.mn.control import request  # noqa: E402

TARGET = {"phone": 0.020, "device": 0.100}


def rtp_source(cn: Pjsua, ident: int) -> int:
    """Our RTP port: where PJSIP sends (phone and device keep their port across re-INVITEs)."""
    return int(str(cn.stream(ident)["remote_rtp"]).rsplit(":", 1)[1])


Move = tuple[float, float | None, float | None, int]


def moves(capture: Path, cn_sip: int, source: int, port: int) -> list[Move]:
    """Per re-INVITE of the CN to a port other than ``port`` (where it was before): its time, its
    200's time, our first RTP packet to the new port, our packets to the old one after the 200."""
    out = tshark("-r", str(capture), "-d", f"udp.port=={cn_sip},sip", "-T", "fields",
                 "-e", "frame.time_epoch", "-e", "udp.srcport", "-e", "udp.dstport", "-e", "sip.CSeq",
                 "-e", "sip.Status-Code", "-e", "sdp.media.port", timeout=120)
    rows = [line.split("\t") for line in out.splitlines()]
    sip = [(float(r[0]), int(r[1]), r[3], r[4], r[5]) for r in rows if len(r) >= 6 and r[3]]
    rtp = [(float(r[0]), int(r[2])) for r in rows if len(r) >= 3 and r[1] == str(source)]
    result = []
    for t, src, cseq, status, media in sip:
        if src != cn_sip or status or not cseq.endswith("INVITE") or not media:
            continue
        new = int(media.split(",")[0])
        if new == port:
            continue
        old, port = port, new
        answered = next((t2 for t2, s2, c2, st2, _ in sip if c2 == cseq and st2 == "200" and t2 >= t), None)
        first = next((t3 for t3, dst in rtp if dst == new and t3 >= t), None)
        stale = sum(1 for t3, dst in rtp if dst == old and answered is not None and t3 > answered)
        result.append((t, answered, first, stale))
    return result


def report(where: str, found: Sequence[Move]) -> None:
    ms = [(first - t) * 1000 for t, _, first, _ in found if first is not None]
    after_200 = [(first - ok) * 1000 for _, ok, first, _ in found if first is not None and ok is not None]
    never = len(found) - len(ms)
    stale = sum(s for *_, s in found)
    target = TARGET[where] * 1000
    if ms:
        p95 = percentile(ms, 0.95)
        print(f"on the {where}: re-INVITE -> our RTP at the new port n={len(ms)} "
              f"p50 {percentile(ms, 0.5):6.1f} ms  p95 {p95:6.1f} ms  max {max(ms):6.1f} ms  "
              f"[{verdict(never == 0 and p95 < target)} p95 < {target:g} ms]"
              + (f"  ({never} never arrived)" if never else ""))
        if after_200:
            print(f"on the {where}: (relative to our 200: p50 {percentile(after_200, 0.5):6.1f} ms, "
                  f"p95 {percentile(after_200, 0.95):6.1f} ms; negative: RTP went before the 200)")
    else:
        print(f"on the {where}: our RTP never reached the new port [MISS]")
    print(f"on the {where}: RTP to the old port after the 200: {stale} packets [{verdict(stale == 0)} == 0]")


def run(where: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for sub in ("da", "mn", "desk", "cn"):
            (d / sub).mkdir()
        da = Slpda(d / "da").start()
        cn = desk = phone = capture = None
        try:
            address = f"{HOST}:{da.port}"
            cn = Pjsua(free_udp_port(), "cn", workdir=d / "cn", log_level=3,
                       session_expires=args.session_expires)
            phone = Phone(d / "mn", address)
            request(phone.control, "call", {"uri": cn.uri}, timeout=10)
            ident = int(cn.calls()[0]["id"])
            if where == "device":
                desk = Phone(d / "desk", address, auto_answer=True, user="desk")
                with da.client() as slp:
                    slp.register(desk.uri, "(name=Desk phone),(media=audio-sendrecv),"
                                           "(audio-codecs=PCMU,PCMA)")
                request(phone.control, "transfer", {"call": "1", "to": ["desk-phone"], "mode": "mnc"},
                        timeout=20)
                time.sleep(1.0)
            source = rtp_source(cn, ident)
            first_port = int(str(cn.stream(ident)["local_rtp"]).rsplit(":", 1)[1])
            capture = LiveCapture(d / "ro.pcapng", f"udp port {cn.port} or udp src port {source}")
            started = time.monotonic()
            deadline = started + args.max_seconds
            for _ in range(args.rounds):
                if time.monotonic() > deadline:
                    break
                before = len(cn.events)
                cn.reinvite_new_media(ident)
                cn.wait_event(lambda e: e["event"] == "media_state", timeout=5, start=before)
                time.sleep(0.5)
            if args.session_expires:
                left = args.duration - (time.monotonic() - started)
                print(f"holding the call {max(left, 0):.0f} s more (Session-Expires: {args.session_expires})")
                time.sleep(max(left, 0))
            up = [c["state"] for c in cn.calls()]
            ours = request(phone.control, "calls", timeout=5)
            capture.stop()
            path, capture = capture.path, None
        finally:
            if capture is not None:
                capture.stop()
            for proc in (phone, desk, cn):
                if proc is not None:
                    proc.stop()
            da.stop()
        if args.pcap is not None:
            shutil.copyfile(path, args.pcap.with_suffix(f".{where}.pcapng"))
        found = moves(path, cn.port, source, first_port)
        print(f"{len(found)} moves of PJSIP's media (re-INVITE with a recreated transport), "
              f"call on the {where}")
        report(where, found)
        if args.session_expires:
            requests, ok = refreshes(path, cn.port)
            kinds = ", ".join(f"{sum(1 for r in requests if r.endswith(m))} {m}"
                              for m in ("INVITE", "UPDATE"))
            good = up == ["CONFIRMED"] and len(ours) == 1 and ok == len(requests)
            print(f"session timers: {len(requests)} requests of PJSIP's with Session-Expires in "
                  f"{args.duration:.0f} s ({kinds}; {len(found)} of them the moves above), {ok} answered "
                  f"200; PJSIP's call {up}, ours {[c['state'] for c in ours]} "
                  f"[{verdict(good)} still up, every refresh answered]")


def refreshes(path: Path, cn_sip: int) -> tuple[list[str], int]:
    """The CSeqs of PJSIP's requests stating Session-Expires, and how many we answered 200."""
    decode = ("-d", f"udp.port=={cn_sip},sip")
    asked = tshark("-r", str(path), *decode, "-Y", f"sip.Session-Expires && udp.srcport == {cn_sip} "
                   "&& sip.Request-Line", "-T", "fields", "-e", "sip.CSeq", timeout=120).splitlines()
    requests = sorted({line.strip() for line in asked if line.strip()})
    answers = tshark("-r", str(path), *decode, "-Y", f"sip.Status-Code >= 200 && udp.dstport == {cn_sip}",
                     "-T", "fields", "-e", "sip.CSeq", "-e", "sip.Status-Code", timeout=120).splitlines()
    status = dict(line.split("\t", 1) for line in answers if "\t" in line)
    return requests, sum(1 for r in requests if status.get(r) == "200")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--on", choices=("phone", "device", "both"), default="both")
    parser.add_argument("--session-expires", type=int, default=0, help="PJSIP asks for session timers")
    parser.add_argument("--duration", type=float, default=100.0,
                        help="with --session-expires: how long the call is held, in seconds")
    parser.add_argument("--pcap", type=Path, help="keep the captures there (FILE.phone.pcapng...)")
    parser.add_argument("--max-seconds", type=float, default=240.0,
                        help="stop starting rounds after this long")
    args = parser.parse_args()
    for where in ("phone", "device") if args.on == "both" else (args.on,):
        run(where, args)


if __name__ == "__main__":
    main()
