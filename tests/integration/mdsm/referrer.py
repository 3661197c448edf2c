"""A mobile node reduced to one REFER outside a dialog, for the MDSM tests: our own `UserAgent`
REFERs the virtual device to a target, answering Digest challenges with the password given, and
prints the status of the final NOTIFY (or of the REFER's failure) as one line.

Run as a program: ``referrer.py USER PASSWORD VIRTUAL-DEVICE-URI REFER-TO`` (PASSWORD "-": none).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "daemons"))

from twisted.internet import reactor

from sipmob.service.sipua import UserAgent


def main() -> None:
    user, password, target, refer_to = sys.argv[1:5]
    credentials = (user, password) if password != "-" else None
    ua = UserAgent(reactor, listen=[("127.0.0.1", 0, "udp")], user=user, credentials=credentials)

    def done(status: Any) -> None:
        print(status, flush=True)
        reactor.stop()  # type: ignore[attr-defined]

    def go(_: Any) -> None:
        d = ua.refer(target, refer_to, referred_by=f"<sip:{user}@127.0.0.1>")
        d.addCallback(lambda progress: progress.final)
        d.addCallbacks(done, lambda f: done(getattr(f.value, "status", 0)))
        d.addTimeout(20, reactor)

    ua.start().addCallback(go)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
