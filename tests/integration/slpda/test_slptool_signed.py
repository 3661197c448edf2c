"""``sipmob.service.slptool --spi NAME --key-file PATH``: registrations from the shell, signed.

The real `sipmob-slpda` on loopback with a key made as ``sipmob keygen`` makes it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from registrant_keys import assert_only_its_key_changes, deregistered_as, keyed_da, make_keys, registered_as
from slpda_process import ROOT

URL = "sip:hall-speaker@127.0.0.1:5090"


def slptool(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipmob.service.slptool", "--da", f"127.0.0.1:{port}",
                           "--timeout", "5", *args], env={"PYTHONPATH": str(ROOT / "daemons")},
                          capture_output=True, text=True, timeout=30, check=False)


def test_a_signed_registration_from_slptool_is_changed_only_with_the_key(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys", "hall")
    signing = ["--spi", "hall", "--key-file", str(keys / "hall.key")]
    da = keyed_da(tmp_path / "da", keys)
    try:
        done = slptool(da.port, *signing, "register", URL, "service:sip-device", "(name=Hall speaker)")
        assert done.returncode == 0, done.stderr
        assert registered_as(da, URL, "hall")
        assert_only_its_key_changes(da, URL, "service:sip-device", "hall")
        refused = slptool(da.port, "deregister", URL)
        assert refused.returncode == 1 and "AUTHENTICATION_ABSENT" in refused.stderr
        done = slptool(da.port, *signing, "deregister", URL)
        assert done.returncode == 0, done.stderr
        assert deregistered_as(da, URL, "hall")
    finally:
        da.stop()


def test_spi_and_key_file_go_together_and_the_key_must_be_private(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys", "hall")
    alone = slptool(427, "--spi", "hall", "deregister", URL)
    assert alone.returncode == 2 and "--spi and --key-file go together" in alone.stderr
    (keys / "hall.key").chmod(0o640)
    public = slptool(427, "--spi", "hall", "--key-file", str(keys / "hall.key"), "deregister", URL)
    assert public.returncode == 2 and "chmod 600" in public.stderr
