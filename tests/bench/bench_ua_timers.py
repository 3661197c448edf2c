"""How many reactor timers a `UserAgent` keeps armed: idle, with an INVITE in progress and with a call up.

Run: ``.venv/bin/python tests/bench/bench_ua_timers.py``. Two UAs on loopback call each other; the
figure is the reactor's active delayed calls (``reactor.getDelayedCalls()``) divided by the number of
UAs. One sans-I/O machine per UA, driven by one `TimerDriver`, means at most one each.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "daemons"))

from twisted.internet import defer, reactor, task

from sipmob.service.sipua import IncomingCall, UserAgent

SDP = (b"v=0\r\no=%s 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio %d RTP/AVP 0\r\n")


def armed() -> int:
    return len([c for c in reactor.getDelayedCalls() if c.active()])  # type: ignore[attr-defined]


@defer.inlineCallbacks
def main() -> Any:
    base = armed()
    a = UserAgent(reactor, listen=[("127.0.0.1", 0, "udp")], user="a")
    b = UserAgent(reactor, listen=[("127.0.0.1", 0, "udp")], user="b")
    yield a.start()
    yield b.start()
    idle = armed() - base
    incoming: list[IncomingCall] = []
    b.on_incoming_call(incoming.append)
    d = a.invite(f"sip:b@127.0.0.1:{b.addresses[0].port}", SDP % (b"a", 4000))
    yield task.deferLater(reactor, 0.2, lambda: None)
    ringing = armed() - base
    incoming[0].accept(SDP % (b"b", 5000))
    call = yield d
    up = armed() - base
    print(f"reactor timers armed per UA: idle {idle / 2:g}, INVITE in progress {ringing / 2:g}, "
          f"call up {up / 2:g}")
    yield call.bye()
    yield a.stop()
    yield b.stop()
    reactor.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    reactor.callWhenRunning(main)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
