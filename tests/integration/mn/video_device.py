"""A video-only SIP device for the tests: answers every INVITE for video (VP8) with an RTP port the
test holds (an `RtpProbe`), in whatever direction the offer allows, and refuses other media.

baresip cannot play this part (it refuses an INVITE whose audio is disabled). Run as a program:
``video_device.py SIP_PORT USER RTP_PORT``; it prints "ready" once its SIP socket is bound and runs
until SIGTERM.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "daemons"))

from twisted.internet import reactor

from sipmob.sdp import (
    Codec,
    LocalCapabilities,
    MediaCapability,
    OfferAnswerState,
    Origin,
    answer,
    parse,
)
from sipmob.service.sipua import IncomingCall, UserAgent

CAPS = LocalCapabilities((MediaCapability("video", (Codec("VP8", 90000),)),))


def main() -> None:
    sip_port, user, rtp_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    ua = UserAgent(reactor, listen=[("127.0.0.1", sip_port, "udp")], user=user)

    def incoming(call: IncomingCall) -> None:
        oa = OfferAnswerState(Origin(user, 1, 1, "IN", "IP4", "127.0.0.1"))
        offer = parse(call.offer or b"")
        oa.receive_offer(offer)
        ours, _ = oa.create_answer(answer(offer, CAPS, origin=oa.origin, connection_address="127.0.0.1",
                                          ports={"video": rtp_port}))
        call.accept(ours.to_bytes())

    ua.on_incoming_call(incoming)
    ua.start().addCallback(lambda _: print("ready", flush=True))
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
