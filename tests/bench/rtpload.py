"""Build and run the C RTP load generator (`rtpload.c`) for the transcoder benchmark.

Responsible for: compiling ``rtpload.c`` with gcc once per version of its source (cached by hash),
writing its spec file, running it (optionally pinned with taskset) and returning its figures.
Not here: the systems under test and the capacity search (``bench_transcoder.py``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().with_name("rtpload.c")


def build(directory: Path | None = None) -> Path:
    """The compiled generator, built now unless this version of the source already was."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    directory = directory or Path(tempfile.gettempdir()) / "sipmob-rtpload"
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / f"rtpload-{digest}"
    if not binary.exists():
        gcc = shutil.which("gcc")
        if gcc is None:
            raise RuntimeError("gcc is needed to build the load generator (scripts/deps --build)")
        partial = binary.with_suffix(".tmp")
        subprocess.run([gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(partial), str(SOURCE)],
                       check=True, capture_output=True, timeout=120)
        partial.rename(binary)  # atomic: a concurrent run never executes a half-written file
    return binary


@dataclass
class Load:
    """N channels from one A port to `targets`, received on `b_ports` (all on 127.0.0.1).

    Channels may share a receive port if `src_ports` names the port each one's packets come from
    (the system's port facing B): one socket read with recvmmsg then serves them all."""

    targets: list[int]
    b_ports: list[int]
    a_port: int
    pt: int
    ticks: int  # input RTP clock ticks per 20 ms packet
    out_ticks: int  # output RTP clock ticks per 20 ms packet
    payloads: list[bytes]
    seconds: float
    warmup: float = 1.0
    sample_channel: int = 0
    sample_max: int = 200
    seed: int = 1  # the channels' SSRCs
    seq0: int = 0  # every channel's first sequence number and timestamp
    ts0: int = 0
    src_ports: list[int] | None = None

    @property
    def packets_per_channel(self) -> int:
        return round((self.seconds + self.warmup) / 0.02)

    def spec(self) -> str:
        header = (f"{len(self.targets)} {self.seconds} {self.warmup} {self.pt} {self.ticks} {self.out_ticks} "
                  f"{self.a_port} {self.sample_channel} {self.sample_max} {self.seconds + self.warmup + 30} "
                  f"{self.seed} {self.seq0 % 65536} {self.ts0 % (1 << 32)}")
        sources = self.src_ports or [0] * len(self.targets)
        rows = [f"{t} {b} {s}" for t, b, s in zip(self.targets, self.b_ports, sources, strict=True)]
        return "\n".join([header, *rows, str(len(self.payloads)), *(p.hex() for p in self.payloads)]) + "\n"


def run(binary: Path, load: Load, workdir: Path, cpu: int | None = None,
        realtime: bool = False) -> dict[str, Any]:
    """Run one load; the figures as the generator printed them, the sample decoded to payloads.

    `realtime` needs CAP_SYS_NICE. Raises RuntimeError with the generator's own message if it
    failed (most often a B port taken meanwhile by another program on a shared machine)."""
    spec = workdir / "rtpload.spec"
    spec.write_text(load.spec())
    command = [str(binary), str(spec)]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    if realtime:
        # SCHED_FIFO: other jobs of a shared machine cannot delay the packets; the generator sleeps
        # between them and stops after a bounded time, so it cannot hold the core.
        command = ["chrt", "-f", "10", *command]
    out = subprocess.run(command, capture_output=True, timeout=load.seconds + load.warmup + 60, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode(errors="replace").strip() or f"exit {out.returncode}")
    result: dict[str, Any] = json.loads(out.stdout)
    result["sample"] = [bytes.fromhex(h) for h in result["sample"].split()]
    for key in ("gap_p99_ms", "latency_p50_ms", "latency_p99_ms", "lag_p99_ms"):
        if result[key] is None:
            result[key] = float("nan")
    return result
