"""The `sipmob-transcoder` entry point: the transcoder gateway daemon in a screenful.

The process and thread model follows from measurement (PyAV 10 over Debian 12's libavcodec 5.1,
numpy 1.24, CPython 3.11, one core of the 2-core build machine; ``python3 tests/bench/bench_codecs.py``
reproduces these):

=====================================  ============  ============
per 20 ms frame                        encode (us)   decode (us)
=====================================  ============  ============
libopus, 48 kHz input / output         ~137          ~65
libopus, 16 kHz input                  ~95           (48 kHz out)
libopus, 8 kHz input                   ~150          (48 kHz out)
G.722 (g722)                           ~24           ~13
G.711 u-law via libavcodec             ~2.6          ~2.9
G.711 u-law, numpy table (ours)        ~1.6          ~1.5
G.711 u-law, sipmob.media.g711 (pure)  ~252          -
resample 8 <-> 48 kHz, 20 ms (numpy)   ~30-50        -
=====================================  ============  ============

- libopus releases the GIL inside ``encode``: two threads encoding at once did 12,800 frames/s
  against 7,300 for one (1.76x on 2 cores). But everything around the codec call (the reactor,
  ``recvfrom``/``sendto``, RTP headers, numpy's small-array overhead, 20-60 us a packet) holds the
  GIL, and it is the larger part for every codec except Opus encoding. Threads would buy little
  and cost locks on every channel.
- So the model is **one single-threaded process per core**, each owning its calls, its SIP socket and
  its slice of the RTP port range: no shared state, no locks, and a channel's packets never cross a
  core. This release runs one such process (``workers`` is not a key yet): the capacity figures of
  ``tests/bench/bench_transcoder.py`` are per core, with the daemon pinned to one, and a second
  instance on another core with its own ``[sip] port`` and ``[rtp]`` range is how a gateway with
  more cores uses them today.
- G.711 goes through numpy tables built from `sipmob.media.g711` (same bytes, 150x faster than the
  pure-Python per-sample path; faster than libavcodec because there is no frame object to build).
"""

from __future__ import annotations

from sipmob.service.daemon import DaemonSpec, Runtime, main_for
from sipmob.transcoder.app import TranscoderApp
from sipmob.transcoder.config import TranscoderConfig


def build(config: TranscoderConfig, runtime: Runtime) -> TranscoderApp:
    return TranscoderApp(config, runtime)


spec = DaemonSpec(name="transcoder", config_type=TranscoderConfig, build=build,
                  description="transcoder gateway for calls whose parties share no codec "
                              "(RFC 4117 third-party call control)")

main = main_for(spec)
