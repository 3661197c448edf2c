"""The phone's two SLP services apart: ``service:sip-device`` under its SIP URI, ``service:sip-egress``
under `advert_url` of it, in one DA (sans-I/O), signed by the agents' one shared signer.

A DA keeps one registration per URL (RFC 2608 §9.3): under one URL the later SrvReg would replace
the other's type and attributes, and the egress's deregistration would remove the device.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from sipmob.net.egress_event import SERVICE_TYPE, advert_url, contact_of
from sipmob.slp import wire
from sipmob.slp.agent import AgentConfig, Outgoing, Registration, ServiceAgent
from sipmob.slp.da import DAConfig, DirectoryAgent
from sipmob.slp.messages import (
    AttrRply,
    AttrRqst,
    ErrorCode,
    FunctionId,
    Header,
    SrvAck,
    SrvRply,
    SrvRqst,
)
from sipmob.slp.names import service_type_of_url

NOW = 1_700_000_000.0
KEY = os.urandom(32)
CONTACT = "sip:mn@192.168.1.30:5060"
PHONE = ("192.168.1.30", 40000)
DA = ("192.168.1.1", 427)


def send(da: DirectoryAgent, data: bytes) -> object:
    (reply,) = da.handle(data, PHONE, "udp", NOW)
    return wire.decode(reply)


def acked(da: DirectoryAgent, agent: ServiceAgent, outgoing: list[Outgoing]) -> None:
    (out,) = outgoing
    (reply,) = da.handle(out.data, PHONE, "udp", NOW)
    ack = wire.decode(reply)
    assert isinstance(ack, SrvAck) and ack.error == ErrorCode.OK, ack
    assert agent.receive(reply, DA, NOW) == []


def found(da: DirectoryAgent, service_type: str) -> list[str]:
    reply = send(da, wire.encode(SrvRqst(Header(FunctionId.SrvRqst, 7), "", service_type, "DEFAULT", "")))
    assert isinstance(reply, SrvRply) and reply.error == ErrorCode.OK
    return [entry.url for entry in reply.urls]


def attrs(da: DirectoryAgent, url: str) -> str:
    reply = send(da, wire.encode(AttrRqst(Header(FunctionId.AttrRqst, 8), "", url, "DEFAULT", "")))
    assert isinstance(reply, AttrRply) and reply.error == ErrorCode.OK
    return reply.attr_list


@pytest.mark.parametrize("contact", [CONTACT, "sip:mn@[2001:db8::7]:5062", "sip:mn@10.0.0.2;transport=tcp"])
def test_the_advert_url_is_a_service_url_of_the_egress_type_and_gives_back_the_contact(contact: str) -> None:
    url = advert_url(contact)
    assert url != contact and url.startswith("service:sip-egress://")
    assert service_type_of_url(url) == SERVICE_TYPE  # what the DA requires of a service: URL (§8.3)
    assert contact_of(url) == contact
    assert contact_of(contact) == contact  # a gateway that advertised its SIP URI itself


def test_device_and_egress_registrations_stay_apart_and_the_egress_going_leaves_the_device() -> None:
    da = DirectoryAgent(DAConfig(url="service:directory-agent://192.168.1.1", keys=(("phone", KEY),)), NOW)
    config = AgentConfig(das=(DA,), auth_spi="phone", auth_key=KEY)
    device = ServiceAgent(dataclasses.replace(config), NOW)
    egress = ServiceAgent(dataclasses.replace(config, multicast=False), NOW)
    acked(da, device, device.register(Registration(CONTACT, "service:sip-device", ("DEFAULT",),
                                           "(name=Hall phone),(mobility=enhanced)", 300), NOW))
    acked(da, egress, egress.register(Registration(advert_url(CONTACT), SERVICE_TYPE, ("DEFAULT",),
                                           "(egresses=wan1,wan2),(event=sip-egress)", 300), NOW))
    assert found(da, "service:sip-device") == [CONTACT]
    assert found(da, SERVICE_TYPE) == [advert_url(CONTACT)]
    assert "Hall phone" in attrs(da, CONTACT) and "egresses" not in attrs(da, CONTACT)
    assert "egresses" in attrs(da, advert_url(CONTACT)) and "name" not in attrs(da, advert_url(CONTACT))

    acked(da, egress, egress.deregister(advert_url(CONTACT), NOW))  # wan1 down: the advert moves away
    assert found(da, SERVICE_TYPE) == []
    assert found(da, "service:sip-device") == [CONTACT]
    assert "(name=Hall phone)" in attrs(da, CONTACT)
