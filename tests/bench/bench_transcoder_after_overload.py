"""Does sipmob-transcoder carry a load as well after an overloaded trial as before it?

Run: .venv/bin/python tests/bench/bench_transcoder_after_overload.py [--case pcmu-opus] [--low 100]
     [--high 220] [--after 3] [--seconds 2]

Every call (``--high`` of them) is set up first, so no trial pays for calls set up just before it;
then trials at ``--low`` channels, two at ``--high`` (overloaded: each bench_transcoder trial that
fails is run once more), and ``--after`` trials at ``--low`` again, on the same process. The
figures (loss, p99 gap, latency, CPU per packet) before and after the overload are printed by
`bench_transcoder.run_trial` as in that bench: the SUT pinned to CPU 0 at SCHED_FIFO, the C
generator on CPU 1. Every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2])]

import tests.bench.bench_transcoder as bt  # noqa: E402
from tests.bench import rtpload  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="pcmu-opus", choices=sorted(bt.CASES))
    parser.add_argument("--low", type=int, default=100)
    parser.add_argument("--high", type=int, default=220)
    parser.add_argument("--after", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    options = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    args = argparse.Namespace(seconds=options.seconds, warmup=0.5, sut_nice=0, sut_rt=True, sut_cpu=0,
                              gen_cpu=1, rt_generator=True, max=options.high)
    for codec in bt.FORMATS:
        bt.PAYLOADS[codec] = bt.payloads(codec)
    with tempfile.TemporaryDirectory(prefix="bench-transcoder-overload-") as tmp:
        bt.WORKDIR = Path(tmp)
        bt.GENERATOR = rtpload.build(bt.WORKDIR)
        a_port = bt.port_block(2)
        b_ports = [bt.port_block(2)] * options.high
        workdir = Path(tmp) / "sipmob"
        workdir.mkdir()
        system = bt.Sipmob(args.sut_cpu, workdir, options.high)
        try:
            system.ensure(options.high, *bt.CASES[options.case], a_port, b_ports)
            for n, note in [(options.low, " before"), (options.low, " before"), (options.high, " overload"),
                            *[(options.low, " after")] * options.after]:
                bt.run_trial(system, options.case, n, args, a_port, b_ports, note)
        finally:
            system.stop()


if __name__ == "__main__":
    main()
