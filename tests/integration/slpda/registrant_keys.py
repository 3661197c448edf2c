"""A real `sipmob-slpda` that knows registrants' keys, and what it must refuse to anyone without one.

Used by the tests of each registrant that signs (the MDSM, the transcoder, the phone, slptool): the
keys are made in the test's tmp directory with `sipmob.service.slpkeys.make_key`, as the packages'
postinst and ``sipmob keygen`` make them, and thrown away with it.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from slpda_process import Client, Slpda, xid

from sipmob.service import slpkeys
from sipmob.slp import auth
from sipmob.slp.messages import (
    AttrRply,
    AttrRqst,
    ErrorCode,
    Flags,
    FunctionId,
    Header,
    SrvAck,
    SrvDeReg,
    SrvReg,
    UrlEntry,
)


def make_keys(directory: Path, *spis: str) -> Path:
    directory.mkdir(mode=0o700, exist_ok=True)
    for spi in spis:
        slpkeys.make_key(directory / f"{spi}.key")
    return directory


def keyed_da(directory: Path, keys: Path, extra: str = "") -> Slpda:
    directory.mkdir(exist_ok=True)
    return Slpda(directory, f'[registration]\nkey_directory = "{keys}"\n{extra}').start()


def registered_as(da: Slpda, url: str, spi: str) -> bool:
    """Whether the DA's log says it accepted a registration of `url` signed by `spi`."""
    return re.search(rf"registered {re.escape(url)} \(.*\) for \d+ s from \S+ as {re.escape(spi)}(?: \[|$)",
                     da.output(), re.MULTILINE) is not None


def deregistered_as(da: Slpda, url: str, spi: str) -> bool:
    return re.search(rf"deregistered +{re.escape(url)} \(.*\) by \S+ as {re.escape(spi)}(?: \[|$)",
                     da.output(), re.MULTILINE) is not None


def attrs_of(client: Client, url: str) -> str | None:
    reply = client.udp(AttrRqst(Header(FunctionId.AttrRqst, xid()), "", url, "DEFAULT"))
    assert isinstance(reply, AttrRply)
    return reply.attr_list or None


def _ack(client: Client, msg: SrvReg | SrvDeReg) -> ErrorCode:
    reply = client.udp(msg)
    assert isinstance(reply, SrvAck)
    return reply.error


def assert_only_its_key_changes(da: Slpda, url: str, service_type: str, spi: str) -> None:
    """From the box itself (the registrant's own source address, trusted by address): an unsigned
    deregistration or overwrite of `url`, and one signed under `spi` with a wrong key, are refused
    and change nothing."""
    with da.client() as other:
        before = attrs_of(other, url)
        assert before is not None, f"{url} is not registered"
        dereg = SrvDeReg(Header(FunctionId.SrvDeReg, xid(), "en"), "DEFAULT", UrlEntry(url, 0))
        reg = SrvReg(Header(FunctionId.SrvReg, xid(), "en", Flags.FRESH), UrlEntry(url, 300), service_type,
                     "DEFAULT", "(name=Rogue)")
        assert _ack(other, dereg) == ErrorCode.AUTHENTICATION_ABSENT
        assert _ack(other, reg) == ErrorCode.AUTHENTICATION_ABSENT
        forged = auth.sign(dereg, spi, os.urandom(32), int(time.time()) + 30)
        assert _ack(other, forged) == ErrorCode.AUTHENTICATION_FAILED
        assert attrs_of(other, url) == before
