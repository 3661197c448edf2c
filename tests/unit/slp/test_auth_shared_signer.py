"""Two service agents of one registrant share its signer: one URL under two service types.

A phone registers its one SIP URI as ``service:sip-device`` and as ``service:sip-egress`` with two
agents; the DA keeps one last timestamp per SPI and URL, so two signers each starting at
``now + VALIDITY`` would give it the same timestamp twice and the second registration would be
refused as a replay.
"""

from __future__ import annotations

import dataclasses
import os

from sipmob.slp import auth, wire
from sipmob.slp.agent import AgentConfig, Registration, ServiceAgent
from sipmob.slp.da import DAConfig, DirectoryAgent
from sipmob.slp.messages import ErrorCode, SrvAck, SrvReg

NOW = 1_700_000_000.0
KEY = os.urandom(32)
URL = "sip:mn@192.168.1.30:5060"
PHONE = ("192.168.1.30", 40000)
DA = ("192.168.1.1", 427)


def make_da() -> DirectoryAgent:
    return DirectoryAgent(DAConfig(url="service:directory-agent://192.168.1.1", keys=(("phone", KEY),)), NOW)


def register(da: DirectoryAgent, agent: ServiceAgent, service_type: str) -> tuple[ErrorCode, int]:
    (out,) = agent.register(Registration(URL, service_type, ("DEFAULT",), "(name=Phone)", 300), NOW)
    msg = wire.decode(out.data)
    assert isinstance(msg, SrvReg)
    (reply,) = da.handle(out.data, PHONE, "udp", NOW)
    ack = wire.decode(reply)
    assert isinstance(ack, SrvAck)
    return ack.error, msg.url_entry.auths[0].timestamp


def test_agents_made_from_one_config_never_reuse_a_timestamp_for_a_url() -> None:
    config = AgentConfig(das=(DA,), auth_spi="phone", auth_key=KEY)
    # As sipmob.service.slp makes each agent's config: a copy with its own DAs and scopes.
    device = ServiceAgent(dataclasses.replace(config, scopes=("DEFAULT",)), NOW)
    egress = ServiceAgent(dataclasses.replace(config, multicast=False), NOW)
    da = make_da()
    first = register(da, device, "service:sip-device")
    second = register(da, egress, "service:sip-egress")
    assert first[0] == second[0] == ErrorCode.OK
    assert second[1] > first[1]


def test_two_separately_made_configs_clash_which_is_why_they_are_shared() -> None:
    da = make_da()
    one = ServiceAgent(AgentConfig(das=(DA,), auth_spi="phone", auth_key=KEY), NOW)
    two = ServiceAgent(AgentConfig(das=(DA,), auth_spi="phone", auth_key=KEY), NOW)
    assert register(da, one, "service:sip-device")[0] == ErrorCode.OK
    assert register(da, two, "service:sip-egress")[0] == ErrorCode.AUTHENTICATION_FAILED


def test_a_copy_with_another_key_or_without_one_gets_its_own_signer() -> None:
    config = AgentConfig(auth_spi="phone", auth_key=KEY)
    assert config.signer is not None and config.signer.uses("phone", KEY)
    other = dataclasses.replace(config, auth_key=os.urandom(32))
    assert other.signer is not config.signer and other.signer is not None
    assert not other.signer.uses("phone", KEY)
    unsigned = dataclasses.replace(config, auth_spi="", auth_key=b"")
    assert unsigned.signer is None
    assert repr(config).count(KEY.hex()) == 0 and "signer" not in repr(config)
    assert isinstance(config.signer, auth.Signer)
