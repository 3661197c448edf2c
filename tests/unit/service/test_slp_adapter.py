"""SLPClient and SLPServiceAgent on the reactor, against a small fake DA on loopback.

The fake DA answers with the wire codec only; the real daemon is exercised in
tests/integration/slp/test_agent_with_slpda.py. Timings are shortened through AgentConfig so that
retransmissions and timeouts take milliseconds; nothing here asserts on durations.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import defer, protocol, reactor
from twisted.python.failure import Failure

from sipmob.service.slp import SLPClient, SLPServiceAgent, parse_hostport
from sipmob.slp import wire
from sipmob.slp.agent import (
    AgentConfig,
    DAFound,
    Deregistered,
    Event,
    Registered,
    SLPError,
    SLPTimeout,
)
from sipmob.slp.attrs import Attribute
from sipmob.slp.messages import (
    NO_FLAGS,
    AttrRply,
    AttrRqst,
    DAAdvert,
    ErrorCode,
    Flags,
    FunctionId,
    Header,
    Message,
    SrvAck,
    SrvDeReg,
    SrvReg,
    SrvRply,
    SrvRqst,
    SrvTypeRply,
    SrvTypeRqst,
    UrlEntry,
)

FAST = AgentConfig(retry=0.05, retry_max=0.4, reg_retry=0.2, reg_wait=(0.01, 0.02))


class FakeDA(protocol.DatagramProtocol):
    """Answers SLP requests from a dict of registrations; can drop, fail or overflow on request."""

    def __init__(self) -> None:
        self.services: dict[str, SrvReg] = {}
        self.received: list[Message] = []
        self.drop = 0  # datagrams to ignore before answering
        self.error = ErrorCode.OK
        self.overflow = False
        self.boot = 1000
        self.port: Any = None
        self.tcp: Any = None

    def start(self) -> FakeDA:
        self.port = reactor.listenUDP(0, self, interface="127.0.0.1")
        factory = protocol.Factory.forProtocol(_FakeTcp)
        factory.da = self  # type: ignore[attr-defined]
        self.tcp = reactor.listenTCP(self.address[1], factory, interface="127.0.0.1")
        return self

    @property
    def address(self) -> tuple[str, int]:
        host = self.port.getHost()
        return (host.host, host.port)

    @property
    def url(self) -> str:
        return f"service:directory-agent://127.0.0.1:{self.address[1]}"

    def stop(self) -> None:
        self.port.stopListening()
        self.tcp.stopListening()

    def advert(self, xid: int = 0) -> bytes:
        return wire.encode(DAAdvert(Header(FunctionId.DAAdvert, xid), ErrorCode.OK, self.boot, self.url,
                                    "DEFAULT"))

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        msg = wire.decode(data)
        self.received.append(msg)
        if self.drop:
            self.drop -= 1
            return
        reply = self.answer(msg, tcp=False)
        if reply is not None:
            self.transport.write(reply, addr)

    def answer(self, msg: Message, tcp: bool) -> bytes | None:
        def h(fid: FunctionId, flags: Flags = NO_FLAGS) -> Header:
            return Header(fid, msg.header.xid, msg.header.lang, flags)

        if isinstance(msg, SrvRqst) and msg.service_type == "service:directory-agent":
            return self.advert(msg.header.xid)
        if isinstance(msg, SrvRqst):
            urls = tuple(r.url_entry for r in self.services.values()
                         if r.service_type == msg.service_type)
            if self.overflow and not tcp:
                return wire.encode(SrvRply(h(FunctionId.SrvRply, Flags.OVERFLOW), self.error, urls[:1]))
            return wire.encode(SrvRply(h(FunctionId.SrvRply), self.error, urls))
        if isinstance(msg, SrvReg):
            if self.error == ErrorCode.OK:
                self.services[msg.url_entry.url] = msg
            return wire.encode(SrvAck(h(FunctionId.SrvAck), self.error))
        if isinstance(msg, SrvDeReg):
            self.services.pop(msg.url_entry.url, None)
            return wire.encode(SrvAck(h(FunctionId.SrvAck), self.error))
        if isinstance(msg, AttrRqst):
            reg = self.services.get(msg.url)
            return wire.encode(AttrRply(h(FunctionId.AttrRply), self.error,
                                        reg.attr_list if reg else ""))
        if isinstance(msg, SrvTypeRqst):
            types = sorted({r.service_type for r in self.services.values()})
            return wire.encode(SrvTypeRply(h(FunctionId.SrvTypeRply), self.error, ",".join(types)))
        return None


class _FakeTcp(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        reply = self.factory.da.answer(wire.decode(data), tcp=True)  # type: ignore[attr-defined]
        self.factory.da.received.append(wire.decode(data))  # type: ignore[attr-defined]
        if reply is not None:
            self.transport.write(reply)


def wait(d: defer.Deferred[Any], timeout: float = 5.0) -> Any:
    """Turn the reactor until ``d`` fires (bounded); its result, or raise its failure."""
    results: list[Any] = []
    d.addBoth(results.append)
    deadline = time.monotonic() + timeout
    while not results and time.monotonic() < deadline:
        reactor.iterate(0.005)
    assert results, "the Deferred did not fire in time"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def spin_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        reactor.iterate(0.005)
    assert condition(), "condition not met in time"


@pytest.fixture
def da() -> Iterator[FakeDA]:
    fake = FakeDA().start()
    yield fake
    fake.stop()


@pytest.fixture
def client(da: FakeDA) -> Iterator[SLPClient]:
    c = SLPClient(reactor, da.address, bind="127.0.0.1", config=FAST)
    yield c
    wait(c.close())


def registered(da: FakeDA, url: str, service_type: str = "service:sip",
               attrs: str = "(room=kitchen)") -> None:
    da.services[url] = SrvReg(Header(FunctionId.SrvReg), UrlEntry(url, 300), service_type, "DEFAULT",
                              attrs)


def test_find_services_returns_the_url_entries(da: FakeDA, client: SLPClient) -> None:
    registered(da, "sip:tv@127.0.0.1")
    registered(da, "sip:cam@127.0.0.1")
    urls = wait(client.find_services("service:sip"))
    assert sorted(u.url for u in urls) == ["sip:cam@127.0.0.1", "sip:tv@127.0.0.1"]


def test_find_attributes_returns_parsed_attributes(da: FakeDA, client: SLPClient) -> None:
    registered(da, "sip:tv@127.0.0.1", attrs="(room=living room),(floor=2)")
    attrs = wait(client.find_attributes("sip:tv@127.0.0.1"))
    assert attrs["room"] == Attribute("room", ("living room",))
    assert attrs["floor"].values == (2,)


def test_find_service_types_lists_registered_types(da: FakeDA, client: SLPClient) -> None:
    registered(da, "sip:tv@127.0.0.1")
    registered(da, "mdsm://127.0.0.1", service_type="service:mdsm")
    assert wait(client.find_service_types()) == ["service:mdsm", "service:sip"]


def test_da_error_is_an_errback_with_its_code(da: FakeDA, client: SLPClient) -> None:
    client.start()
    da.error = ErrorCode.SCOPE_NOT_SUPPORTED
    with pytest.raises(SLPError) as caught:
        wait(client.find_services("service:sip"))
    assert caught.value.code == ErrorCode.SCOPE_NOT_SUPPORTED


def test_lost_datagrams_are_retransmitted(da: FakeDA, client: SLPClient) -> None:
    registered(da, "sip:tv@127.0.0.1")
    client.start()
    spin_until(lambda: client.agent.das)  # the start-up DA discovery is answered
    da.drop = 2
    urls = wait(client.find_services("service:sip"))
    assert [u.url for u in urls] == ["sip:tv@127.0.0.1"]
    queries = [m for m in da.received if isinstance(m, SrvRqst) and m.service_type == "service:sip"]
    assert len(queries) == 3 and len({m.header.xid for m in queries}) == 1


def test_silent_da_times_out(da: FakeDA, client: SLPClient) -> None:
    da.drop = 1000
    with pytest.raises(SLPTimeout):
        wait(client.find_services("service:sip"))


def test_overflowed_reply_is_fetched_over_tcp(da: FakeDA, client: SLPClient) -> None:
    for i in range(3):
        registered(da, f"sip:dev{i}@127.0.0.1")
    da.overflow = True
    urls = wait(client.find_services("service:sip"))
    assert len(urls) == 3


def test_client_learns_the_da_from_its_advert(da: FakeDA, client: SLPClient) -> None:
    das = wait(client.find_das())
    assert [(d.url, d.address, d.boot_timestamp) for d in das] == [(da.url, da.address, da.boot)]


def test_one_shot_register_and_deregister(da: FakeDA, client: SLPClient) -> None:
    wait(client.register("sip:tv@127.0.0.1", "service:sip", {"room": Attribute("room", ("hall",))},
                         lifetime=120))
    reg = da.services["sip:tv@127.0.0.1"]
    assert (reg.url_entry.lifetime, reg.attr_list) == (120, "(room=hall)")
    wait(client.deregister("sip:tv@127.0.0.1"))
    assert da.services == {}


def test_parse_hostport_accepts_host_port_and_bracketed_v6() -> None:
    assert parse_hostport("127.0.0.1:4427") == ("127.0.0.1", 4427)
    assert parse_hostport("127.0.0.1") == ("127.0.0.1", 427)
    assert parse_hostport("[::1]:4427") == ("::1", 4427)
    with pytest.raises(ValueError):
        parse_hostport("127.0.0.1:0")


# SLPServiceAgent ------------------------------------------------------------------------------


@pytest.fixture
def service_agent(da: FakeDA) -> Iterator[tuple[SLPServiceAgent, list[Event]]]:
    events: list[Event] = []
    agent = SLPServiceAgent(reactor, [da.address], bind="127.0.0.1", config=FAST, on_event=events.append)
    agent.start()
    yield agent, events
    wait(agent.stop())


def test_service_agent_registers_and_reports(da: FakeDA,
                                             service_agent: tuple[SLPServiceAgent, list[Event]]) -> None:
    agent, events = service_agent
    agent.register("sip:tv@127.0.0.1", "service:sip", "(room=kitchen)", lifetime=60)
    spin_until(lambda: any(isinstance(e, Registered) for e in events))
    assert da.services["sip:tv@127.0.0.1"].attr_list == "(room=kitchen)"
    assert any(isinstance(e, DAFound) and e.da.url == da.url for e in events)


def test_service_agent_stop_deregisters(da: FakeDA,
                                        service_agent: tuple[SLPServiceAgent, list[Event]]) -> None:
    agent, events = service_agent
    agent.register("sip:tv@127.0.0.1", "service:sip", lifetime=60)
    spin_until(lambda: "sip:tv@127.0.0.1" in da.services)
    wait(agent.stop())
    assert da.services == {}
    assert any(isinstance(e, Deregistered) for e in events)


def test_service_agent_registers_again_with_a_rebooted_da(
        da: FakeDA, service_agent: tuple[SLPServiceAgent, list[Event]]) -> None:
    agent, events = service_agent
    spin_until(lambda: agent.agent.das)
    agent.register("sip:tv@127.0.0.1", "service:sip", lifetime=60)
    spin_until(lambda: "sip:tv@127.0.0.1" in da.services)
    da.services.clear()  # the DA restarted and lost its registrations
    da.boot += 1
    da.transport.write(da.advert(), agent.address)
    spin_until(lambda: "sip:tv@127.0.0.1" in da.services)


def test_service_agent_catches_up_when_the_da_appears(
        da: FakeDA, service_agent: tuple[SLPServiceAgent, list[Event]]) -> None:
    agent, events = service_agent
    da.drop = 1000
    agent.register("sip:tv@127.0.0.1", "service:sip", lifetime=60)
    spin_until(lambda: any(type(e).__name__ == "RegistrationFailed" for e in events))
    da.drop = 0
    spin_until(lambda: "sip:tv@127.0.0.1" in da.services)
