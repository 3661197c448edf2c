"""The transcoder demo: a call moved to devices that share no codec with the remote party.

Starts, on loopback with free ports and a temporary directory: the DA, `sipmob-transcoder`
(registered in the DA as ``service:sip-transcoder``), `sipmob phone`, and baresip as the remote
party (a mobile reached through the provider, speaking Opus only) sending a 440 Hz tone, as a desk
phone that speaks PCMU only (or G.722 only, ``--desk g722``) playing a 1 kHz tone, and as a smart
speaker that speaks Opus only. The phone calls the remote party in Opus (it speaks Opus besides
G.711). `sipmob transfer` to the desk phone finds no common codec, finds the transcoder in the DA
and moves the call through it (Opus on the remote party's side, PCMU on the desk phone's); what
each baresip decodes is checked for the other's tone. The move on to the speaker needs no
transcoder (both speak Opus) and releases it; `sipmob retrieve` brings the call back. Run:

    scripts/demo transcode [--desk pcmu|g722]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "daemons"), str(ROOT / "tests/integration/slpda"),
                str(ROOT / "tests/integration/mn")]

from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402
from tests.integration.transcoder.transcoder_process import Transcoder  # noqa: E402
from tests.peers.baresip import Baresip  # noqa: E402

DESKS = {"pcmu": ("PCMU", "PCMU", 8000), "g722": ("G722/16000", "G722", 16000)}


class OpusBaresip(Baresip):
    """baresip with its Opus module loaded (the shared driver loads G.711, G.722 and L16 only)."""

    def _write_config(self, *args: object) -> None:
        super()._write_config(*args)  # type: ignore[arg-type]
        config = self.dir / "config"
        config.write_text(config.read_text() + "module opus.so\n")


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(text: str) -> None:
    print("   " + text.replace("\n", "\n   "), flush=True)


def tone_wav(path: Path, freq: float, rate: int, seconds: float = 60.0) -> Path:
    import wave

    import numpy as np

    samples = (0.3 * 32767 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return path


def heard(directory: Path) -> str:
    """The loudest frequency in the last second a baresip decoded, and its level."""
    import struct

    import numpy as np

    found = sorted(directory.glob("*-dec.wav"))
    if not found:
        return "nothing"
    raw = found[0].read_bytes()
    fmt, data_at = raw.find(b"fmt "), raw.find(b"data")
    channels, rate = struct.unpack_from("<HI", raw, fmt + 10)
    body = raw[data_at + 8:]
    data = np.frombuffer(body[: len(body) & ~1], dtype="<i2").astype(np.float64)
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    y = data[-rate:]
    if len(y) < rate // 2:
        return "nothing yet"
    peak = float(np.argmax(np.abs(np.fft.rfft(y * np.hanning(len(y))))) * rate / len(y))
    level = 20 * np.log10(max(float(np.sqrt(np.mean(y ** 2))), 1e-9) / 32768)
    return f"{peak:.0f} Hz at {level:.1f} dBFS"


def codec(phone: Phone) -> str:
    """The codec the remote party's audio runs in, as the phone reports it."""
    [call] = json.loads(sipmob(phone, "calls", "--json"))
    stream = next((s for s in call["streams"] if s.get("media") == "audio"), {})
    return str(stream.get("codec", "?"))


def sipmob(phone: Phone, *args: str) -> str:
    done = phone.sipmob(*args)
    if done.returncode != 0:
        sys.exit(f"sipmob {' '.join(args)} failed: {done.stderr.strip()}\n{phone.output()}")
    return done.stdout.rstrip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--desk", choices=sorted(DESKS), default="pcmu", help="the desk phone's only codec")
    args = parser.parse_args()
    baresip_codec, slp_codec, rate = DESKS[args.desk]
    work = Path(tempfile.mkdtemp(prefix="sipmob-transcode-"))
    stop: list[object] = []
    try:
        step("Starting the SLP Directory Agent")
        (work / "da").mkdir()
        da = Slpda(work / "da").start()
        stop.append(da.stop)
        show(f"DA on {HOST}:{da.port}")

        step("Starting sipmob-transcoder; it registers itself in the DA as service:sip-transcoder")
        (work / "tx").mkdir()
        transcoder = Transcoder(work / "tx", slp=f'das = ["{HOST}:{da.port}"]\nupdate_interval = 0.5')
        transcoder.start()
        stop.append(transcoder.stop)
        show(f"{transcoder.uri}, RTP ports {transcoder.rtp_low}-{transcoder.rtp_high}")

        step(f"Starting the remote party (Opus only), a desk phone ({slp_codec} only) and a smart speaker "
             "(Opus only), all baresip")
        alice = OpusBaresip(work, user="alice", codecs="opus/48000/2", record_dir=work / "alice-rec")
        stop.append(alice.stop)
        speaker = OpusBaresip(work, user="speaker", codecs="opus/48000/2", record_dir=work / "speaker-rec",
                              audio=tone_wav(work / "700.wav", 700.0, 48000))
        stop.append(speaker.stop)
        desk = Baresip(work, user="desk", codecs=baresip_codec, audio=tone_wav(work / "1k.wav", 1000.0, rate),
                       record_dir=work / "desk-rec")
        stop.append(desk.stop)
        show(f"{alice.uri}  the remote party, sends a 440 Hz tone\n{desk.uri}  the desk phone, sends 1 kHz\n"
             f"{speaker.uri}  the speaker, sends 700 Hz")
        with da.client() as slp:
            slp.register(desk.uri, f"(name=Desk phone),(room=study),(media=audio-sendrecv),"
                                   f"(audio-codecs={slp_codec})")
            slp.register(speaker.uri, "(name=Kitchen speaker),(room=kitchen),(media=audio-sendrecv),"
                                      "(audio-codecs=opus)")

        step("Starting the mobile node (sipmob phone)")
        phone = Phone(work, f"{HOST}:{da.port}", auto_answer=True)
        stop.append(phone.stop)

        step(f"sipmob call {alice.uri}")
        show(sipmob(phone, "call", alice.uri))
        until(lambda: phone.received() > 20, 10)
        show(sipmob(phone, "calls"))
        show(f"the remote party's side: {codec(phone)}")

        step("The desk phone shares no codec with the remote party:")
        show(sipmob(phone, "devices"))

        step("Walking into the study: sipmob transfer 1 --to desk-phone")
        started = time.monotonic()
        show(sipmob(phone, "transfer", "1", "--to", "desk-phone"))
        show(f"(took {1000 * (time.monotonic() - started):.0f} ms from the command, including the grace "
             "period in which the phone keeps sending)")
        show(sipmob(phone, "calls"))
        show(f"the remote party's side: {codec(phone)}; the desk phone's side: {slp_codec}")
        [call] = json.loads(sipmob(phone, "calls", "--json"))
        show(f"the call's legs: the remote party, {', '.join(call['devices'])}")
        said = transcoder.output().splitlines()
        show("the transcoder says: " + next((line.split(": ", 1)[1] for line in said if " updated: " in line),
                                            "?"))

        step("What each side hears (what baresip decoded in the last second)")
        time.sleep(3.0)
        show(f"the desk phone hears {heard(work / 'desk-rec')} (the remote party's 440 Hz, as {slp_codec})")
        show(f"the remote party hears {heard(work / 'alice-rec')} (the desk phone's 1 kHz, as Opus)")

        step("On to the kitchen, Opus on both sides, no transcoder: sipmob transfer 1 --to kitchen-speaker")
        show(sipmob(phone, "transfer", "1", "--to", "kitchen-speaker"))
        show(sipmob(phone, "calls"))
        until(lambda: " ended " in transcoder.output(), 5)
        show("the desk phone's leg and its transcoder call were released: "
             + "; ".join(line.split(": ", 1)[1].split(":")[0] for line in transcoder.output().splitlines()
                         if " ended " in line))
        time.sleep(3.0)
        show(f"the speaker hears {heard(work / 'speaker-rec')} (the remote party's 440 Hz, as Opus)")
        show(f"the remote party hears {heard(work / 'alice-rec')} (the speaker's 700 Hz, as Opus)")

        step("Leaving the kitchen: sipmob retrieve 1")
        show(sipmob(phone, "retrieve", "1"))
        show(sipmob(phone, "calls"))
        show(f"the remote party's side: {codec(phone)}")
        step("Done")
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for cleanup in reversed(stop):
            cleanup()  # type: ignore[operator]
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
