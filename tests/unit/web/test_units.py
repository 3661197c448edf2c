"""The new units keep the hardening of the pattern unit (docs/packaging.md), minus its capability."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
UNITS = ROOT / "packaging/systemd"


def directives(name: str) -> set[str]:
    lines = (UNITS / name).read_text().splitlines()
    return {line.strip() for line in lines if "=" in line and not line.startswith("#")}


PATTERN = {d for d in directives("sipmob-slpda.service")
           if d.split("=", 1)[0] not in ("Description", "Documentation", "ExecStartPre", "ExecStart",
                                         "After", "CapabilityBoundingSet", "AmbientCapabilities",
                                         "RestrictAddressFamilies")}


@pytest.mark.parametrize("unit", ["sipmob-web.service", "sipmob-phone.service"])
def test_unit_has_the_pattern_hardening_and_no_capability(unit: str) -> None:
    found = directives(unit)
    assert PATTERN - found == set()
    assert "CapabilityBoundingSet=" in found
    assert not any(d.startswith("AmbientCapabilities") for d in found)
    assert any(d.startswith("ExecStartPre=") and "--check-config" in d for d in found)


def test_web_may_read_addresses_over_netlink_and_the_phone_owns_its_socket_directory() -> None:
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK" in directives("sipmob-web.service")
    phone = directives("sipmob-phone.service")
    assert "RuntimeDirectory=sipmob" in phone
    assert any(d.startswith("ExecStart=") and "--control /run/sipmob/mn.sock" in d for d in phone)
