"""Another gateway subscribes to the phone's Egress List (SIP-NEMO §4.5, event sip-egress).

sipp plays the other gateway: from the home's own network it gets a NOTIFY with the list and
another when wan1 fails; from outside the allowed networks it gets 403. Needs root and sipp.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.integration.net.twowan import (
    ENV,
    HOME1,
    HOME2,
    HomePhone,
    SippInInternet,
    TwoWan,
    egress_toml,
    lone_phone,
    until,
)
from tests.peers.netns import available
from tests.peers.process import terminate
from tests.peers.sipp import SIPP

from sipmob.net.egress_event import advert_url

SCENARIOS = Path(__file__).resolve().parent / "scenarios"

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(SIPP is None, reason="sipp is not installed (apt sip-tester)"),
              pytest.mark.skipif(not available(), reason="needs network namespaces (root)")]


def test_a_gateway_of_the_home_is_notified_of_the_list_and_of_each_change(tmp_path: Path) -> None:
    with lone_phone(tmp_path, egress_toml(probe=False, share="10.200.2.0/24")) as (net, phone):
        gateway = SippInInternet(net, SCENARIOS / "subscriber_egress.xml", tmp_path, 5080, ns=net.home,
                                 host=HOME2, target=f"{HOME1}:5060")
        time.sleep(1.0)
        net.link_down("h1")
        assert gateway.wait(15) == 0, gateway.report() + phone.output()


def test_a_subscriber_outside_the_allowed_networks_is_refused(tmp_path: Path) -> None:
    with lone_phone(tmp_path, egress_toml(probe=False, share="10.200.2.0/24")) as (net, phone):
        outsider = SippInInternet(net, SCENARIOS / "subscriber_refused.xml", tmp_path, 5080,
                                  target=f"{HOME1}:5060")
        assert outsider.wait(15) == 0, outsider.report() + phone.output()
        assert "not an allowed network" in phone.output()


def slptool(net: TwoWan, da: str, *args: str) -> str:
    done = net.home.run([sys.executable, "-m", "sipmob.service.slptool", "--da", da, *args], env=ENV)
    return done.stdout if done.returncode == 0 else f"failed: {done.stderr}"


def test_the_list_is_advertised_in_slp_and_follows_the_phones_address(tmp_path: Path) -> None:
    net = TwoWan()
    phone = da_proc = None
    try:
        (tmp_path / "slpda.toml").write_text(f'[state]\nfile = "{tmp_path / "slpda.json"}"\n')
        log = open(tmp_path / "slpda.log", "wb")  # closed below
        da_proc = net.home.popen([sys.executable, "-m", "sipmob.slpda", "--config",
                                  str(tmp_path / "slpda.toml"), "--listen", "127.0.0.1:4270"],
                                 env=ENV, stdout=log, stderr=subprocess.STDOUT)
        da = "127.0.0.1:4270"
        assert until(lambda: not slptool(net, da, "findsrvs", "service:sip-egress").startswith("failed"), 10)
        phone = HomePhone(net, tmp_path, egress_toml(probe=False, share="10.200.0.0/16"), da=da)
        first, second = advert_url(f"sip:mn@{HOME1}:5060"), advert_url(f"sip:mn@{HOME2}:5060")
        assert until(lambda: first in slptool(net, da, "findsrvs", "service:sip-egress"), 5)
        net.link_down("h1")
        assert until(lambda: second in slptool(net, da, "findsrvs", "service:sip-egress"), 5)
        found = slptool(net, da, "findsrvs", "service:sip-egress")
        assert first not in found, found
        attrs = slptool(net, da, "findattrs", second)
        assert "(active=wan2)" in attrs and "(event=sip-egress)" in attrs, attrs
    finally:
        if phone is not None:
            phone.stop()
        if da_proc is not None:
            terminate(da_proc, 5)
            log.close()
        net.delete()
