"""The web page in a real browser: headless Chromium logs in, sees the rooms, presses "Move here"
on a live call, and sees a device appear without a reload.

The home: the real `sipmob-slpda`, baresip as the other party (CN) and as a desk phone registered
in the DA, `sipmob phone` holding the call, `sipmob-web` in front. Evidence that the media moved
does not come from the page: the phone's own RTP counters stop growing (the CN now sends to the
desk phone) and the desk phone's recording holds the CN's tone.

With SIPMOB_SCREENSHOT=PATH the page, as the browser shows it after the move, is saved there
(docs/web.png is made this way).
"""

from __future__ import annotations

import os
import sys
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers.baresip import BARESIP, Baresip

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "slpda"), str(HERE.parent / "mn"), str(HERE)]
from browser import AVAILABLE, WHY_NOT, chromium  # noqa: E402
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402
from web_process import PASSWORD, Web  # noqa: E402

pytestmark = [pytest.mark.peer, pytest.mark.skipif(not AVAILABLE, reason=WHY_NOT),
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)")]

SPEAKER = "sip:speaker@127.0.0.1:5997"  # registered during the test; nothing answers there
DESK = "(name=Desk phone),(room=study),(media=audio-sendrecv),(audio-codecs=PCMU,PCMA)"
TV = ("(name=Living room TV),(room=living-room),(media=audio-recvonly,video-recvonly),"
      "(audio-codecs=PCMU),(video-codecs=H264,VP8),(display-width=1920),(display-height=1080)")


@pytest.fixture
def home(tmp_path: Path) -> Iterator[dict[str, Any]]:
    (tmp_path / "da").mkdir()
    da = Slpda(tmp_path / "da").start()
    started: list[Any] = []
    try:
        cn = Baresip(tmp_path, user="cn")
        started.append(cn)
        desk = Baresip(tmp_path, user="desk", record_dir=tmp_path / "desk-rec")
        started.append(desk)
        with da.client() as slp:
            slp.register(desk.uri, DESK)
            slp.register("sip:tv@127.0.0.1:5998", TV)
        phone = Phone(tmp_path, f"{HOST}:{da.port}")
        started.append(phone)
        web = Web(tmp_path, f"{HOST}:{da.port}", phone.control, poll=0.5)
        started.append(web)
        browser = chromium(tmp_path / "profile")
        started.append(browser)
        yield {"da": da, "cn": cn, "desk": desk, "phone": phone, "web": web, "browser": browser,
               "dir": tmp_path}
    finally:
        for thing in reversed(started):
            if hasattr(thing, "quit"):
                thing.quit()
            else:
                thing.stop()
        da.stop()


def loud(directory: Path) -> bool:
    """Whether a WAV baresip wrote of what it received holds a loud sample (the CN's tone)."""
    for path in directory.glob("*.wav"):
        data = path.read_bytes()
        start = data.find(b"data")
        body = data[start + 8:] if start >= 0 else b""
        samples = array("h", body[:len(body) // 2 * 2])
        if samples and max(abs(s) for s in samples) > 1000:
            return True
    return False


def wait_for(browser: Any, css: str, timeout: float = 10.0) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))


def test_log_in_move_a_call_here_and_see_a_device_appear(home: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    browser, web, phone, cn, desk = home["browser"], home["web"], home["phone"], home["cn"], home["desk"]
    done = phone.sipmob("call", cn.uri)
    assert done.returncode == 0, done.stderr + phone.output()
    assert until(lambda: phone.received() > 20), "no RTP from the CN"

    browser.get(web.url + "/")
    assert browser.current_url.endswith("/login")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    wait_for(browser, '[data-room="study"]')
    rooms = [e.get_attribute("data-room") for e in browser.find_elements(By.CSS_SELECTOR, "[data-room]")]
    assert rooms == ["living-room", "study"]
    wait_for(browser, '#live.on')
    browser.execute_script("window.sipmobNoReload = true")

    move = wait_for(browser, f'button[data-action="transfer"][data-to="{desk.uri}"]')
    move.click()
    wait_for(browser, '#actions li[data-state="done"]', timeout=30)
    assert "Desk phone" in browser.find_element(By.CSS_SELECTOR, "[data-call] [data-where]").text

    # The media really moved: the CN stopped sending to the phone, and the desk phone hears it.
    time.sleep(1.0)
    before = phone.received()
    time.sleep(1.0)
    assert phone.received() - before < 5, "the CN still sends its audio to the phone"
    heard = until(lambda: loud(home["dir"] / "desk-rec"), timeout=10)
    assert heard, "the desk phone did not get the CN's audio"

    # A device the DA learns now shows up without a reload.
    with home["da"].client() as slp:
        slp.register(SPEAKER, "(name=Kitchen speaker),(room=kitchen),(media=audio-recvonly),"
                              "(audio-codecs=PCMU)")
    wait_for(browser, f'[data-device="{SPEAKER}"]', timeout=5)
    assert browser.execute_script("return window.sipmobNoReload") is True

    shot = os.environ.get("SIPMOB_SCREENSHOT")
    if shot:
        browser.set_window_size(480, 1320)
        time.sleep(0.3)
        browser.save_screenshot(shot)

    bring = browser.find_element(By.CSS_SELECTOR, 'button[data-action="retrieve"]')
    bring.click()
    wait_for(browser, '#actions li[data-state="done"]:first-child', timeout=30)
    start = phone.received()
    assert until(lambda: phone.received() > start + 20), "the CN's audio did not come back to the phone"

    # A device that does not answer: the failure and its reason show, the call stays as it was.
    browser.find_element(By.CSS_SELECTOR, f'button[data-action="transfer"][data-to="{SPEAKER}"]').click()
    failed = wait_for(browser, '#actions li[data-state="failed"]', timeout=30)
    assert "failed" in failed.text and "Kitchen speaker" in failed.text, failed.text
    assert "this phone" in browser.find_element(By.CSS_SELECTOR, "[data-call] [data-where]").text

    # A device that leaves the DA shows as down, still without a reload.
    with home["da"].client() as slp:
        slp.deregister(SPEAKER)
    wait_for(browser, f'.device.down[data-device="{SPEAKER}"]', timeout=5)

    start = len(cn.events)
    browser.find_element(By.CSS_SELECTOR, 'button[data-action="hangup"]').click()
    cn.wait_call_event("CALL_CLOSED", timeout=10, start=start)
    wait_for(browser, "#calls .empty", timeout=10)
    assert browser.execute_script("return window.sipmobNoReload") is True


def test_a_call_is_placed_and_hung_up_from_the_page(home: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    browser, web, phone, cn = home["browser"], home["web"], home["phone"], home["cn"]
    browser.get(web.url + "/login")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    wait_for(browser, "#live.on")
    browser.find_element(By.ID, "dial-uri").send_keys(cn.uri)
    browser.find_element(By.ID, "dial-button").click()
    cn.wait_call_event("CALL_ESTABLISHED", timeout=10)
    wait_for(browser, '[data-call][data-state="confirmed"]', timeout=10)
    assert until(lambda: phone.received() > 20), "no RTP from the CN"
    start = len(cn.events)
    browser.find_element(By.CSS_SELECTOR, 'button[data-action="hangup"]').click()
    cn.wait_call_event("CALL_CLOSED", timeout=10, start=start)
    assert until(lambda: phone.calls() == [])


def test_a_ringing_call_is_answered_from_the_page(home: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    browser, web, phone, cn = home["browser"], home["web"], home["phone"], home["cn"]
    browser.get(web.url + "/login")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    wait_for(browser, "#live.on")
    cn.dial(phone.uri)
    card = wait_for(browser, '[data-call][data-state="ringing"]', timeout=10)
    assert "sip:cn@127.0.0.1" in card.text
    card.find_element(By.CSS_SELECTOR, 'button[data-action="answer"]').click()
    cn.wait_call_event("CALL_ESTABLISHED", timeout=10)
    assert until(lambda: phone.calls() and phone.received() > 20), "no RTP after answering from the page"
    wait_for(browser, '[data-call][data-state="confirmed"]', timeout=10)


@pytest.fixture
def video_home(tmp_path: Path) -> Iterator[dict[str, Any]]:
    from test_phone_video import FAKEVIDEO, VideoBaresip, VideoDevice

    if not FAKEVIDEO.exists():
        pytest.skip("baresip's fakevideo module is not installed")
    (tmp_path / "da").mkdir()
    da = Slpda(tmp_path / "da").start()
    started: list[Any] = []
    try:
        cn = VideoBaresip(tmp_path, user="cn")
        started.append(cn)
        screen, cam = VideoDevice("screen"), VideoDevice("cam")
        started += [screen, cam]
        with da.client() as slp:
            slp.register(screen.uri, "(name=Screen),(room=living-room),(media=video-sendrecv),"
                                     "(video-codecs=VP8)")
            slp.register(cam.uri, "(name=Camera),(room=hall),(media=video-sendonly),(video-codecs=VP8)")
        phone = Phone(tmp_path, f"{HOST}:{da.port}", auto_answer=True)
        started.append(phone)
        cn.dial(phone.uri)
        video = until(lambda: phone.calls() and phone.calls()[0]["video_received"] > 5)
        assert video, "no video from the CN"
        web = Web(tmp_path, f"{HOST}:{da.port}", phone.control)
        started.append(web)
        browser = chromium(tmp_path / "profile")
        started.append(browser)
        yield {"phone": phone, "screen": screen, "cam": cam, "web": web, "browser": browser}
    finally:
        for thing in reversed(started):
            if hasattr(thing, "quit"):
                thing.quit()
            else:
                thing.stop()
        da.stop()


def test_split_video_to_a_screen_from_a_camera_from_the_page(video_home: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser, web, phone = video_home["browser"], video_home["web"], video_home["phone"]
    screen, cam = video_home["screen"], video_home["cam"]
    browser.get(web.url + "/login")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    wait_for(browser, 'select[data-split="out"]')
    Select(browser.find_element(By.CSS_SELECTOR, 'select[data-split="out"]')).select_by_value(screen.uri)
    Select(browser.find_element(By.CSS_SELECTOR, 'select[data-split="in"]')).select_by_value(cam.uri)
    browser.find_element(By.CSS_SELECTOR, 'button[data-action="split"]').click()
    done = wait_for(browser, '#actions li[data-state="done"]', timeout=30)
    assert done.text == "call 1: audio on this phone; video out on Screen, video in from Camera"
    assert screen.probe.wait_for_packets(5, 5.0), "the CN's video did not reach the screen"
    assert cam.probe.packets == []
    stream = phone.calls()[0]["streams"][1]
    assert (stream["media"], stream["where"]) == ("video", "out on Screen, in from Camera")
