"""The .deb packages, installed and run by a real systemd in a throwaway Debian 12 container.

The tests share one container and run in file order, as an administrator would: install, start,
query, reload, break the configuration, kill, stop, upgrade, purge. Each checks one behaviour of the
packaging or of the daemons under systemd. A new daemon joins by adding a line to DAEMONS (plus,
if it answers a protocol, a probe test of its own).

Needs root, systemd-nspawn and mmdebstrap (`scripts/deps --build`), and network access to the
Debian mirror the first time only (the root filesystem is cached in /var/cache/sipmob-test). The
container has no network but its own loopback, so nothing here reaches outside it.

    .venv/bin/python -m pytest -s tests/install     # -s shows the exposure figures and timings
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.install.container import Container, rootfs_tarball, runtime_depends

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "build" / "install-test"
UPGRADE_VERSION = "0.1.0+upgradetest1"


@dataclasses.dataclass(frozen=True)
class Daemon:
    package: str  # also the unit's and the program's name
    config: str  # the conffile, /etc/sipmob/<name>.toml
    state: str | None  # what the daemon keeps in StateDirectory= (None: it keeps nothing)

    @property
    def unit(self) -> str:
        return f"{self.package}.service"


DAEMONS = [
    Daemon("sipmob-slpda", "/etc/sipmob/slpda.toml", "/var/lib/sipmob/slpda.json"),
    Daemon("sipmob-saproxy", "/etc/sipmob/saproxy.toml", "/var/lib/sipmob/saproxy.json"),
    Daemon("sipmob-web", "/etc/sipmob/web.toml", "/var/lib/sipmob/web-password"),
    Daemon("sipmob-transcoder", "/etc/sipmob/transcoder.toml", None),
    Daemon("sipmob-mdsm", "/etc/sipmob/mdsm.toml", "/var/lib/sipmob/mdsm.sqlite"),
]
EXPOSURE_LIMIT = 2.0

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to boot a container with systemd-nspawn"),
    pytest.mark.skipif(not (shutil.which("systemd-nspawn") and shutil.which("mmdebstrap")),
                       reason="needs systemd-nspawn and mmdebstrap: run scripts/deps --build"),
]

by_daemon = pytest.mark.parametrize("daemon", DAEMONS, ids=[d.package for d in DAEMONS])


def build(out: Path, *extra: str) -> list[Path]:
    result = subprocess.run([str(REPO / "scripts" / "build-debs"), "--out", str(out), *extra],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"scripts/build-debs {' '.join(extra)} failed:\n{result.stderr[-4000:]}")
    print(f"\nbuild-debs {' '.join(extra)}:\n{result.stderr[-2000:]}")
    return sorted(out.glob("*.deb"))


@pytest.fixture(scope="module")
def debs() -> dict[str, list[Path]]:
    """The packages as they are, and rebuilt with a higher version for the upgrade."""
    started = time.monotonic()
    first = build(WORK / "debs")  # with lintian: any error or warning fails here
    upgrade = build(WORK / "debs-upgrade", "--version", UPGRADE_VERSION, "--no-lintian")
    print(f"both builds: {time.monotonic() - started:.1f} s")
    return {"first": first, "upgrade": upgrade}


@pytest.fixture(scope="module")
def box(debs: dict[str, list[Path]]) -> Iterator[Container]:
    started = time.monotonic()
    tarball = rootfs_tarball(runtime_depends(debs["first"]))
    print(f"root filesystem {tarball.name}: {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    container = Container(tarball, {"/debs": WORK / "debs", "/debs-upgrade": WORK / "debs-upgrade",
                                    "/probe": Path(__file__).parent})
    try:
        container.boot()
        print(f"container unpacked and booted: {time.monotonic() - started:.1f} s")
        yield container
    finally:
        container.close()


@pytest.fixture(autouse=True)
def explain_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """On failure, show what systemd and the journal say about every daemon."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed or "box" not in request.fixturenames:
        return
    container: Container = request.getfixturevalue("box")
    for daemon in DAEMONS:
        for argv in (["systemctl", "status", "--no-pager", "-l", daemon.unit],
                     ["journalctl", "--no-pager", "-n", "60", "-u", daemon.unit]):
            out = container.run(argv, check=False, timeout=20)
            print(f"\n$ {' '.join(argv)}\n{out.stdout}{out.stderr}")


def show(box: Container, unit: str) -> dict[str, str]:
    props = "ActiveState,SubState,MainPID,StatusText,Result,ExecMainStatus,NRestarts"
    out = box.run(["systemctl", "show", "-p", props, unit]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_for(what: str, predicate, timeout: float = 20.0, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def probe(box: Container, *args: str) -> dict[str, object]:
    out = box.run(["python3", "/probe/slp_probe.py", *args], timeout=20)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# Installation ---------------------------------------------------------------------------------


def test_packages_install_offline_with_dependencies_from_debian(box: Container) -> None:
    # dpkg refuses a package whose dependencies are missing: the root filesystem must hold them all,
    # since there is no network to fetch them.
    box.sh("dpkg -i /debs/*.deb", timeout=180)
    listed = box.run(["dpkg-query", "-W", "-f", "${Package} ${Status}\n", "sipmob", "sipmob-slpda",
                      "python3-sipmob"]).stdout
    assert listed.count("install ok installed") == 3, listed


def test_system_user_is_created(box: Container) -> None:
    entry = box.run(["getent", "passwd", "sipmob"], check=False).stdout
    assert entry.startswith("sipmob:"), "no sipmob user after installation"
    uid = int(entry.split(":")[2])
    assert uid < 1000, f"sipmob is not a system user: uid {uid}"


@by_daemon
def test_unit_is_enabled_and_started_on_install(box: Container, daemon: Daemon) -> None:
    assert box.run(["systemctl", "is-enabled", daemon.unit], check=False).stdout.strip() == "enabled"
    state = wait_for(f"{daemon.unit} to be active",
                     lambda: (s := show(box, daemon.unit))["ActiveState"] == "active" and s)
    assert state["SubState"] == "running"


@by_daemon
def test_unit_passes_systemd_analyze_verify(box: Container, daemon: Daemon) -> None:
    # verify warns with exit status 0: any output at all is a finding.
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={box.root_view}",
                             f"/lib/systemd/system/{daemon.unit}"],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@by_daemon
def test_unit_exposure_is_at_most_2(box: Container, daemon: Daemon) -> None:
    out = box.run(["systemd-analyze", "security", "--no-pager", daemon.unit]).stdout
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    print(f"\n{daemon.unit}: exposure {exposure}")
    assert exposure <= EXPOSURE_LIMIT, out


@by_daemon
def test_configuration_is_a_conffile(box: Container, daemon: Daemon) -> None:
    conffiles = box.run(["dpkg-query", "-W", "-f", "${Conffiles}", daemon.package]).stdout
    assert daemon.config in conffiles.split()


# Running under systemd ------------------------------------------------------------------------


@by_daemon
def test_start_returns_only_once_the_daemon_serves(box: Container, daemon: Daemon) -> None:
    box.run(["systemctl", "stop", daemon.unit])
    box.run(["systemctl", "start", daemon.unit], timeout=60)
    # Type=notify: `start` returns at READY=1, so one request at once, without retrying, must be answered.
    reply = probe(box, "--timeout", "2")
    assert show(box, daemon.unit)["SubState"] == "running"
    assert reply["type"] == "DAAdvert"


@by_daemon
def test_daemon_runs_as_the_sipmob_user(box: Container, daemon: Daemon) -> None:
    pid = show(box, daemon.unit)["MainPID"]
    assert box.run(["ps", "-o", "user=", "-p", pid]).stdout.strip() == "sipmob"


@by_daemon
def test_status_text_shows_in_systemctl_status(box: Container, daemon: Daemon) -> None:
    text = show(box, daemon.unit)["StatusText"]
    assert text, "the daemon sent no STATUS="
    status = box.run(["systemctl", "status", "--no-pager", daemon.unit]).stdout
    assert f'Status: "{text}"' in status


def test_slpda_answers_srvrqst_for_directory_agent_with_daadvert(box: Container) -> None:
    reply = probe(box)
    assert reply["type"] == "DAAdvert"
    assert reply["error"] == 0
    assert reply["xid"] == 4242
    assert str(reply["url"]).startswith("service:directory-agent://")
    assert "DEFAULT" in str(reply["scope_list"]).split(",")


def test_saproxy_key_is_made_at_install_and_used_by_both_daemons(box: Container) -> None:
    out = box.run(["stat", "-c", "%a %U %G", "/etc/sipmob/keys/saproxy.key", "/etc/sipmob/keys"]).stdout
    assert out.split("\n")[:2] == ["600 sipmob sipmob", "750 root sipmob"], out
    assert len(box.run(["cat", "/etc/sipmob/keys/saproxy.key"]).stdout.strip()) >= 32
    wait_for("sipmob-slpda to read the key", lambda: re.search(
        r"registrants with a key: [^;]*\bsaproxy\b", box.run(
            ["journalctl", "--no-pager", "-u", "sipmob-slpda.service"]).stdout))
    saproxy_log = box.run(["journalctl", "--no-pager", "-u", "sipmob-saproxy.service"]).stdout
    assert "probing" in saproxy_log and "unsigned" not in saproxy_log


def slptool(box: Container, *args: str) -> subprocess.CompletedProcess[str]:
    return box.run(["python3", "-m", "sipmob.service.slptool", "--da", "127.0.0.1", "--timeout", "5",
                    *args], check=False, timeout=30)


def test_mdsm_and_transcoder_keys_are_made_at_install_and_the_da_trusts_them(box: Container) -> None:
    keys = ["/etc/sipmob/keys/mdsm.key", "/etc/sipmob/keys/transcoder.key"]
    out = box.run(["stat", "-c", "%a %U %G", *keys]).stdout
    assert out.split("\n")[:2] == ["600 sipmob sipmob"] * 2, out
    assert all(len(box.run(["cat", key]).stdout.strip()) >= 32 for key in keys)

    def da_log() -> str:
        return box.run(["journalctl", "--no-pager", "-o", "cat", "-u", "sipmob-slpda.service"]).stdout

    wait_for("sipmob-slpda to know and trust both keys", lambda: re.search(
        r"registrants with a key: mdsm, saproxy, transcoder; trusted: mdsm, saproxy, transcoder", da_log()))
    # The transcoder's registration is signed (the DA names its SPI), trusted, and no one else may
    # remove it, not even from the box itself.
    url = wait_for("the transcoder's signed registration",
                   lambda: (m := re.search(r"registered (sip:transcoder@\S+) .* as transcoder", da_log()))
                   and m.group(1))
    assert "trusted" in slptool(box, "findattrs", url).stdout
    refused = slptool(box, "deregister", url)
    assert refused.returncode == 1 and "AUTHENTICATION_ABSENT" in refused.stderr, refused
    # The MDSM's virtual devices likewise, once it has one.
    unit, config = "sipmob-mdsm.service", "/etc/sipmob/mdsm.toml"
    saved = box.run(["cat", config]).stdout
    box.run(["tee", "-a", config], input='\n[[system]]\nname = "signed"\n'
            'members = ["sip:speaker@127.0.0.1:5092"]\n')
    try:
        box.run(["systemctl", "reload", unit])
        url = wait_for("the MDSM's signed registration", lambda: (
            m := re.search(r"registered (sip:signed@\S+) .* as mdsm", da_log())) and m.group(1))
        assert "trusted" in slptool(box, "findattrs", url).stdout
        refused = slptool(box, "deregister", url)
        assert refused.returncode == 1 and "AUTHENTICATION_ABSENT" in refused.stderr, refused
    finally:
        box.run(["tee", config], input=saved)
        box.run(["systemctl", "reload", unit], check=False)
    # Removed from the configuration, the MDSM's own signed deregistration is accepted.
    wait_for("the MDSM to deregister it",
             lambda: re.search(r"deregistered +sip:signed@\S+ .* as mdsm", da_log()))


def test_transcoder_converts_pcmu_to_opus_under_its_unit(box: Container) -> None:
    # PyAV and libavcodec under MemoryDenyWriteExecute and the system call filter, as installed.
    out = box.run(["python3", "/probe/transcoder_probe.py", "--timeout", "5"], timeout=30)
    reply = json.loads(out.stdout)
    assert reply["status"] == 200 and reply["codecs"] == ["PCMU/8000", "opus/48000/2"]
    assert reply["received"] >= 20 and reply["payload_types"] == [111] and reply["bye"] == 200


LO_EGRESS = ("from pyroute2 import IPRoute\n"
             "with IPRoute() as ip:\n"
             "    lo = ip.link_lookup(ifname='lo')[0]\n"
             "    ip.addr('{op}', index=lo, address='192.0.2.1', prefixlen=32, scope=0)\n"
             "    ip.route('{op}', dst='0.0.0.0/0', oif=lo)\n")


def test_phone_with_an_egress_list_watches_netlink_under_its_unit(box: Container) -> None:
    # The phone is installed but not enabled. Given an egress list it must start under its unit's
    # sandbox (RestrictAddressFamilies= with AF_NETLINK) and learn its egress from the kernel: lo,
    # given a global address and a default route (the container's own namespace, no network).
    unit, config, egress = "sipmob-phone.service", "/etc/sipmob/mn.toml", "/etc/sipmob/egress.toml"
    saved = {path: box.run(["cat", path]).stdout for path in (config, egress)}
    box.run(["python3", "-c", LO_EGRESS.format(op="add")])
    box.run(["sed", "-i", 's|^#egress = ""|egress = "/etc/sipmob/egress.toml"|', config])
    box.run(["sed", "-i", "s|^#port = 5060|port = 5066|", config])
    box.run(["tee", "-a", egress], input='\n[[egress]]\nname = "loop"\ninterface = "lo"\n')
    last: list[str] = []
    try:
        box.run(["systemctl", "start", unit], timeout=60)
        assert show(box, unit)["SubState"] == "running"
        deadline = time.monotonic() + 30
        while "loop  up  192.0.2.1" not in (last[-1] if last else "") and time.monotonic() < deadline:
            time.sleep(0.5)
            last.append(box.run(["sipmob", "--control", "/run/sipmob/mn.sock", "egress"], check=False,
                                timeout=20).stdout)
    finally:
        journal = box.run(["journalctl", "--no-pager", "-u", unit], check=False).stdout
        box.run(["systemctl", "stop", unit], check=False, timeout=60)
        box.run(["systemctl", "reset-failed", unit], check=False)
        for path, text in saved.items():
            box.run(["tee", path], input=text)
        box.run(["python3", "-c", LO_EGRESS.format(op="del")], check=False)
    assert "loop  up  192.0.2.1" in last[-1], last[-1:] + [journal]
    assert "Address family not supported" not in journal and "Traceback" not in journal, journal


def test_phone_unit_exposure_is_at_most_2(box: Container) -> None:
    out = box.run(["systemd-analyze", "security", "--no-pager", "sipmob-phone.service"]).stdout
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    print(f"\nsipmob-phone.service: exposure {exposure}")
    assert exposure <= EXPOSURE_LIMIT, out


def test_slpda_reload_applies_edited_scopes(box: Container) -> None:
    pid = show(box, "sipmob-slpda.service")["MainPID"]
    # The shipped file lists every key commented out with its default, scopes under [da].
    box.sh("sed -i 's/^#scopes = .*/scopes = [\"DEFAULT\", \"livingroom\"]/' /etc/sipmob/slpda.toml")
    assert 'scopes = ["DEFAULT", "livingroom"]' in box.run(["cat", "/etc/sipmob/slpda.toml"]).stdout
    box.run(["systemctl", "reload", "sipmob-slpda.service"])
    reply = wait_for("a DAAdvert listing the new scope",
                     lambda: (r := probe(box, "--scope", "livingroom"))["type"] == "DAAdvert"
                     and "livingroom" in str(r["scope_list"]).split(",") and r)
    assert "DEFAULT" in str(reply["scope_list"]).split(",")
    assert show(box, "sipmob-slpda.service")["MainPID"] == pid, "reload restarted the daemon"


@by_daemon
def test_broken_configuration_fails_start_with_a_clear_message(box: Container, daemon: Daemon) -> None:
    saved = box.run(["cat", daemon.config]).stdout
    box.run(["systemctl", "stop", daemon.unit])
    # At the top: appended, the key would land in the file's last table.
    box.run(["sed", "-i", "1i no_such_key = 1", daemon.config])
    try:
        started = box.run(["systemctl", "start", daemon.unit], check=False, timeout=60)
        assert started.returncode != 0, "started with a broken configuration"
        # journald takes the line from the stream asynchronously: give it a moment.
        wait_for("the problem in the journal", lambda: f"{daemon.config}: no_such_key: unknown key"
                 in box.run(["journalctl", "--no-pager", "-u", daemon.unit]).stdout, timeout=10)
    finally:
        box.run(["systemctl", "stop", daemon.unit], check=False)
        box.run(["tee", daemon.config], input=saved)
        box.run(["systemctl", "reset-failed", daemon.unit], check=False)
    box.run(["systemctl", "start", daemon.unit], timeout=60)


@by_daemon
def test_killed_daemon_is_restarted(box: Container, daemon: Daemon) -> None:
    before = show(box, daemon.unit)
    assert before["ActiveState"] == "active"
    box.run(["kill", "-9", before["MainPID"]])
    after = wait_for("a restart", lambda: (s := show(box, daemon.unit))["ActiveState"] == "active"
                     and s["MainPID"] not in ("0", before["MainPID"]) and s)
    assert int(after["NRestarts"]) > int(before["NRestarts"])


def test_mdsm_call_survives_kill_9_and_the_restart_by_systemd(box: Container) -> None:
    # A call held through the MDSM (mdsm_probe.py: CN, member and referrer in one process in the
    # background); kill -9, systemd restarts the daemon, and it answers the CN's re-INVITE and BYE
    # in the restored dialog and ends the member's leg.
    unit, config = "sipmob-mdsm.service", "/etc/sipmob/mdsm.toml"
    saved = box.run(["cat", config]).stdout
    box.run(["tee", "-a", config], input='\n[[system]]\nname = "held"\n'
            'members = ["sip:speaker@127.0.0.1:5092"]\nowners = ["sip:probe@127.0.0.1"]\n')
    box.run(["systemctl", "reload", unit])
    box.run(["rm", "-rf", "/run/mdsm-probe"])
    try:
        wait_for("the virtual device", lambda: "1 virtual device" in show(box, unit)["StatusText"])
        box.run(["systemd-run", "--unit", "mdsm-probe", "--collect", "python3", "/probe/mdsm_probe.py",
                 "--dir", "/run/mdsm-probe", "--timeout", "90"])
        wait_for("the call held through the MDSM",
                 lambda: box.run(["cat", "/run/mdsm-probe/state"], check=False).stdout == "held", timeout=30)
        before = show(box, unit)
        assert "1 call" in before["StatusText"]
        box.run(["kill", "-9", before["MainPID"]])
        wait_for("a restart", lambda: (s := show(box, unit))["ActiveState"] == "active"
                 and s["MainPID"] not in ("0", before["MainPID"]) and "1 call" in s["StatusText"])
        box.run(["touch", "/run/mdsm-probe/go"])
        out = wait_for("the probe's result",
                       lambda: box.run(["cat", "/run/mdsm-probe/result"], check=False).stdout, timeout=60)
        assert json.loads(out) == {"held": True, "reinvite": 200, "member_bye": True}
    finally:
        box.run(["systemctl", "stop", "mdsm-probe.service"], check=False)
        box.run(["tee", config], input=saved)
        box.run(["systemctl", "reload", unit], check=False)


@by_daemon
def test_stop_is_clean(box: Container, daemon: Daemon) -> None:
    pid = show(box, daemon.unit)["MainPID"]
    box.run(["systemctl", "stop", daemon.unit], timeout=60)
    state = show(box, daemon.unit)
    assert (state["ActiveState"], state["Result"], state["ExecMainStatus"]) == ("inactive", "success", "0")
    journal = box.run(["journalctl", "--no-pager", "-o", "cat", f"_PID={pid}"]).stdout
    assert f"{daemon.package} stopping" in journal
    box.run(["systemctl", "start", daemon.unit], timeout=60)


# Upgrade and purge ----------------------------------------------------------------------------


@by_daemon
def test_upgrade_keeps_an_edited_conffile_and_restarts(box: Container, daemon: Daemon) -> None:
    box.sh(f"echo '# edited before the upgrade' >> {daemon.config}")
    edited = box.run(["cat", daemon.config]).stdout
    pid = show(box, daemon.unit)["MainPID"]
    box.sh("dpkg -i /debs-upgrade/*.deb", timeout=180)
    version = box.run(["dpkg-query", "-W", "-f", "${Version}", daemon.package]).stdout
    assert version == UPGRADE_VERSION
    assert box.run(["cat", daemon.config]).stdout == edited
    state = wait_for("the upgraded daemon", lambda: (s := show(box, daemon.unit))["SubState"] == "running"
                     and s)
    assert state["MainPID"] != pid, "the daemon was not restarted on the new code"


def test_web_serves_its_login_page_on_loopback_and_takes_a_password(box: Container) -> None:
    fetch = ("import urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8080/login', timeout=5); "
             "print(r.status, b'password' in r.read())")
    assert box.run(["python3", "-c", fetch], timeout=20).stdout.split() == ["200", "True"]
    box.run(["sipmob", "web-password", "--stdin"], input="install test password\n", timeout=30)
    mode_owner = box.run(["stat", "-c", "%a %U", "/var/lib/sipmob/web-password"]).stdout.split()
    assert mode_owner == ["600", "sipmob"]


def test_purge_removes_configuration_and_state(box: Container) -> None:
    # Every daemon has been stopped at least once above, and writes its state when it stops.
    # sipmob-web's state is the password file test_web_serves... wrote.
    missing = [d.state for d in DAEMONS if d.state and not (box.root_view / d.state.lstrip("/")).exists()]
    assert missing == [], "no state to purge"
    box.run(["dpkg", "--purge", "sipmob", *(d.package for d in DAEMONS), "python3-sipmob"], timeout=120)
    leftovers = [path for d in DAEMONS for path in (d.config, d.state)
                 if path and (box.root_view / path.lstrip("/")).exists()]
    leftovers += [p for p in ("/etc/sipmob", "/var/lib/sipmob") if (box.root_view / p.lstrip("/")).exists()]
    assert leftovers == []
