"""The phone's two services in one DA, signed by one key: ``service:sip-device`` ([device], its
SIP URI ``sip:mn@HOME:5060``) and ``service:sip-egress`` (its shared Egress List, under a URL of
its own, ``service:sip-egress://mn@HOME:5060``).

A DA keeps one registration per URL (RFC 2608 §9.3): were the two one URL, the later SrvReg would
replace the other's type and attributes, and the egress's deregistration of an old address would
remove the device. Both are found, each with its attributes, and when wan1 fails the egress
registration moves to the other address (the old URL deregistered, signed), and so does the
device's: the phone listens on wan1's address (no LAN side), so the home reaches it at wan2's now
(an OPTIONS to the URL the DA gives is answered), and the old device URL is deregistered; the same
on a renumbering of wan1. A phone with a LAN side is a device at its LAN address, which stays. In
the namespaces of twowan.py (root); the DA and the phone run in the home namespace on its loopback.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from registrant_keys import deregistered_as, make_keys, registered_as
from tests.integration.net.twowan import ENV, HOME1, HOME2, HomePhone, TwoWan, egress_toml, until
from tests.peers.netns import available
from tests.peers.process import terminate

from sipmob.net.egress_event import advert_url

pytestmark = pytest.mark.skipif(not available(), reason="needs network namespaces (root)")

DA = "127.0.0.1:4270"
DEVICE = f"sip:mn@{HOME1}:5060"
MOVED = f"sip:mn@{HOME2}:5060"
LAN = "192.168.50.1"  # the home LAN side of a gateway, apart from its egresses
OPTIONS = """import socket, sys
from sipmob.sip.uri import URI
to = URI.parse(sys.argv[1])
dest = (to.host, to.port or 5060)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect(dest)  # as a strict peer: an answer from any other of the phone's addresses is dropped
me, n = "%s:%d" % s.getsockname(), s.getsockname()[1]
s.send(("OPTIONS %s SIP/2.0\\r\\nVia: SIP/2.0/UDP %s;branch=z9hG4bKdev%d\\r\\nMax-Forwards: 70\\r\\n"
        "From: <sip:probe@%s>;tag=1\\r\\nTo: <%s>\\r\\nCall-ID: dev%d@home\\r\\nCSeq: 1 OPTIONS\\r\\n"
        "Content-Length: 0\\r\\n\\r\\n" % (to, me, n, me, to, n)).encode())
data, source = s.recvfrom(65535)
print(data.split(b"\\r\\n", 1)[0].decode(), "from %s:%d" % source)
"""


class DaLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def output(self) -> str:
        return self.path.read_text(errors="replace") if self.path.exists() else ""


class Home:
    def __init__(self, net: TwoWan, da: DaLog, phone: HomePhone) -> None:
        self.net, self.da, self.phone = net, da, phone

    def slptool(self, *args: str) -> str:
        done = self.net.home.run([sys.executable, "-m", "sipmob.service.slptool", "--da", DA, *args], env=ENV)
        return done.stdout if done.returncode == 0 else f"failed: {done.stderr}"

    def urls(self, service_type: str) -> set[str]:
        """The URLs a SrvRqst for `service_type` finds (none when the DA does not answer)."""
        found = self.slptool("findsrvs", service_type)
        if found.startswith("failed"):
            return set()
        return {line.rsplit(",", 1)[0] for line in found.splitlines()}

    def answers(self, url: str) -> str:
        """The status line of the answer to an OPTIONS sent to `url` from the home ("" if none)."""
        done = self.net.home.run([sys.executable, "-c", OPTIONS, url], env=ENV)
        return done.stdout.strip() if done.returncode == 0 else ""

    def why(self) -> str:
        return f"{self.da.output()}\n--- phone\n{self.phone.output()}"


@pytest.fixture
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Home]:
    """A DA that knows the phone's key and a phone with [device] and a shared Egress List, listening
    on wan1's address or (indirect parameter LAN) on a home LAN interface apart from the egresses."""
    listen = getattr(request, "param", HOME1)
    keys = make_keys(tmp_path / "keys", "mn-phone")
    net = TwoWan()
    if listen == LAN:
        for command in (["ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan1"],
                        ["ip", "addr", "add", f"{LAN}/24", "dev", "lan0"],
                        ["ip", "link", "set", "lan0", "up"], ["ip", "link", "set", "lan1", "up"]):
            net.home.run(command, check=True)
    phone = da_proc = None
    da = DaLog(tmp_path / "slpda.log")
    log = open(da.path, "wb")  # closed below
    try:
        (tmp_path / "slpda.toml").write_text(f'[state]\nfile = "{tmp_path / "slpda.json"}"\n'
                                             f'[registration]\nkey_directory = "{keys}"\n')
        da_proc = net.home.popen([sys.executable, "-m", "sipmob.slpda", "--config",
                                  str(tmp_path / "slpda.toml"), "--listen", DA],
                                 env=ENV, stdout=log, stderr=subprocess.STDOUT)
        assert until(lambda: "listening on" in da.output(), 10)
        phone = HomePhone(net, tmp_path / "mn", egress_toml(probe=False, share="10.200.0.0/16"),
                          da=DA, address=listen,
                          slp=f'spi = "mn-phone"\nkey_file = "{keys / "mn-phone.key"}"\n',
                          extra='[device]\nenabled = true\nname = "Hall phone"\n')
        yield Home(net, da, phone)
    finally:
        if phone is not None:
            phone.stop()
        if da_proc is not None:
            terminate(da_proc, 5)
        log.close()
        net.delete()


def test_device_and_egress_registrations_are_both_signed_and_taken(home: Home) -> None:
    da, first, second = home.da, advert_url(DEVICE), advert_url(f"sip:mn@{HOME2}:5060")
    assert until(lambda: registered_as(da, DEVICE, "mn-phone"), 10), home.why()  # type: ignore[arg-type]
    assert until(lambda: registered_as(da, first, "mn-phone"), 10), home.why()  # type: ignore[arg-type]
    assert "AUTHENTICATION_FAILED" not in da.output(), home.why()
    home.net.link_down("h1")
    assert until(lambda: registered_as(da, second, "mn-phone"), 10), home.why()  # type: ignore[arg-type]
    assert until(lambda: deregistered_as(da, first, "mn-phone"), 10), home.why()  # type: ignore[arg-type]
    # the device follows the phone's contact: the new URL registered, the old one gone, both signed
    assert until(lambda: registered_as(da, MOVED, "mn-phone"), 10), home.why()  # type: ignore[arg-type]
    assert until(lambda: deregistered_as(da, DEVICE, "mn-phone"), 10), home.why()  # type: ignore[arg-type]
    assert "AUTHENTICATION_FAILED" not in da.output(), home.why()


def test_each_service_is_found_with_its_attributes_and_both_follow_the_egress_move(home: Home) -> None:
    first, second = advert_url(DEVICE), advert_url(f"sip:mn@{HOME2}:5060")
    assert until(lambda: home.urls("service:sip-device") == {DEVICE}
                 and home.urls("service:sip-egress") == {first}, 10), home.why()
    assert home.answers(DEVICE).startswith("SIP/2.0 200"), home.why()
    device = home.slptool("findattrs", DEVICE)
    assert "(name=Hall phone)" in device and "(mobility=enhanced)" in device, device
    assert "sip-egress" not in device and "egresses" not in device, device
    egress = home.slptool("findattrs", first)
    assert "(event=sip-egress)" in egress and "(active=" in egress, egress
    assert "name=" not in egress and "mobility" not in egress, egress

    home.net.link_down("h1")  # the egress advert moves to wan2's address: the old URL deregistered
    assert until(lambda: deregistered_as(home.da, first, "mn-phone"), 10), home.why()  # type: ignore[arg-type]
    assert until(lambda: home.urls("service:sip-egress") == {second}, 10), home.why()
    assert "(active=wan2)" in home.slptool("findattrs", second)
    assert until(lambda: home.urls("service:sip-device") == {MOVED}, 10), home.why()
    assert home.answers(MOVED).startswith("SIP/2.0 200"), home.why()  # the home reaches it there
    device = home.slptool("findattrs", MOVED)
    assert "(name=Hall phone)" in device and "(mobility=enhanced)" in device, device
    assert "sip-egress" not in device, device


def test_an_address_change_moves_the_device_registration_to_the_new_address(home: Home) -> None:
    new = "10.200.1.3"
    renumbered = f"sip:mn@{new}:5060"
    assert until(lambda: home.urls("service:sip-device") == {DEVICE}, 10), home.why()
    home.net.readdress("h1", HOME1, new)  # DHCP gave wan1 another address (HMMP)
    assert until(lambda: registered_as(home.da, renumbered, "mn-phone"), 10), home.why()  # type: ignore[arg-type]
    assert until(lambda: deregistered_as(home.da, DEVICE, "mn-phone"), 10), home.why()  # type: ignore[arg-type]
    assert until(lambda: home.urls("service:sip-device") == {renumbered}, 10), home.why()
    assert home.answers(renumbered).startswith("SIP/2.0 200"), home.why()
    assert "AUTHENTICATION_FAILED" not in home.da.output(), home.why()


@pytest.mark.parametrize("home", [LAN], indirect=True)
def test_a_phone_with_a_lan_side_is_a_device_there_and_stays_when_wan1_fails(home: Home) -> None:
    """Not under its WAN contact (the egress's address, which moves and which the home's devices
    need not route to) but under its LAN address, which wan1's failure does not touch."""
    lan = f"sip:mn@{LAN}:5060"
    assert until(lambda: home.urls("service:sip-egress") == {advert_url(DEVICE)}, 10), home.why()
    assert home.urls("service:sip-device") == {lan}, home.why()
    assert home.answers(lan).startswith("SIP/2.0 200"), home.why()
    home.net.link_down("h1")
    assert until(lambda: home.urls("service:sip-egress") == {advert_url(MOVED)}, 10), home.why()
    assert home.urls("service:sip-device") == {lan}, home.why()
    assert not deregistered_as(home.da, lan, "mn-phone"), home.why()  # type: ignore[arg-type]
    assert home.answers(lan).startswith("SIP/2.0 200"), home.why()
