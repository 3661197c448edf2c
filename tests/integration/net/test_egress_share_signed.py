"""The phone's two registrations of one URL, signed by one key: ``service:sip-device`` ([device])
and ``service:sip-egress`` (its shared Egress List), both of ``sip:mn@HOME:5060``.

The DA keeps the last timestamp per SPI and URL, so the two must come from one signer: the
second would otherwise be refused as a replay. When wan1 fails the egress registration moves to
the other address with a signed deregistration of the old URL. In the namespaces of twowan.py
(root); the DA and the phone run in the home namespace on its loopback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from registrant_keys import deregistered_as, make_keys, registered_as
from tests.integration.net.twowan import ENV, HOME1, HOME2, HomePhone, TwoWan, egress_toml, until
from tests.peers.netns import available
from tests.peers.process import terminate

pytestmark = pytest.mark.skipif(not available(), reason="needs network namespaces (root)")


class DaLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def output(self) -> str:
        return self.path.read_text(errors="replace") if self.path.exists() else ""


def test_device_and_egress_registrations_of_one_url_are_both_signed_and_taken(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys", "mn-phone")
    net = TwoWan()
    phone = da_proc = None
    da = DaLog(tmp_path / "slpda.log")
    log = open(da.path, "wb")  # closed below
    try:
        (tmp_path / "slpda.toml").write_text(f'[state]\nfile = "{tmp_path / "slpda.json"}"\n'
                                             f'[registration]\nkey_directory = "{keys}"\n')
        da_proc = net.home.popen([sys.executable, "-m", "sipmob.slpda", "--config",
                                  str(tmp_path / "slpda.toml"), "--listen", "127.0.0.1:4270"],
                                 env=ENV, stdout=log, stderr=subprocess.STDOUT)
        assert until(lambda: "listening on" in da.output(), 10)
        phone = HomePhone(net, tmp_path / "mn", egress_toml(probe=False, share="10.200.0.0/16"),
                          da="127.0.0.1:4270",
                          slp=f'spi = "mn-phone"\nkey_file = "{keys / "mn-phone.key"}"\n',
                          extra='[device]\nenabled = true\nname = "Hall phone"\n')
        first = f"sip:mn@{HOME1}:5060"
        assert until(lambda: registered_as(da, first, "mn-phone"), 10), da.output()  # type: ignore[arg-type]
        assert until(lambda: da.output().count(f"registered {first} ") >= 2, 10), da.output()
        assert "service:sip-device" in da.output() and "service:sip-egress" in da.output()
        assert "AUTHENTICATION_FAILED" not in da.output(), da.output()
        net.link_down("h1")
        second = f"sip:mn@{HOME2}:5060"
        assert until(lambda: registered_as(da, second, "mn-phone"), 10), da.output()  # type: ignore[arg-type]
        assert until(lambda: deregistered_as(da, first, "mn-phone"), 10), da.output()  # type: ignore[arg-type]
        assert "AUTHENTICATION_FAILED" not in da.output(), da.output()
    finally:
        if phone is not None:
            phone.stop()
        if da_proc is not None:
            terminate(da_proc, 5)
        log.close()
        net.delete()
