"""A bounded mutation fuzz of ``sipmob phone``'s SIP port: mutated INVITEs, OPTIONS, BYEs, REFERs,
responses... from a stranger, a rogue LAN host and the CN's address, against the real process in a
namespace. The phone must log no traceback, keep answering, and not grow.

``SIPMOB_FUZZ_COUNT`` sets the number of packets (default 3000; tests/bench/bench_attack_phone.py
runs the long one and prints its throughput).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from attackers import STRANGER, Home, fuzz, status
from tests.peers import netns

pytestmark = [pytest.mark.skipif(not netns.available(), reason="needs network namespaces (root)")]

COUNT = int(os.environ.get("SIPMOB_FUZZ_COUNT", "3000"))


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = Home(tmp_path, media_timeout=2.0)
    try:
        yield h
    finally:
        h.close()


def test_mutated_sip_causes_no_traceback_and_no_growth(home: Home) -> None:
    fuzz(home, min(COUNT, 500), seed=7)  # warm-up: caches, imports, the first transactions
    rss_before = home.rss_kb()
    fuzz(home, COUNT, seed=8)
    prober = home.party(STRANGER, "probe")
    try:
        assert status(prober.wait_response(prober.options("mn"), "OPTIONS") or b"") == 200
    finally:
        prober.close()
    out = home.output()
    assert "Traceback" not in out and "Unhandled" not in out, out[-3000:]
    assert home.rss_kb() - rss_before < 20_000, (rss_before, home.rss_kb())
