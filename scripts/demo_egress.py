"""The second demo: a call over WAN 1, the link pulled, the call carrying on over WAN 2.

Builds a home with two WAN links in network namespaces (tests/integration/net/twowan.py: `home`
with `sipmob phone`, two ISP routers, `internet` with baresip as the other party), places two calls
(the ``least_load`` policy puts one on each link), shows `sipmob egress`, takes WAN 1's link down
and prints how long it took until the other party received the first call's audio from WAN 2's
address, and that the call already on WAN 2 was left alone; then shows the list and the calls
again. Run as root:

    scripts/demo egress
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "daemons")]

from tests.integration.net.twowan import (  # noqa: E402
    ENV,
    HOME1,
    HOME2,
    HomePhone,
    egress_toml,
    phone_stage,
    until,
)


def sipmob(phone: HomePhone, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "sipmob.mn.cli", "--config", str(phone.config), *args],
                          env=ENV, capture_output=True, text=True, timeout=30, check=False)
    return (done.stdout + done.stderr).rstrip()


def show(title: str, text: str) -> None:
    print(f"\n== {title}")
    print("\n".join(f"   {line}" for line in text.splitlines()))


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="sipmob-egress-demo-"))
    with phone_stage(workdir, egress_toml(policy="least_load")) as stage:
        net, cn, phone, capture = stage["net"], stage["cn"], stage["phone"], stage["capture"]
        show("the home: wan1 (priority 1) and wan2 (priority 2), probed with SIP OPTIONS every second; "
             "new calls go to the link with fewer calls", sipmob(phone, "egress"))
        for _ in range(2):
            show(f"sipmob call {cn.uri}", sipmob(phone, "call", cn.uri))
        until(lambda: phone.received() > 25, 5)
        show("two calls, one over each link", sipmob(phone, "egress"))
        ports = {p for _, s, p, _ in capture.packets if s == HOME1 and p != 5060}
        start = time.monotonic()
        net.link_down("h1")
        moved = until(lambda: [t for t, s, p, _ in capture.packets
                               if s == HOME2 and p in ports and t > start], 5, 0.002)
        print("\n== ip link set h1 down (wan1's cable pulled)")
        if not moved:
            print("   the other party never heard call 1 over wan2: see", workdir / "phone.log")
            return 1
        print(f"   the other party receives call 1's audio from wan2's address {HOME2} "
              f"{moved[0] - start:.3f} s after the link went down")
        before = phone.received()
        time.sleep(2)
        print(f"   and we keep receiving theirs: {phone.received() - before} packets in the next 2 s")
        reinvites = capture.sip_from(HOME1, start, "INVITE") + capture.sip_from(HOME2, start, "INVITE")
        print(f"   re-INVITEs sent: {len(reinvites)} (call 2, on wan2 already, was left alone)")
        show("sipmob egress", sipmob(phone, "egress"))
        show("the calls, both over wan2", sipmob(phone, "calls"))
        print("\nmwan3 with its defaults (a probe every 5 s, down after 5 failures) would notice after "
              "about 25 s, and route only new flows over wan2: call 1 would have died.")
        return 0


if __name__ == "__main__":
    sys.exit(main())
