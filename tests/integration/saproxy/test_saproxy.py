"""`sipmob-saproxy` as a real process against the real `sipmob-slpda`, queried with the SLP tool.

Devices are fake UDP responders on loopback (`saproxy_process.FakeDevice`) and, where marked, a
real baresip. Probing runs fast here (interval 0.5 s, timeout 0.5 s); every wait is bounded.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slpda"))
from saproxy_process import (
    FakeDevice,
    Saproxy,
    found,
    ok_with,
    silent,
    slptool,
    wait_until,
)
from slpda_process import Slpda, free_port


@pytest.fixture
def da(tmp_path: Path) -> Iterator[Slpda]:
    (tmp_path / "da").mkdir()
    daemon = Slpda(tmp_path / "da").start()
    yield daemon
    daemon.stop()


@pytest.fixture
def fakes() -> Iterator[list[FakeDevice]]:
    made: list[FakeDevice] = []
    yield made
    for device in made:
        device.stop_soon()
    for device in made:
        device.close()


@pytest.fixture
def proxies() -> Iterator[list[Saproxy]]:
    made: list[Saproxy] = []
    yield made
    for proxy in made:
        proxy.stop()


def device(fakes: list[FakeDevice], *args: object, **kwargs: object) -> FakeDevice:
    fake = FakeDevice(*args, **kwargs)  # type: ignore[arg-type]
    fakes.append(fake)
    return fake


def saproxy(proxies: list[Saproxy], tmp_path: Path, da_ports: list[int], **kwargs: object) -> Saproxy:
    proxy = Saproxy(tmp_path, da_ports, **kwargs)  # type: ignore[arg-type]
    proxies.append(proxy)
    return proxy


def test_a_device_that_answers_is_found(tmp_path: Path, da: Slpda, fakes: list[FakeDevice],
                                        proxies: list[Saproxy]) -> None:
    tv = device(fakes)
    proxy = saproxy(proxies, tmp_path, [da.port])
    proxy.add_device("tv", tv.uri)
    proxy.start()
    assert wait_until(lambda: found(da.port) == [tv.uri])


def test_what_the_200_says_fills_the_attributes_the_file_leaves_out(
        tmp_path: Path, da: Slpda, fakes: list[FakeDevice], proxies: list[Saproxy]) -> None:
    tv = device(fakes)
    proxy = saproxy(proxies, tmp_path, [da.port])
    proxy.add_device("tv", tv.uri, 'room = "living-room"\nname = "TV"\n')
    proxy.start()
    assert wait_until(lambda: found(da.port) == [tv.uri])
    attrs = slptool(da.port, "findattrs", tv.uri).stdout.strip()
    assert "(room=living-room)" in attrs
    assert "(video-codecs=H263)" in attrs and "(image-formats=CIF:4,QCIF:3)" in attrs
    assert "(media=audio-recvonly,video-recvonly)" in attrs


def test_a_predicate_on_room_and_media_finds_the_device(tmp_path: Path, da: Slpda, fakes: list[FakeDevice],
                                                       proxies: list[Saproxy]) -> None:
    tv = device(fakes)
    proxy = saproxy(proxies, tmp_path, [da.port])
    proxy.add_device("tv", tv.uri)
    proxy.start()
    assert wait_until(lambda: found(da.port, "(&(room=living-room)(media=video-recvonly))") == [tv.uri])
    assert found(da.port, "(room=kitchen)") == []


def test_a_device_that_stops_answering_disappears_and_comes_back(
        tmp_path: Path, da: Slpda, fakes: list[FakeDevice], proxies: list[Saproxy]) -> None:
    tv = device(fakes)
    proxy = saproxy(proxies, tmp_path, [da.port])
    proxy.add_device("tv", tv.uri)
    proxy.start()
    assert wait_until(lambda: found(da.port) == [tv.uri])
    tv.answer = silent
    assert wait_until(lambda: found(da.port) == [])
    tv.answer = ok_with()
    assert wait_until(lambda: found(da.port) == [tv.uri])
    out = proxy.output()
    assert out.count("device tv is up") == 2 and out.count("device tv is down") == 1


def test_any_final_response_counts_as_alive(tmp_path: Path, da: Slpda, fakes: list[FakeDevice],
                                            proxies: list[Saproxy]) -> None:
    from sipmob.sip.message import make_response

    busy = device(fakes, lambda request: make_response(request, 486, to_tag="b").to_bytes())
    proxy = saproxy(proxies, tmp_path, [da.port])
    proxy.add_device("phone", busy.uri)
    proxy.start()
    assert wait_until(lambda: found(da.port) == [busy.uri])


def test_each_change_of_state_is_one_log_line_with_the_device_field(
        tmp_path: Path, da: Slpda, fakes: list[FakeDevice], proxies: list[Saproxy]) -> None:
    tv = device(fakes)
    proxy = saproxy(proxies, tmp_path, [da.port])
    proxy.add_device("tv", tv.uri)
    proxy.start()
    proxy.wait_log("device tv is up")
    time.sleep(1.5)  # three more probes, all answered: no more lines
    lines = [line for line in proxy.output().splitlines() if "device tv is" in line]
    assert len(lines) == 1 and lines[0].endswith("[device=tv]")


def test_status_counts_devices_up_and_down(tmp_path: Path, da: Slpda, fakes: list[FakeDevice],
                                           proxies: list[Saproxy]) -> None:
    notify_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(0.2)
        up = [device(fakes) for _ in range(3)]
        down = device(fakes, silent)
        proxy = saproxy(proxies, tmp_path, [da.port], env={"NOTIFY_SOCKET": str(notify_path)})
        for i, fake in enumerate([*up, down]):
            proxy.add_device(f"d{i}", fake.uri)
        proxy.start()
        statuses: list[str] = []

        def seen() -> bool:
            try:
                statuses.extend(m for m in notify.recv(4096).decode().splitlines() if m.startswith("STATUS="))
            except TimeoutError:
                pass
            return "STATUS=3 devices up, 1 down" in statuses

        assert wait_until(seen, timeout=10), statuses


def test_an_aor_is_probed_through_the_outbound_proxy(tmp_path: Path, da: Slpda, fakes: list[FakeDevice],
                                                     proxies: list[Saproxy]) -> None:
    sip_proxy = device(fakes)
    proxy = saproxy(proxies, tmp_path, [da.port], sip=f'outbound_proxy = "127.0.0.1:{sip_proxy.port}"\n')
    proxy.add_device("desk", "sip:desk@home.example")
    proxy.start()
    assert wait_until(lambda: found(da.port) == ["sip:desk@home.example"])
    assert sip_proxy.requests


# Directory Agents ------------------------------------------------------------------------------


DA_FIND = "da_find = 0.5\n"  # ask the DA for its DAAdvert twice a second: a restart is seen at once


def test_a_da_absent_at_start_gets_the_devices_once_it_runs(
        tmp_path: Path, fakes: list[FakeDevice], proxies: list[Saproxy]) -> None:
    tv = device(fakes)
    port = free_port()
    proxy = saproxy(proxies, tmp_path, [port], slp=DA_FIND)
    proxy.add_device("tv", tv.uri)
    proxy.start()
    proxy.wait_log("device tv is up")
    (tmp_path / "da").mkdir()
    late = Slpda(tmp_path / "da", port=port).start()
    try:
        assert wait_until(lambda: found(late.port) == [tv.uri], timeout=15)
        proxy.stop()  # while the DA still answers its deregistrations
    finally:
        late.stop()


def test_a_da_restarted_without_its_state_gets_the_devices_back(
        tmp_path: Path, da: Slpda, fakes: list[FakeDevice], proxies: list[Saproxy]) -> None:
    tv = device(fakes)
    proxy = saproxy(proxies, tmp_path, [da.port], slp=DA_FIND)
    proxy.add_device("tv", tv.uri)
    proxy.start()
    assert wait_until(lambda: found(da.port) == [tv.uri])
    time.sleep(1.1)  # the DA's boot timestamp has a one-second resolution
    da.stop()
    da.state_path.unlink(missing_ok=True)
    da.start()
    assert wait_until(lambda: found(da.port) == [tv.uri], timeout=15)
    assert "restarted: registering again" in proxy.output()


def test_with_the_shipped_settings_a_da_killed_and_restarted_empty_has_the_devices_within_seconds(
        tmp_path: Path, da: Slpda, fakes: list[FakeDevice], proxies: list[Saproxy]) -> None:
    tv = device(fakes)
    proxy = saproxy(proxies, tmp_path, [da.port])  # da_watch = 1 s, multicast off: the defaults
    proxy.add_device("tv", tv.uri)
    proxy.start()
    assert wait_until(lambda: found(da.port) == [tv.uri])
    time.sleep(1.1)  # the DA's boot timestamp has a one-second resolution
    assert da.proc is not None
    da.proc.kill()
    da.proc.wait(timeout=10)
    da.proc = None
    da.log.close()
    da.state_path.unlink(missing_ok=True)
    da.state_path.with_name(da.state_path.name + ".journal").unlink(missing_ok=True)
    da.start()
    restarted = time.monotonic()
    # within 5 s by design (a DAAdvert request every second, then the SrvReg); a loaded machine gets slack
    assert wait_until(lambda: found(da.port) == [tv.uri], timeout=10)
    assert time.monotonic() - restarted < 10
    assert "restarted: registering again" in proxy.output()


def test_devices_are_registered_in_every_configured_scope(
        tmp_path: Path, fakes: list[FakeDevice], proxies: list[Saproxy]) -> None:
    (tmp_path / "da").mkdir()
    two_scopes = Slpda(tmp_path / "da", config='[da]\nscopes = ["DEFAULT", "annex"]\n').start()
    try:
        tv = device(fakes)
        proxy = saproxy(proxies, tmp_path, [two_scopes.port], slp='scopes = ["DEFAULT", "annex"]\n')
        proxy.add_device("tv", tv.uri)
        proxy.start()
        for scope in ("DEFAULT", "annex"):
            assert wait_until(lambda s=scope: tv.uri in slptool(two_scopes.port, "--scope", s, "findsrvs",
                                                                "service:sip-device").stdout)
        proxy.stop()  # while the DA still answers its deregistrations
    finally:
        two_scopes.stop()


# Reloading the devices -----------------------------------------------------------------------


def test_a_device_file_added_on_reload_is_registered(tmp_path: Path, da: Slpda, fakes: list[FakeDevice],
                                                     proxies: list[Saproxy]) -> None:
    tv, cam = device(fakes), device(fakes, user="cam")
    proxy = saproxy(proxies, tmp_path, [da.port])
    proxy.add_device("tv", tv.uri)
    proxy.start()
    assert wait_until(lambda: found(da.port) == [tv.uri])
    proxy.add_device("cam", cam.uri)
    proxy.reload()
    assert wait_until(lambda: sorted(found(da.port)) == sorted([tv.uri, cam.uri]))


def test_a_device_file_removed_on_reload_is_deregistered(tmp_path: Path, da: Slpda, fakes: list[FakeDevice],
                                                         proxies: list[Saproxy]) -> None:
    tv = device(fakes)
    proxy = saproxy(proxies, tmp_path, [da.port])
    path = proxy.add_device("tv", tv.uri)
    proxy.start()
    assert wait_until(lambda: found(da.port) == [tv.uri])
    path.unlink()
    proxy.reload()
    assert wait_until(lambda: found(da.port) == [])


def test_a_device_file_changed_on_reload_changes_the_attributes(
        tmp_path: Path, da: Slpda, fakes: list[FakeDevice], proxies: list[Saproxy]) -> None:
    tv = device(fakes)
    proxy = saproxy(proxies, tmp_path, [da.port])
    proxy.add_device("tv", tv.uri, 'room = "living-room"\n')
    proxy.start()
    assert wait_until(lambda: found(da.port, "(room=living-room)") == [tv.uri])
    proxy.add_device("tv", tv.uri, 'room = "kitchen"\n')
    proxy.reload()
    assert wait_until(lambda: found(da.port, "(room=kitchen)") == [tv.uri])
    assert found(da.port, "(room=living-room)") == []


def test_a_broken_device_file_on_reload_keeps_the_running_devices(
        tmp_path: Path, da: Slpda, fakes: list[FakeDevice], proxies: list[Saproxy]) -> None:
    tv = device(fakes)
    proxy = saproxy(proxies, tmp_path, [da.port])
    proxy.add_device("tv", tv.uri)
    proxy.start()
    assert wait_until(lambda: found(da.port) == [tv.uri])
    broken = proxy.add_device("cam", "sip:cam@127.0.0.1:9", "floor = 'first'\n")
    proxy.reload()
    out = proxy.wait_log("reload refused")
    assert f"{broken}: floor: must be an integer" in out
    time.sleep(1.0)
    assert found(da.port) == [tv.uri] and proxy.proc is not None and proxy.proc.poll() is None


def test_a_broken_device_file_fails_the_check_naming_file_and_key(tmp_path: Path, da: Slpda,
                                                                 proxies: list[Saproxy]) -> None:
    proxy = saproxy(proxies, tmp_path, [da.port])
    path = proxy.add_device("tv", "sip:tv@127.0.0.1:9", 'video = "sideways"\n')
    result = proxy.check_config()
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"sipmob-saproxy: {path}: video: must be one of")


def test_a_device_removed_while_the_daemon_was_dead_is_deregistered_at_start(
        tmp_path: Path, da: Slpda, fakes: list[FakeDevice], proxies: list[Saproxy]) -> None:
    tv = device(fakes)
    proxy = saproxy(proxies, tmp_path, [da.port])
    path = proxy.add_device("tv", tv.uri)
    proxy.start()
    assert wait_until(lambda: found(da.port) == [tv.uri])
    assert wait_until(lambda: tv.uri in (tmp_path / "saproxy.json").read_text()
                      if (tmp_path / "saproxy.json").exists() else False)
    proxy.signal(signal.SIGKILL)
    proxy.stop()
    path.unlink()
    proxy.start()
    assert wait_until(lambda: found(da.port) == [])
    assert "no longer configured" in proxy.output()


# Bad answers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "problem"), [
    (b"garbage that is not SDP\r\n", "unparseable SDP"),
    (b"v=0\r\n" + b"a=x:" + b"y" * 20000 + b"\r\n", "ignored (more than"),
    (b"v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 0 RTP/AVP "
     + b" ".join(b"%d" % (i % 128) for i in range(10_000)) + b"\r\n", "ignored (more than"),
], ids=["garbage-sdp", "huge-body", "10000-codecs"])
def test_a_bad_200_is_logged_once_and_the_device_still_registered(
        tmp_path: Path, da: Slpda, fakes: list[FakeDevice], proxies: list[Saproxy],
        body: bytes, problem: str) -> None:
    tv = device(fakes, ok_with(body))
    proxy = saproxy(proxies, tmp_path, [da.port])
    proxy.add_device("tv", tv.uri, 'room = "hall"\n')
    proxy.start()
    assert wait_until(lambda: found(da.port) == [tv.uri])
    assert wait_until(lambda: len(tv.requests) >= 4)
    assert proxy.output().count(problem) == 1


def test_garbage_bytes_in_answer_do_not_make_a_device_up(tmp_path: Path, da: Slpda, fakes: list[FakeDevice],
                                                         proxies: list[Saproxy]) -> None:
    noisy = device(fakes, lambda request: b"\x00\xffnot sip at all")
    proxy = saproxy(proxies, tmp_path, [da.port])
    proxy.add_device("tv", noisy.uri)
    proxy.start()
    proxy.wait_log("device tv is down")
    assert found(da.port) == []


# Stopping and scale ----------------------------------------------------------------------------


def test_a_clean_stop_deregisters_every_device(tmp_path: Path, da: Slpda, fakes: list[FakeDevice],
                                               proxies: list[Saproxy]) -> None:
    devices = [device(fakes, user=f"d{i}") for i in range(3)]
    proxy = saproxy(proxies, tmp_path, [da.port])
    for i, fake in enumerate(devices):
        proxy.add_device(f"d{i}", fake.uri)
    proxy.start()
    assert wait_until(lambda: len(found(da.port)) == 3)
    assert proxy.stop() == 0
    assert found(da.port) == []


def test_a_stop_ends_cleanly_while_no_da_answers(tmp_path: Path, fakes: list[FakeDevice],
                                                 proxies: list[Saproxy]) -> None:
    tv = device(fakes)
    proxy = saproxy(proxies, tmp_path, [free_port()])
    proxy.add_device("tv", tv.uri)
    proxy.start()
    proxy.wait_log("device tv is up")
    assert proxy.stop(timeout=30) == 0
    assert "did not answer the deregistrations" in proxy.output()


def test_fifty_devices_are_all_found_and_all_go_on_stop(tmp_path: Path, da: Slpda, fakes: list[FakeDevice],
                                                        proxies: list[Saproxy]) -> None:
    devices = [device(fakes, user=f"d{i}") for i in range(50)]
    proxy = saproxy(proxies, tmp_path, [da.port])
    for i, fake in enumerate(devices):
        proxy.add_device(f"d{i:02}", fake.uri, f'room = "room-{i % 5}"\n')
    proxy.start()
    assert wait_until(lambda: len(found(da.port)) == 50, timeout=20)
    assert len(found(da.port, "(room=room-3)")) == 10
    assert proxy.stop() == 0
    assert found(da.port) == []


# A real device -----------------------------------------------------------------------------------


@pytest.mark.peer
def test_a_baresip_phone_is_found_and_disappears_when_it_stops(
        tmp_path: Path, da: Slpda, proxies: list[Saproxy]) -> None:
    baresip = pytest.importorskip("tests.peers.baresip")
    if baresip.BARESIP is None:
        pytest.skip("baresip is not installed (apt install baresip-core)")
    phone = baresip.Baresip(tmp_path, user="dev1")
    try:
        proxy = saproxy(proxies, tmp_path, [da.port])
        proxy.add_device("phone", phone.uri, 'room = "study"\n')
        proxy.start()
        assert wait_until(lambda: found(da.port) == [phone.uri])
        attrs = slptool(da.port, "findattrs", phone.uri).stdout
        assert "sip-methods=" in attrs and "audio-codecs=" in attrs
    finally:
        phone.stop()
    assert wait_until(lambda: found(da.port) == [])


def test_a_udp_request_whose_via_says_tcp_is_answered_over_udp_without_a_connection(
        tmp_path: Path, da: Slpda, proxies: list[Saproxy]) -> None:
    """RFC 3261 §18.2.2 / RFC 3581: the answer goes back to the source over the transport the
    request came on; the SA proxy never opens a TCP connection to a port the sender chose."""
    proxy = saproxy(proxies, tmp_path, [da.port]).start()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(1.0)
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(3.0)
        tcp_port = listener.getsockname()[1]
        request = (f"OPTIONS sip:saproxy@127.0.0.1:{proxy.port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/TCP 127.0.0.1:{tcp_port};branch=z9hG4bKviatcp{tcp_port}\r\n"
                   "Max-Forwards: 70\r\nTo: <sip:saproxy@127.0.0.1>\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\n"
                   "Call-ID: via-tcp\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        udp.sendto(request.encode(), ("127.0.0.1", proxy.port))
        reply = udp.recv(65535)
        assert reply.startswith(b"SIP/2.0 200 ") and b"SIP/2.0/UDP" in reply
        with pytest.raises(TimeoutError):
            listener.accept()
