"""Sockets on addresses that have gone are closed: a link readdressed again and again under a call
leaves the phone with sockets on its present address only, not one more per address it ever had.

``sipmob phone`` in the `home` namespace of `twowan.TwoWan`, one call to baresip over wan1; h1 gets
a new address N times (the new one first, then the old one goes: a DHCP renewal). After each
change the call moves; afterwards the process holds no socket on any of the intermediate addresses
(read from /proc: its descriptors and its namespace's UDP table), its socket count is what it was
after the first change, and the call still carries audio both ways. Needs root and baresip.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.net.twowan import (
    HOME1,
    egress_toml,
    phone_stage,
    until,
)
from tests.peers.baresip import BARESIP
from tests.peers.netns import available

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)"),
              pytest.mark.skipif(not available(), reason="needs network namespaces (root)")]

CHANGES = 6


def udp_sockets(pid: int) -> list[str]:
    """The local address of every UDP socket process `pid` holds (IPv4: enough for this stage)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    with open(f"/proc/{pid}/net/udp") as table:  # the table of the process's own namespace
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                host = bytes.fromhex(fields[1].split(":")[0])[::-1]
                out.append(".".join(str(b) for b in host))
    return out


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with phone_stage(tmp_path, egress_toml(), calls=1) as stage:
        phone = stage["phone"]
        assert until(lambda: phone.received() > 10, 5), phone.output()
        yield stage


def test_a_readdressed_link_keeps_no_socket_on_its_old_addresses(stage: dict[str, Any]) -> None:
    net, phone, capture = stage["net"], stage["phone"], stage["capture"]
    pid = phone.proc.pid
    current, seen, counts = HOME1, [], []
    for n in range(CHANGES):
        new = f"10.200.1.{10 + n}"
        net.readdress("h1", current, new)
        assert until(lambda new=new: [m["to"] for m in phone.command("egress")["moves"]][-1:] == [new], 10), \
            phone.output()
        seen.append(current)
        current = new
        old = [a for a in seen if a != HOME1]  # the configured listener stays, one socket however often
        assert until(lambda old=old: not set(old) & set(udp_sockets(pid))
                     and udp_sockets(pid).count(HOME1) == 1, 20), \
            (old, udp_sockets(pid), phone.output()[-3000:])
        # on the address of now: SIP, the call's RTP and RTCP, and the probe's (made at its next probe)
        assert until(lambda current=current: udp_sockets(pid).count(current) == 4, 10), \
            (current, udp_sockets(pid), phone.output()[-3000:])
        counts.append(len(udp_sockets(pid)))
    assert len(set(counts)) == 1, counts  # no socket more per change
    # the call survived every change: the CN hears us from the present address, we hear the CN
    t0 = time.monotonic()
    assert until(lambda: len(capture.rtp_from(current, t0)) > 20, 5), phone.output()[-3000:]
    before = phone.received()
    assert until(lambda: phone.received() > before + 20, 5), phone.output()[-3000:]
    assert "SIP socket on 10.200.1.10 closed" in phone.output()
