"""The `sipmob-transcoder` entry point: the transcoder gateway daemon in a screenful.

The process and thread model follows from measurement (Debian 12: CPython 3.11, libopus 1.3.1,
spandsp 0.0.6, PyAV 10 over libavcodec 5.1, numpy 1.24, on the 2-core build
machine shared with other jobs, so +-20 %; ``.venv/bin/python tests/bench/bench_transcoder_path.py``
reproduces them). CPU time per 20 ms frame:

==================================================  ==========  ==========
                                                    via PyAV    direct
==================================================  ==========  ==========
libopus encode, 16 kHz input (G.711/G.722 source)   95-140      57-67
libopus encode, 48 kHz input                        110-128     67-83
libopus decode to 48 kHz / to 8 kHz (direct only)   75-83       30-39 / 23-28
G.722 encode / decode (libavcodec; spandsp)         30-35 / 11  18-22 / 9-15
G.711 u-law, numpy tables                           1.3-1.6
resample 8->16 / 16->8 kHz (numpy, both columns)   8-12 / 15-23
==================================================  ==========  ==========

PyAV's wrappers cost as much as the codecs (see `sipmob.media.native`), so Opus and G.722 are
called in their own libraries through ctypes. The whole
`sipmob.media.transcode.Channel` per packet (header, reorder, decode, resample, re-frame, encode):
PCMU->Opus ~77-120 us, Opus->PCMU ~28-37, PCMU->G.722 ~17 and G.722->PCMU ~14 (spandsp's
8 kHz mode: no QMF, no resampling), relay ~1.5.

- libopus releases the GIL inside ``encode`` (ctypes and PyAV both drop it around the call): two
  threads encoding at once did 1.76x the frames of one on two idle cores. But everything around
  the codec (the loop's wake-up, ``recvfrom``/``sendto``, RTP headers, numpy's per-call overhead,
  RTCP statistics) holds the GIL, and for every conversion but Opus encoding it is the larger
  part. Threads would buy little, and cost a lock on every channel.
- So the model is **one single-threaded process per core** (``[media] workers``, default: the
  cores this process may run on), each owning its calls' sockets: no shared state, no locks, and a
  channel's packets never cross a core. The main process keeps SIP, admission and SLP on Twisted's
  reactor and hands each call's four sockets to the worker with the fewest calls
  (`sipmob.transcoder.media`); a worker runs a bare epoll loop (`sipmob.transcoder.worker` says why
  not the reactor: 63 us of reactor against 16 us of loop per relayed packet). ``[capacity]
  channels`` is shared evenly between the workers, so admission refuses (503) before any core is
  past its share, whatever the total says.
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
