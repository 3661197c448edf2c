"""A basic device as a member of a virtual device, for the MDSM tests: one medium, one RTP port
that the test holds (an `RtpProbe`), answering INVITEs with or without an offer.

An INVITE without SDP (Fig. 6, messages 3-4) gets our offer: ``m=MEDIA RTP_PORT`` in DIRECTION,
with an attribute nobody knows (``a=x-member:USER``) that must reach the CN unchanged; an INVITE
with an offer (MNC mode) and every re-INVITE get an answer. Run as a program:
``member.py SIP_PORT USER MEDIA RTP_PORT DIRECTION [ring]``; prints one line per event ("ready",
"established", "reinvite", "terminated REASON", "ack SDP-ON-ONE-LINE") and runs until SIGTERM.
With ``ring`` it never answers: 180 Ringing, then "ringing", and "cancelled" on the CANCEL.
SIGUSR1 hangs up its calls (a device switched off by hand).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "daemons"))

from twisted.internet import reactor

from sipmob.sdp import (
    Codec,
    LocalCapabilities,
    MediaCapability,
    Origin,
    answer,
    parse,
)
from sipmob.service.sipua import Call, IncomingCall, UserAgent


def say(*words: object) -> None:
    print(*words, flush=True)


def main() -> None:
    sip_port, user, media, rtp_port, direction = (int(sys.argv[1]), sys.argv[2], sys.argv[3],
                                                  int(sys.argv[4]), sys.argv[5])
    ring_only = sys.argv[6:7] == ["ring"]
    codec = Codec("PCMU", 8000) if media == "audio" else Codec("VP8", 90000)
    caps = LocalCapabilities((MediaCapability(media, (codec,)),))
    fmt = "0" if media == "audio" else "96"
    rtpmap = "" if media == "audio" else "a=rtpmap:96 VP8/90000\r\n"
    offer = (f"v=0\r\no={user} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             f"m={media} {rtp_port} RTP/AVP {fmt}\r\n{rtpmap}a={direction}\r\na=x-member:{user}\r\n").encode()
    origin = Origin(user, 1, 2, "IN", "IP4", "127.0.0.1")
    ua = UserAgent(reactor, listen=[("127.0.0.1", sip_port, "udp")], user=user)

    def reinvite(call: Call, request: object) -> bytes:
        say("reinvite")
        body = getattr(request, "body", b"")
        if not body:
            return offer
        return answer(parse(body), caps, origin=origin, connection_address="127.0.0.1",
                      ports={media: rtp_port}).to_bytes()

    calls: list[Call] = []

    def hang_up() -> None:
        for call in calls:
            call.bye()

    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(hang_up))  # type: ignore[attr-defined]

    def established(call: Call) -> None:
        calls.append(call)
        say("established")
        say("ack", (call.remote_sdp or b"").decode().replace("\r\n", "|"))
        call.on_reinvite(reinvite)
        call.on_terminated(lambda _call, reason: say("terminated", reason))

    def incoming(call: IncomingCall) -> None:
        if ring_only:
            call.cancelled.addCallback(lambda _: say("cancelled"))
            call.ringing()
            say("ringing")
            return
        if call.offer:
            body = answer(parse(call.offer), caps, origin=origin, connection_address="127.0.0.1",
                          ports={media: rtp_port}).to_bytes()
        else:
            body = offer
        call.accept(body).addCallbacks(established, lambda f: say("failed", f.getErrorMessage()))

    ua.on_incoming_call(incoming)
    ua.start().addCallback(lambda _: say("ready"))
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
