"""DTMF through `sipmob-transcoder` when the MDSM holds the call (it is the RFC 4117 controller).

baresip is the CN speaking Opus and PCMA; `sipmob phone` hands the call to a living room whose
speaker (PJSIP) speaks PCMU only, so the MDSM reaches it through the transcoder (Opus <-> PCMU).
The speaker's dialog is the MDSM's: its SIP INFO digits come to the MDSM, which passes them to the
transcoder with ``Side=B``. The CN's Opus side has no telephone-event at 48 kHz (baresip offers
it at 8 kHz only), so the transcoder answers 488 and the MDSM passes the INFO to the CN itself;
baresip must report the same digits, and tshark sees the INFO at each hop.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.transcoder.test_transcoder import OpusBaresip
from tests.integration.transcoder.transcoder_process import Transcoder
from tests.peers.baresip import BARESIP
from tests.peers.pjsua import Pjsua
from tests.peers.ports import free_udp_port
from tests.peers.tshark import TSHARK, LiveCapture, tshark

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "slpda"), str(HERE.parent / "mn"), str(HERE)]
from mdsm_process import HOST, Mdsm  # noqa: E402
from phone_process import Phone, until  # noqa: E402
from slpda_process import Slpda  # noqa: E402

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)"),
              pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")]
pj = pytest.importorskip("pjsua2")


class Home:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.stoppers: list[Any] = []
        for d in ("da", "mn", "mdsm", "tx"):
            (directory / d).mkdir()
        self.da = Slpda(directory / "da").start()
        self.stoppers.append(self.da.stop)
        self.address = f"{HOST}:{self.da.port}"
        self.cn = OpusBaresip(directory, user="cn", codecs="opus/48000/2,PCMA")
        self.stoppers.append(self.cn.stop)
        self.speaker = Pjsua(free_udp_port(), "speaker", workdir=directory / "speaker", codecs=["PCMU/8000"])
        self.stoppers.append(self.speaker.stop)
        self.transcoder = Transcoder(directory / "tx", slp=f'das = ["{self.address}"]\nupdate_interval = 0.5')
        self.transcoder.start()
        self.stoppers.append(self.transcoder.stop)
        self.mdsm = Mdsm(directory / "mdsm", self.address,
                         '[[system]]\nname = "living-room"\nmembers = ["speaker"]\n'
                         'owners = ["sip:mn@127.0.0.1"]\n')
        (self.mdsm.devices / "speaker.toml").write_text(f'uri = "{self.speaker.uri}"\naudio = "sendrecv"\n')
        self.mdsm.start()
        self.stoppers.append(self.mdsm.stop)
        self.phone = Phone(directory / "mn", self.address, auto_answer=True)
        self.stoppers.append(self.phone.stop)
        assert until(lambda: "living-room" in self.phone.sipmob("devices", "--json").stdout, timeout=10), \
            self.mdsm.output()
        with self.da.client() as slp:
            assert until(lambda: bool(getattr(slp.udp(slp.srv_rqst("service:sip-transcoder")), "urls", ())),
                         10), self.transcoder.output()

    def stop(self) -> None:
        for stop in reversed(self.stoppers):
            stop()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = Home(tmp_path)
    try:
        yield h
    finally:
        h.stop()


def test_a_transcoded_members_sip_info_reaches_the_cn(home: Home) -> None:
    done = home.phone.sipmob("call", home.cn.uri)
    assert done.returncode == 0, done.stderr + home.phone.output()
    assert until(lambda: home.phone.received() > 20), "no RTP from the CN"
    out = home.phone.sipmob("transfer", "1", "--to", "living-room", "--mode", "handoff")
    assert out.returncode == 0, out.stderr + home.phone.output() + home.mdsm.output()
    assert until(lambda: "via transcoder: Opus <-> PCMU" in home.mdsm.output(), 10), home.mdsm.output()
    assert until(lambda: len(home.speaker.calls()) == 1, 10)
    [call] = home.speaker.calls()
    ports = (home.mdsm.port, home.transcoder.port, home.cn.port)
    capture = LiveCapture(home.dir / "mdsm-info.pcap",
                          "udp and (" + " or ".join(f"port {p}" for p in ports) + ")")
    try:
        start = len(home.cn.events)
        home.speaker.dtmf(int(call["id"]), "28", method="info")

        def heard() -> list[str]:
            return [e.get("param") for e in home.cn.events[start:] if e.get("type") == "CALL_DTMF_START"]

        until(lambda: len(heard()) >= 2, 10)
        time.sleep(0.5)
    finally:
        path = capture.stop()
    assert heard() == ["2", "8"], home.mdsm.output() + home.transcoder.output()
    rows = tshark("-r", str(path), "-Y", 'sip.Method == "INFO"', "-T", "fields", "-e", "udp.srcport",
                  "-e", "udp.dstport").splitlines()
    hops = [tuple(r.split("\t")) for r in rows]
    mdsm, transcoder, cn = (str(p) for p in ports)
    assert hops.count((mdsm, transcoder)) == 2, hops  # Side=B, answered 488
    assert hops.count((mdsm, cn)) == 2, hops
