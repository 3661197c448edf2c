"""The main job, on loopback: start the daemon set with the defaults in etc/, then walk through
what a household sees: devices found by room and capability, and a call moved from the phone to a
device in one room, back, to a device in another room, and back (Mobile Node Control mode); then
a second scenario in Session Handoff mode: a call handed off to a mobility-enhanced TV (a second
`sipmob phone`) that takes it over, and retrieved by nested REFER (PJSIP as the remote party); and a
third: a call handed to the living room as one virtual device of `sipmob-mdsm` (a speaker, a TV and
a camera), through a kill -9 of the MDSM, and taken back.

The devices and the remote party are baresip, an independent SIP phone, so what moves the call is
sipmob's own phone (`sipmob phone`) talking to ordinary phones, exactly as in a home.

Every process is started here and stopped here by PID; state goes to a temporary directory, so the
demo leaves nothing behind and never touches /var/lib/sipmob.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "daemons")}
sys.path[:0] = [str(ROOT), str(ROOT / "daemons")]

from tests.peers.baresip import Baresip  # noqa: E402  (an independent phone, driven over its control port)


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


class Daemons:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.cleanups: list[object] = []

    def start(self, name: str, args: list[str], ready: str | None = None) -> subprocess.Popen[bytes]:
        path = self.workdir / f"{name}.log"
        offset = path.stat().st_size if path.exists() else 0
        with open(path, "ab") as log:
            proc = subprocess.Popen([PY, "-m", *args], env={**ENV, "STATE_DIRECTORY": str(self.workdir)},
                                    stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((name, proc))
        deadline = time.monotonic() + 15
        while ready and time.monotonic() < deadline:
            if proc.poll() is not None:
                sys.exit(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            if ready in self.log(name)[offset:]:
                break
            time.sleep(0.05)
        else:
            if ready:
                sys.exit(f"{name} did not become ready:\n{self.log(name)}")
        print(f"   {name} running (pid {proc.pid}), log {self.workdir / (name + '.log')}")
        return proc

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()  # type: ignore[operator]
        self.cleanups.clear()
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            print(f"   {name} stopped (exit {proc.returncode})")


def slptool(da: str, *args: str, check: bool = True) -> str:
    result = subprocess.run([PY, "-m", "sipmob.service.slptool", "--da", da, *args], env=ENV,
                            capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        sys.exit(f"slptool {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


DEVICES = [
    ("sip:tv@127.0.0.1:5071", "(name=tv),(room=living-room),(floor=0),(media=video-recvonly,audio-recvonly),"
     "(video-codecs=H263,H264),(audio-codecs=PCMU,PCMA),(image-formats=CIF:1,QCIF:1),(mobility=basic)"),
    ("sip:speaker@127.0.0.1:5072", "(name=speaker),(room=living-room),(floor=0),(media=audio-sendrecv),"
     "(audio-codecs=PCMU,PCMA,G722),(mobility=basic)"),
    ("sip:camera@127.0.0.1:5073", "(name=camera),(room=living-room),(floor=0),(media=video-sendonly),"
     "(video-codecs=H263),(mobility=basic)"),
    ("sip:desk@127.0.0.1:5074", "(name=desk),(room=study),(floor=1),(media=audio-sendrecv),"
     "(audio-codecs=PCMU),(mobility=basic)"),
]


def sipmob(workdir: Path, da: str, *args: str) -> str:
    result = subprocess.run([PY, "-m", "sipmob.mn.cli", "--config", str(ROOT / "etc/sipmob/mn.toml"),
                             "--control", str(workdir / "mn.sock"), "--da", da, *args],
                            env=ENV, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        sys.exit(f"sipmob {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.rstrip()


def show(text: str) -> None:
    print("   " + text.replace("\n", "\n   "), flush=True)


def rtp_received(workdir: Path, da: str, call: str | None = None) -> int:
    import json

    calls = json.loads(sipmob(workdir, da, "calls", "--json"))
    return int(next(c for c in calls if call is None or c["id"] == call)["rtp_received"])


def call_demo(daemons: Daemons, da: str, workdir: Path) -> None:
    step("Starting the phones of the home: baresip as the remote party and as two basic devices")
    peers = [Baresip(workdir, user="alice"), Baresip(workdir, user="speaker"), Baresip(workdir, user="desk")]
    daemons.cleanups.append(lambda: [peer.stop() for peer in peers])
    alice, speaker, desk = peers
    for peer, what in zip(peers, ("the remote party", "living-room speaker", "study desk phone"),
                          strict=True):
        print(f"   {peer.uri}  {what} (pid {peer.proc.pid})")

    step("Starting the SA proxy, which registers basic devices from devices.d/ after probing them")
    devices = workdir / "devices.d"
    devices.mkdir()
    (devices / "speaker.toml").write_text(
        f'uri = "{speaker.uri}"\nname = "Living-room speaker"\nroom = "living-room"\nfloor = 0\n'
        'audio = "sendrecv"\n')
    (devices / "desk.toml").write_text(
        f'uri = "{desk.uri}"\nname = "Study desk phone"\nroom = "study"\nfloor = 1\naudio = "sendrecv"\n')
    daemons.start("sipmob-saproxy", ["sipmob.saproxy", "--config", str(ROOT / "etc/sipmob/saproxy.toml"),
                                     "--devices-dir", str(devices), "--da", da, "--listen", "127.0.0.1:5070"],
                  ready="ready")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = slptool(da, "findsrvs", "service:sip-device", "(mobility=basic)", check=False)
        if speaker.uri in found and desk.uri in found:
            break
        time.sleep(0.2)
    else:
        sys.exit("the SA proxy did not register the devices:\n" + daemons.log("sipmob-saproxy"))

    step("Starting the mobile node: sipmob phone --config etc/sipmob/mn.toml")
    daemons.start("sipmob-phone", ["sipmob.mn.cli", "phone", "--config", str(ROOT / "etc/sipmob/mn.toml"),
                                   "--listen", "127.0.0.1:5060", "--control", str(workdir / "mn.sock"),
                                   "--da", da], ready="ready")

    step("sipmob devices: what the phone can hand its calls to")
    show(sipmob(workdir, da, "devices"))

    step(f"sipmob call {alice.uri}")
    show(sipmob(workdir, da, "call", alice.uri))
    time.sleep(1.0)
    show(sipmob(workdir, da, "calls"))
    show(f"the phone has received {rtp_received(workdir, da)} RTP packets from the remote party")

    for device, room in (("living-room-speaker", "living room"), ("study-desk-phone", "study")):
        step(f"Walking into the {room}: sipmob transfer 1 --to {device}")
        started = time.monotonic()
        show(sipmob(workdir, da, "transfer", "1", "--to", device))
        show(f"(took {1000 * (time.monotonic() - started):.0f} ms, including the grace period in which the"
             " phone keeps sending)")
        before = rtp_received(workdir, da)
        time.sleep(1.0)
        show(sipmob(workdir, da, "calls"))
        show(f"the phone received {rtp_received(workdir, da) - before} packets in the last second: "
             "the remote party now sends to the device")

        step("Leaving: sipmob retrieve 1")
        show(sipmob(workdir, da, "retrieve", "1"))
        before = rtp_received(workdir, da)
        time.sleep(1.0)
        show(f"the phone received {rtp_received(workdir, da) - before} packets in the last second: "
             "the call is back in your hand")


def handoff_demo(daemons: Daemons, da: str, workdir: Path) -> None:
    from tests.peers.pjsua import Pjsua
    from tests.peers.ports import free_udp_port

    step("Session Handoff mode: PJSIP as the remote party, a second sipmob phone as a mobility-enhanced TV")
    bob = Pjsua(free_udp_port(), "bob", workdir=workdir / "bob")
    daemons.cleanups.append(bob.stop)
    print(f"   {bob.uri}  the remote party (pid {bob.proc.pid})")
    tv_dir = workdir / "tv"
    tv_dir.mkdir()
    tv_config = tv_dir / "mn.toml"
    tv_port = free_udp_port()
    tv_config.write_text(f'[listen]\nport = {tv_port}\n[identity]\nuser = "tv"\n'
                         f'[slp]\nda = "{da}"\n[control]\npath = "{tv_dir / "mn.sock"}"\n'
                         '[device]\nenabled = true\nname = "TV"\nroom = "living-room"\n'
                         'owners = ["sip:mn@127.0.0.1"]\n')
    daemons.start("sipmob-phone-tv", ["sipmob.mn.cli", "phone", "--config", str(tv_config)], ready="ready")
    deadline = time.monotonic() + 10
    while ("mobility=enhanced" not in slptool(da, "findattrs", f"sip:tv@127.0.0.1:{tv_port}", check=False)
           and time.monotonic() < deadline):
        time.sleep(0.2)
    show(sipmob(workdir, da, "devices"))

    step(f"sipmob call {bob.uri}")
    placed = sipmob(workdir, da, "call", bob.uri)  # "call N with ... established"
    show(placed)
    time.sleep(1.0)
    call = placed.split()[1]

    step(f"Handing the call off to the TV (draft Fig. 4): sipmob transfer {call} --to tv --mode handoff")
    started = time.monotonic()
    show(sipmob(workdir, da, "transfer", call, "--to", "tv", "--mode", "handoff"))
    show(f"(took {1000 * (time.monotonic() - started):.0f} ms: REFER to the TV, its INVITE with Replaces"
         " to the remote party, whose BYE ends the phone's dialog)")
    show(sipmob(workdir, da, "calls"))

    step(f"Taking it back (draft Fig. 5, nested REFER): sipmob retrieve {call}")
    show(sipmob(workdir, da, "retrieve", call))
    before = rtp_received(workdir, da, call)
    time.sleep(1.0)
    show(f"the phone received {rtp_received(workdir, da, call) - before} packets in the last second: "
         "the call is back in your hand")


def mdsm_demo(daemons: Daemons, da: str, workdir: Path) -> None:
    from tests.peers.pjsua import Pjsua
    from tests.peers.ports import free_udp_port

    step("The living room as one device: sipmob-mdsm with a speaker (baresip), a TV and a camera")
    carol = Pjsua(free_udp_port(), "carol", workdir=workdir / "carol")
    daemons.cleanups.append(carol.stop)
    speaker = Baresip(workdir, user="lr-speaker", record_dir=workdir / "lr-speaker-rec")
    daemons.cleanups.append(speaker.stop)
    members = []
    for user, media, direction in (("lr-tv", "video", "recvonly"), ("lr-camera", "video", "sendonly")):
        port, rtp = free_udp_port(), free_udp_port()
        proc = subprocess.Popen([PY, str(ROOT / "tests/integration/mdsm/member.py"), str(port), user, media,
                                 str(rtp), direction], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        daemons.procs.append((user, proc))
        members.append(f"sip:{user}@127.0.0.1:{port}")
    print(f"   {carol.uri}  the remote party; {speaker.uri}, {', '.join(members)}  the living room")
    config = workdir / "mdsm.toml"
    mdsm_port = free_udp_port()
    config.write_text(f'[listen]\naddress = "127.0.0.1"\nport = {mdsm_port}\n[slp]\nda = "{da}"\n'
                      f'[devices]\ndirectory = "{workdir / "devices.d"}"\n'
                      f'[[system]]\nname = "living-room"\ntitle = "Living room"\nroom = "living-room"\n'
                      f'members = ["{speaker.uri}", "{members[0]}", "{members[1]}"]\n'
                      'owners = ["sip:mn@127.0.0.1"]\n')
    mdsm_args = ["sipmob.mdsm", "--config", str(config)]
    daemons.start("sipmob-mdsm", mdsm_args, ready="ready")
    deadline = time.monotonic() + 10
    while "members:" not in (listed := sipmob(workdir, da, "devices")) and time.monotonic() < deadline:
        time.sleep(0.2)
    show(listed)

    def heard() -> int:
        return sum(p.stat().st_size for p in (workdir / "lr-speaker-rec").glob("*-dec.wav"))

    step(f"sipmob call {carol.uri}")
    show(sipmob(workdir, da, "call", carol.uri))
    time.sleep(1.0)
    call = next(line.split()[0] for line in sipmob(workdir, da, "calls").splitlines() if carol.uri in line)

    step(f"Handing the call to the living room (draft Fig. 6): sipmob transfer {call} --to living-room "
         "--mode handoff")
    started = time.monotonic()
    show(sipmob(workdir, da, "transfer", call, "--to", "living-room", "--mode", "handoff"))
    show(f"(took {1000 * (time.monotonic() - started):.0f} ms: REFER to the MDSM, which INVITEs the three "
         "devices without SDP and the remote party with their offers as one, with Replaces)")
    show(sipmob(workdir, da, "calls"))
    before = heard()
    time.sleep(1.0)
    show(f"the speaker decoded {heard() - before} bytes of the remote party's audio in the last second")

    step("kill -9 of sipmob-mdsm in the middle of the call, then started again")
    name, proc = next((n, p) for n, p in daemons.procs if n == "sipmob-mdsm" and p.poll() is None)
    proc.kill()
    proc.wait()
    before = heard()
    time.sleep(1.0)
    show(f"with no MDSM running, the speaker decoded {heard() - before} bytes in one second: media flows "
         "between the remote party and the devices directly")
    daemons.start("sipmob-mdsm", mdsm_args, ready="taken up again")
    show([line for line in daemons.log("sipmob-mdsm").splitlines() if "taken up again" in line][-1])

    step(f"Taking it back (draft Fig. 5): sipmob retrieve {call}; the restarted MDSM releases the devices")
    show(sipmob(workdir, da, "retrieve", call))
    before = rtp_received(workdir, da)
    time.sleep(1.0)
    show(f"the phone received {rtp_received(workdir, da) - before} packets in the last second: "
         "the call is back in your hand")
    show([line for line in daemons.log("sipmob-mdsm").splitlines() if "leg ended" in line][-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slp-port", type=int, default=427, help="the DA's port on 127.0.0.1")
    parser.add_argument("--keep", action="store_true", help="leave the daemons running until Ctrl-C")
    args = parser.parse_args()
    da = f"127.0.0.1:{args.slp_port}"
    workdir = Path(tempfile.mkdtemp(prefix="sipmob-demo-"))
    daemons = Daemons(workdir)
    try:
        step("Checking the default configuration in etc/sipmob/")
        subprocess.run([PY, "-m", "sipmob.slpda", "--config", str(ROOT / "etc/sipmob/slpda.toml"),
                        "--check-config"], env=ENV, check=True)

        step(f"Starting the SLP Directory Agent on {da}")
        daemons.start("sipmob-slpda", ["sipmob.slpda", "--config", str(ROOT / "etc/sipmob/slpda.toml"),
                                       "--listen", da], ready="ready")

        step("Registering the devices of the home (what the SA proxy does for basic devices)")
        for url, attrs in DEVICES:
            slptool(da, "register", "--lifetime", "600", url, "service:sip-device", attrs)
            print(f"   registered {url}")

        step("Which kinds of service are there?")
        print("   " + slptool(da, "findsrvtypes"))

        step("The mobile node walks into the living room: (room=living-room)")
        print("   " + slptool(da, "findsrvs", "service:sip-device",
                              "(room=living-room)").replace("\n", "\n   "))

        step("Something to show video on: (&(room=living-room)(media=video-recvonly))")
        print("   " + slptool(da, "findsrvs", "service:sip-device",
                              "(&(room=living-room)(media=video-recvonly))").replace("\n", "\n   "))

        step("What can the TV do? (AttrRqst)")
        print("   " + slptool(da, "findattrs", "sip:tv@127.0.0.1:5071"))

        step("Speakers that speak G.722 anywhere on the ground floor: (&(floor=0)(audio-codecs=G722))")
        print("   " + slptool(da, "findsrvs", "service:sip-device",
                              "(&(floor=0)(audio-codecs=G722))").replace("\n", "\n   "))

        step("The desk phone is unplugged: deregistered")
        slptool(da, "deregister", "sip:desk@127.0.0.1:5074")
        print("   study now has: " + (slptool(da, "findsrvs", "service:sip-device", "(room=study)")
                                        or "(nothing)"))

        step("Restarting the Directory Agent: registrations survive")
        daemons.stop_all()
        daemons.procs.clear()
        daemons.start("sipmob-slpda", ["sipmob.slpda", "--config", str(ROOT / "etc/sipmob/slpda.toml"),
                                       "--listen", da], ready="ready")
        print("   " + slptool(da, "findsrvs", "service:sip-device").replace("\n", "\n   "))

        step("Clearing those hand-made registrations: from now on real devices are probed and registered")
        for url, _ in DEVICES:
            slptool(da, "deregister", url)

        call_demo(daemons, da, workdir)
        mdsm_demo(daemons, da, workdir)
        handoff_demo(daemons, da, workdir)

        step("Also: scripts/demo transcode moves a call through sipmob-transcoder to devices that "
             "share no codec with the caller; scripts/demo egress survives a WAN link failing")
        if args.keep:
            step("Running; Ctrl-C stops everything")
            signal.pause()
        step("Done")
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        daemons.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
