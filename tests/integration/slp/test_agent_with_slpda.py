"""The UA and SA (service/slp.py) and the slptool-like CLI against the real `sipmob-slpda` process.

The daemon runs on a free high port on 127.0.0.1 (no multicast), started and stopped by PID through
tests/integration/slpda/slpda_process.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sipmob.slpda.main", reason="the sipmob-slpda daemon is not in this tree")

from twisted.internet import defer, reactor  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from sipmob.service.slp import SLPClient, SLPServiceAgent  # noqa: E402
from sipmob.slp.agent import AgentConfig, DARebooted, Event, Registered  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slpda"))
from slpda_process import ROOT, Slpda  # noqa: E402

FAST = AgentConfig(retry=0.1, retry_max=1.0, reg_retry=0.3, reg_wait=(0.01, 0.05), da_find=0.5)
TV = "sip:tv@127.0.0.1:5070"


def wait(d: defer.Deferred[Any], timeout: float = 10.0) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    deadline = time.monotonic() + timeout
    while not results and time.monotonic() < deadline:
        reactor.iterate(0.01)
    assert results, "the Deferred did not fire in time"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def spin_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        reactor.iterate(0.01)
    assert condition(), "condition not met in time"


@pytest.fixture
def slpda(tmp_path: Path) -> Iterator[Slpda]:
    daemon = Slpda(tmp_path).start()
    yield daemon
    daemon.stop()


@pytest.fixture
def client(slpda: Slpda) -> Iterator[SLPClient]:
    c = SLPClient(reactor, ("127.0.0.1", slpda.port), bind="127.0.0.1", config=FAST)
    yield c
    wait(c.close())


@pytest.fixture
def sa(slpda: Slpda) -> Iterator[tuple[SLPServiceAgent, list[Event]]]:
    events: list[Event] = []
    agent = SLPServiceAgent(reactor, [("127.0.0.1", slpda.port)], bind="127.0.0.1", config=FAST,
                            on_event=events.append)
    agent.start()
    yield agent, events
    wait(agent.stop())


def test_registration_by_the_sa_is_found_by_the_ua(sa: tuple[SLPServiceAgent, list[Event]],
                                                   client: SLPClient) -> None:
    agent, events = sa
    agent.register(TV, "service:sip-device", "(room=living room),(media=audio,video)", lifetime=120)
    spin_until(lambda: any(isinstance(e, Registered) for e in events))
    urls = wait(client.find_services("service:sip-device", "(media=video)"))
    assert [(u.url, u.lifetime) for u in urls] == [(TV, 120)]
    assert wait(client.find_services("service:sip-device", "(room=kitchen)")) == []
    attrs = wait(client.find_attributes(TV))
    assert set(attrs["media"].values) == {"audio", "video"}
    assert "service:sip-device" in wait(client.find_service_types())


def test_attribute_update_reaches_the_daemon(sa: tuple[SLPServiceAgent, list[Event]],
                                             client: SLPClient) -> None:
    agent, events = sa
    agent.register(TV, "service:sip-device", "(room=hall)", lifetime=120)
    spin_until(lambda: any(isinstance(e, Registered) for e in events))
    agent.register(TV, "service:sip-device", "(room=kitchen)", lifetime=120)
    spin_until(lambda: sum(isinstance(e, Registered) for e in events) == 2)
    assert wait(client.find_attributes(TV))["room"].values == ("kitchen",)


def test_reply_too_big_for_a_datagram_comes_over_tcp(sa: tuple[SLPServiceAgent, list[Event]],
                                                     client: SLPClient) -> None:
    agent, events = sa
    urls = {f"sip:device-with-a-long-name-{i:03d}@127.0.0.1:5070" for i in range(60)}  # ~3 kB
    for url in urls:
        agent.register(url, "service:sip-device", lifetime=120)
    spin_until(lambda: sum(isinstance(e, Registered) for e in events) == len(urls))
    found = wait(client.find_services("service:sip-device"))
    assert {u.url for u in found} == urls


def test_stop_deregisters_from_the_daemon(sa: tuple[SLPServiceAgent, list[Event]],
                                          client: SLPClient) -> None:
    agent, events = sa
    agent.register(TV, "service:sip-device", lifetime=120)
    spin_until(lambda: any(isinstance(e, Registered) for e in events))
    wait(agent.stop())
    assert wait(client.find_services("service:sip-device")) == []


def test_restarted_daemon_gets_the_registrations_back(slpda: Slpda,
                                                      sa: tuple[SLPServiceAgent, list[Event]]) -> None:
    agent, events = sa
    spin_until(lambda: agent.agent.das)
    agent.register(TV, "service:sip-device", lifetime=120)
    spin_until(lambda: any(isinstance(e, Registered) for e in events))
    boot = next(iter(agent.agent.das.values())).boot_timestamp
    while int(time.time()) <= boot:  # the boot timestamp has a one-second resolution
        time.sleep(0.05)
    slpda.stop()
    slpda.state_path.unlink(missing_ok=True)  # a DA that lost everything
    slpda.start()
    spin_until(lambda: any(isinstance(e, DARebooted) for e in events))
    client = SLPClient(reactor, ("127.0.0.1", slpda.port), bind="127.0.0.1", config=FAST)
    try:
        found: list[Any] = []

        def registered_again() -> bool:
            found[:] = wait(client.find_services("service:sip-device"))
            return bool(found)

        spin_until(registered_again)
        assert [u.url for u in found] == [TV]
    finally:
        wait(client.close())


def tool(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipmob.service.slptool", "--da", f"127.0.0.1:{port}",
                           "--timeout", "2", *args], capture_output=True, text=True, timeout=30,
                          env={"PYTHONPATH": str(ROOT / "daemons"), "PATH": "/usr/bin:/bin"})


def test_tool_registers_finds_and_deregisters(slpda: Slpda) -> None:
    reg = tool(slpda.port, "register", TV, "service:sip-device", "(room=hall)", "--lifetime", "90")
    assert (reg.returncode, reg.stderr) == (0, "")
    found = tool(slpda.port, "findsrvs", "service:sip-device", "(room=hall)")
    assert found.stdout.splitlines() == [f"{TV},90"]
    attrs = tool(slpda.port, "--json", "findattrs", TV)
    # registered from loopback, a trusted registrant: the DA adds the keyword itself
    assert json.loads(attrs.stdout) == {"room": ["hall"], "trusted": []}
    das = tool(slpda.port, "--json", "findda")
    assert json.loads(das.stdout)[0]["address"] == f"127.0.0.1:{slpda.port}"
    assert tool(slpda.port, "deregister", TV).returncode == 0
    assert tool(slpda.port, "findsrvs", "service:sip-device").stdout == ""


def test_tool_reports_a_da_error_on_one_line_with_status_1(slpda: Slpda) -> None:
    result = tool(slpda.port, "--scope", "elsewhere", "findsrvs", "service:sip-device")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "SCOPE_NOT_SUPPORTED" in result.stderr
