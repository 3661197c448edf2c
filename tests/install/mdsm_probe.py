"""A call held through the installed sipmob-mdsm across its kill -9, from inside the container.

Run by the container's own /usr/bin/python3 against the installed packages, in the background
(``systemd-run``), since it must outlive the daemon's restart:

    python3 mdsm_probe.py --dir /run/mdsm-probe [--mdsm 5064] [--system held] [--ports 5091 5092 5093]

In one process: a basic device (``sip:speaker@127.0.0.1:5092``, answering an offer-less INVITE
with an audio offer), a CN (``sip:cn@127.0.0.1:5091``) and a referrer (``sip:probe@127.0.0.1``)
that REFERs the virtual device ``sip:SYSTEM@127.0.0.1:MDSM`` to the CN (Fig. 6 without Replaces).
Once the MDSM holds the call it writes ``held`` into DIR/state; when DIR/go appears (the test
creates it after systemd has restarted the killed daemon) the CN sends a re-INVITE and then BYE
in its dialog with the MDSM, and the probe writes DIR/result: one JSON object with the status of
the re-INVITE and whether the speaker's leg was then ended by the MDSM's BYE. Gives up after
`--timeout` seconds (writes what it has).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import LoopingCall

from sipmob.sdp import Codec, LocalCapabilities, MediaCapability, Origin, answer, parse
from sipmob.service.sipua import Call, IncomingCall, UserAgent

HOST = "127.0.0.1"
OFFER = (b"v=0\r\no=speaker 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
         b"m=audio 40000 RTP/AVP 0\r\na=sendrecv\r\n")
CAPS = LocalCapabilities((MediaCapability("audio", (Codec("PCMU", 8000),)),))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--mdsm", type=int, default=5064)
    parser.add_argument("--system", default="held")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--ports", type=int, nargs=3, default=[5091, 5092, 5093],
                        metavar=("CN", "SPEAKER", "PROBE"),
                        help="SIP ports of the CN, the speaker and the referrer")
    args = parser.parse_args()
    cn_port, speaker_port, probe_port = args.ports
    out: Path = args.dir
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"held": False, "reinvite": None, "member_bye": False}
    calls: dict[str, Call] = {}

    def state(text: str) -> None:
        (out / "state").write_text(text)

    def finish() -> None:
        (out / "result").write_text(json.dumps(result))
        if reactor.running:  # type: ignore[attr-defined]
            reactor.stop()  # type: ignore[attr-defined]

    cn = UserAgent(reactor, listen=[(HOST, cn_port, "udp")], user="cn")
    speaker = UserAgent(reactor, listen=[(HOST, speaker_port, "udp")], user="speaker")
    probe = UserAgent(reactor, listen=[(HOST, probe_port, "udp")], user="probe")

    def cn_incoming(incoming: IncomingCall) -> None:
        body = answer(parse(incoming.offer or b""), CAPS, origin=Origin("cn", 1, 1, "IN", "IP4", HOST),
                      connection_address=HOST, ports={"audio": 41000}).to_bytes()
        incoming.accept(body).addCallback(lambda call: calls.__setitem__("cn", call))

    def speaker_incoming(incoming: IncomingCall) -> None:
        def established(call: Call) -> None:
            calls["speaker"] = call
            call.on_terminated(lambda _c, reason: result.__setitem__("member_bye", reason == "bye"))

        incoming.accept(OFFER).addCallback(established)

    cn.on_incoming_call(cn_incoming)
    speaker.on_incoming_call(speaker_incoming)

    def watch() -> None:
        if not result["held"] and "cn" in calls and "speaker" in calls:
            result["held"] = True
            state("held")
        if result["held"] and result["reinvite"] is None and (out / "go").exists():
            result["reinvite"] = 0  # asked
            call = calls["cn"]
            d = call.reinvite(call.local_sdp)

            def answered(response: Any) -> None:
                result["reinvite"] = response.status
                call.bye()

            def failed(failure: Any) -> None:
                result["reinvite"] = getattr(failure.value, "status", -1)
                finish()

            d.addCallbacks(answered, failed)
        if result["member_bye"]:
            finish()

    def started(_: Any) -> None:
        state("ready")
        target = f"sip:{args.system}@{HOST}:{args.mdsm}"
        probe.refer(target, f"sip:cn@{HOST}:{cn_port}", referred_by=f"<sip:probe@{HOST}>").addErrback(
            lambda f: state(f"refer failed: {f.getErrorMessage()}"))
        LoopingCall(watch).start(0.1)

    defer.DeferredList([cn.start(), speaker.start(), probe.start()]).addCallback(started)
    reactor.callLater(args.timeout, finish)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
