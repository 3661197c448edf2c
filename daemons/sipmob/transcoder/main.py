"""The `sipmob-transcoder` entry point: the transcoder gateway daemon in a screenful.

The process and thread model follows from measurement (PyAV 10 over Debian 12's libavcodec 5.1,
numpy 1.24, CPython 3.11, on the 2-core build machine shared with other jobs, so +-20 %;
``.venv/bin/python tests/bench/bench_codecs.py`` reproduces them). CPU time per 20 ms frame:

=========================================  ==========  ==========
                                           encode us   decode us
=========================================  ==========  ==========
libopus, 8 kHz input (``maxplaybackrate``) 150-160     (48 kHz)
libopus, 16 kHz input                      90-140      60-70 (libavcodec always decodes to 48 kHz)
libopus, 48 kHz input                      120-140     65-70
G.722 (``g722``)                           24          11-13
G.711 u-law, libavcodec ``pcm_mulaw``      2-2.6       3
G.711 u-law, numpy tables (used)           1.3-1.6     1.4
G.711 u-law, pure-Python sipmob.media.g711 160-250     -
resample 8<->16 kHz / 8,16<->48 kHz        9 / 15      (numpy polyphase, ours)
=========================================  ==========  ==========

The whole `sipmob.media.transcode.Channel` per packet (header, reorder, decode, resample,
re-frame, encode): PCMU->Opus ~180 us, Opus->PCMU ~135, PCMU->G.722 ~73, G.722->PCMU ~40,
relay ~2. PyAV's own wrappers cost more than G.711 itself: ``AudioFrame.to_ndarray`` and
``from_ndarray`` ~20 us each, so frames are reused and read through their plane buffers.

- libopus releases the GIL inside ``encode``: two threads encoding at once did 1.76x the frames
  of one on two idle cores (12,800 against 7,300 frames/s; 1.3x with the machine loaded). But
  everything around the codec (the reactor's wake-up, ``recvfrom``/``sendto``, RTP headers,
  numpy's per-call overhead, RTCP statistics: 40-100 us a packet) holds the GIL, and for every
  conversion but Opus encoding it is the larger part. Threads would buy little, and cost a lock
  on every channel.
- So the model is **one single-threaded process per core**, each owning its calls, its SIP socket
  and its slice of the RTP port range: no shared state, no locks, and a channel's packets never
  cross a core. This release runs one such process (there is no ``workers`` key yet): the capacity
  figures of ``tests/bench/bench_transcoder.py`` are per core, with the daemon pinned to one, and a
  second instance with its own ``[sip] port`` and ``[rtp]`` range is how a gateway with more cores
  uses them today.
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
