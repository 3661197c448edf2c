"""The main job, on loopback: start the daemon set with the defaults in etc/, then walk through
what a household sees: devices registered and found by room and capability.

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


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


class Daemons:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

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
    result = subprocess.run([PY, "-m", "sipmob.slp.tool", "--da", da, *args], env=ENV,
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
