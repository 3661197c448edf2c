"""`sipmob-transcoder` with its key: its registration is signed, and only it changes it.

The real `sipmob-slpda` and `sipmob-transcoder` on loopback, the key made in the test's tmp
directory as the package's postinst makes /etc/sipmob/keys/transcoder.key. A call changes
free-channels: the re-registrations, each with a later timestamp, are accepted; then the stop's
signed deregistration.
"""

from __future__ import annotations

from pathlib import Path

from registrant_keys import (
    assert_only_its_key_changes,
    attrs_of,
    deregistered_as,
    keyed_da,
    make_keys,
    registered_as,
)
from saproxy_process import wait_until
from tests.integration.transcoder.transcoder_process import HOST, Controller, Transcoder, invocation, side


def test_the_registration_is_signed_and_only_the_transcoder_changes_it(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys", "transcoder")
    da = keyed_da(tmp_path / "da", keys)
    try:
        slp = f'das = ["{HOST}:{da.port}"]\nupdate_interval = 0.5\nkey_file = "{keys / "transcoder.key"}"'
        transcoder = Transcoder(tmp_path, channels=10, slp=slp)
        with transcoder, Controller(transcoder.uri) as c, da.client() as client:
            url = transcoder.uri
            assert wait_until(lambda: registered_as(da, url, "transcoder"))
            assert "unsigned" not in transcoder.output()
            assert_only_its_key_changes(da, url, "service:sip-transcoder", "transcoder")
            offer = invocation(side(0, [(0, "PCMU/8000")]), side(0, [(111, "opus/48000/2")]))
            assert c.invite(offer).status == 200
            assert wait_until(lambda: "(free-channels=8)" in (attrs_of(client, url) or ""))
            assert c.bye().status == 200
            assert wait_until(lambda: "(free-channels=10)" in (attrs_of(client, url) or ""))
            assert_only_its_key_changes(da, url, "service:sip-transcoder", "transcoder")
        assert wait_until(lambda: deregistered_as(da, url, "transcoder"))
    finally:
        da.stop()
