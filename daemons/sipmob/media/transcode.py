"""One direction of a transcoded or relayed RTP stream, sans-I/O: packets in, packets out.

`Channel` takes the datagrams one side sends (`receive(data)`) and returns the datagrams to send
to the other side, as one continuous RTP stream of its own: our SSRC, a sequence number that counts
every packet we send and a timestamp that counts sampling instants at the output's clock (RFC 3550
§5.1), across input restarts, SSRC changes and a change of either side's format (`set_formats`,
for a re-INVITE).

The path of a packet when the two sides' codecs differ:

1. **Reorder buffer** (the jitter buffer of a relay that does not play out): packets in sequence
   go through at once, adding no delay. A packet after a gap waits until the missing one arrives
   or more than `depth` packets wait, then the gap is concealed. The depth adapts: a packet that
   arrives after its place was concealed makes it one deeper (up to `MAX_DEPTH`); 500 packets
   without one make it one shallower (down to 1). Pacing is left to the receiver's own jitter
   buffer: holding packets here would only add our delay to its.
2. **Decode** (or conceal, for each lost frame: `sipmob.media.audioformat`).
3. **Resample** to the output codec's rate.
4. **Re-frame** to the output ptime (10-60 ms either side) in a FIFO of samples.
5. **Encode** each whole output frame and packetise it.

A silence-suppression pause in the input (timestamps jumping ahead of the sequence) becomes the
same pause in the output: the output timestamp jumps by the same time and the marker is set.

**telephone-event** (RFC 4733) packets are passed across, not decoded: payload type mapped, the
event's timestamp moved to the output's timeline (anchored on the last audio packet) and its
duration rescaled when the two sides' event clocks differ (8000 vs 48000 for Opus). The volume,
end bit and redundant end packets are kept. A side without telephone-event gets none of the
packets: the digits are told instead (`on_digit`, each once, with its duration: the transcoder
sends them as SIP INFO). The other way, `event_packet` puts a generated event (a digit that came
as SIP INFO) into the output stream, numbered in its sequence.

**Relay**: when both sides use the same codec, clock, channels and ptime, payloads are not
decoded: only payload type, SSRC, sequence and timestamp are rewritten, in place in the receive
buffer (`relay_into`; sequence and timestamp by an offset re-based whenever the input's SSRC
changes, so the input's own losses stay visible).

The RTP header is read and written with `struct` here rather than through
`sipmob.media.rtp.RtpPacket`: the per-packet overhead around the codec is what the transcoder's
capacity depends on (see `sipmob.transcoder`).

Not here: sockets, RTCP (the daemon keeps `SourceStats` per side), SDP.
"""

from __future__ import annotations

import dataclasses
import random
import struct
from collections.abc import Callable

import numpy as np

from sipmob.media.audioformat import AudioFormat, Pcm, Resampler, make_decoder, make_encoder
from sipmob.media.dtmf import Digit, DigitDetector

_HEADER = struct.Struct("!BBHII")
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
MAX_DEPTH = 5
SHRINK_AFTER = 500
MAX_CONCEAL = 5  # frames; a longer gap is a pause, not a loss to fill
RESTART_GAP = 3000  # sequence jump taken as the source restarting (RFC 3550 A.1 MAX_DROPOUT)
MAX_MISORDER = 100  # a packet further back than this is a restart too (A.1)


class BadPacket(ValueError):
    """Not an RTP version 2 packet we can take: counted and dropped."""


def split(data: bytes) -> tuple[int, bool, int, int, int, bytes]:
    """(payload type, marker, sequence, timestamp, SSRC, payload) of an RTP packet."""
    if len(data) < 12:
        raise BadPacket("shorter than the RTP header")
    first, second, seq, ts, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise BadPacket("not RTP version 2")
    offset = 12 + 4 * (first & 0x0F)
    end = len(data)
    if first & 0x20:
        end -= data[-1]
    if first & 0x10:
        if offset + 4 > end:
            raise BadPacket("header extension runs past the end")
        offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
    if offset > end:
        raise BadPacket("header runs past the end")
    return second & 0x7F, bool(second & 0x80), seq, ts, ssrc, data[offset:end]


def _seq_diff(a: int, b: int) -> int:
    return (a - b + SEQ_MOD // 2) % SEQ_MOD - SEQ_MOD // 2


def _ts_diff(a: int, b: int) -> int:
    return (a - b + TS_MOD // 2) % TS_MOD - TS_MOD // 2


@dataclasses.dataclass(slots=True)
class ChannelStats:
    received: int = 0
    sent: int = 0
    octets: int = 0  # payload octets sent (RTCP SR)
    bad: int = 0  # not RTP, or a payload type the side did not offer
    concealed: int = 0  # frames made up for lost packets
    late: int = 0  # arrived after their place was concealed, dropped
    duplicates: int = 0
    events: int = 0  # telephone-event packets passed across
    depth: int = 1


class Channel:
    """One direction: `source` format in, `sink` format out (see the module docstring)."""

    def __init__(self, source: AudioFormat, sink: AudioFormat, *, ssrc: int | None = None,
                 rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        self.ssrc = rng.getrandbits(32) if ssrc is None else ssrc
        # §5.1: random initial sequence number and timestamp.
        self.out_seq = rng.getrandbits(16)
        self.out_ts = rng.getrandbits(32)
        self.stats = ChannelStats()
        self._marker = True
        # Told each digit that arrives as telephone-events when the sink has none.
        self.on_digit: Callable[[Digit], None] | None = None
        self.set_formats(source, sink)

    # Set-up -------------------------------------------------------------------------------------

    def set_formats(self, source: AudioFormat, sink: AudioFormat) -> None:
        """Start converting `source` to `sink`; the output stream (SSRC, seq, ts) carries on."""
        self.source, self.sink = source, sink
        self.relay = source.same_payload(sink)
        # What `relay_header` reads for every packet, looked up once (frame_ticks is computed).
        self._relay_in_pt, self._relay_in_event_pt = source.payload_type, source.dtmf_payload_type
        self._relay_out_pt: int = sink.payload_type
        self._relay_out_event_pt = sink.dtmf_payload_type
        self._relay_ticks = sink.frame_ticks
        self._encoder = None if self.relay else make_encoder(sink, source.sample_rate)
        self._decoder = None if self._encoder is None else make_decoder(source, self._encoder.rate)
        if self._decoder is not None and self._encoder is not None:
            self._resampler = Resampler(self._decoder.rate, self._encoder.rate)
            self._in_frame = source.frame_samples * self._decoder.rate // source.sample_rate
            self._ticks_per_sample = sink.clock_rate / self._encoder.rate
        self._fifo = np.zeros(0, dtype=np.int16)
        self._in_ssrc: int | None = None
        self._expected_seq = 0
        self._expected_ts = 0
        self._held: dict[int, tuple[bool, int, bytes, int]] = {}
        self._good_run = 0
        self._anchor: tuple[int, int] | None = None  # (input ts, output ts) of one sampling instant
        self._relay_seq_offset = 0
        self._relay_ts_offset = 0
        self._marker = True
        self._event_ts: int | None = None
        self._detector = DigitDetector(source.dtmf_clock_rate) \
            if source.dtmf_payload_type is not None and sink.dtmf_payload_type is None else None
        self._concealed: list[int] = []  # recent sequence numbers given up on, to tell late from duplicate

    # Packets in, packets out --------------------------------------------------------------------

    def receive(self, data: bytes) -> list[bytes]:
        """The datagrams to send for one datagram received (often one, none while a gap waits)."""
        if self.relay:
            buf = bytearray(data)
            return [bytes(buf)] if self.relay_into(buf, len(buf)) else []
        try:
            pt, marker, seq, ts, ssrc, payload = split(data)
        except (BadPacket, struct.error):
            self.stats.bad += 1
            return []
        source = self.source
        if pt != source.payload_type and pt != source.dtmf_payload_type:
            self.stats.bad += 1
            return []
        self.stats.received += 1
        if ssrc != self._in_ssrc:
            self._restart(ssrc, seq, ts)
        ahead = _seq_diff(seq, self._expected_seq)
        if ahead < -MAX_MISORDER:
            self._restart(ssrc, seq, ts)
            ahead = 0
        if ahead < 0:
            if seq in self._concealed:
                self._concealed.remove(seq)
                self.stats.late += 1
                self._good_run = 0
                self.stats.depth = min(MAX_DEPTH, self.stats.depth + 1)
            else:
                self.stats.duplicates += 1
            return []
        if ahead > RESTART_GAP:
            # RFC 3550 A.1: a jump that far is the source starting over, not loss (likewise back).
            self._restart(ssrc, seq, ts)
            ahead = 0
        out: list[bytes] = []
        if ahead == 0:
            self._take(pt, marker, ts, payload, out)
            self._expected_seq = (seq + 1) % SEQ_MOD
            self._drain_held(out)
        else:
            if seq in self._held:
                self.stats.duplicates += 1
                return []
            self._held[seq] = (marker, ts, payload, pt)
            if len(self._held) > self.stats.depth:
                self._skip_to_held(out)
        return out

    def _restart(self, ssrc: int, seq: int, ts: int) -> None:
        self._in_ssrc = ssrc
        self._expected_seq = seq
        self._expected_ts = ts
        self._held.clear()
        self._anchor = None
        self._marker = True

    def _drain_held(self, out: list[bytes]) -> None:
        while self._expected_seq in self._held:
            marker, ts, payload, pt = self._held.pop(self._expected_seq)
            self._take(pt, marker, ts, payload, out)
            self._expected_seq = (self._expected_seq + 1) % SEQ_MOD

    def _skip_to_held(self, out: list[bytes]) -> None:
        """Give up on the packets missing before the earliest held one: conceal them."""
        first = min(self._held, key=lambda s: _seq_diff(s, self._expected_seq))
        missing = _seq_diff(first, self._expected_seq)
        after = self._held[first]
        # The packet after the last lost one may carry that frame again (Opus in-band FEC).
        fec = after[2] if after[3] == self.source.payload_type else None
        for i in range(missing):
            if i < MAX_CONCEAL:
                self._conceal(out, fec if i == missing - 1 else None)
            self._concealed.append((self._expected_seq + i) % SEQ_MOD)
        del self._concealed[:-4 * MAX_DEPTH]
        self._expected_seq = first
        self._drain_held(out)

    def _take(self, pt: int, marker: bool, ts: int, payload: bytes, out: list[bytes]) -> None:
        self._good_run += 1
        if self._good_run >= SHRINK_AFTER and self.stats.depth > 1:
            self.stats.depth -= 1
            self._good_run = 0
        if pt == self.source.dtmf_payload_type:
            self._event(ts, payload, out)
            return
        pause = _ts_diff(ts, self._expected_ts)
        if pause > 0 and self._anchor is not None:
            # Silence suppression (or a source clock step): keep the pause in the output's time.
            gap = round(pause * self.sink.clock_rate / self.source.clock_rate)
            self.out_ts = (self.out_ts + gap) % TS_MOD
            self._marker = True
        self._expected_ts = (ts + self.source.frame_ticks) % TS_MOD
        assert self._decoder is not None
        self._push(self._decoder.decode(payload), ts, out)

    def _conceal(self, out: list[bytes], next_payload: bytes | None = None) -> None:
        assert self._decoder is not None
        self.stats.concealed += 1
        ts = self._expected_ts
        self._expected_ts = (ts + self.source.frame_ticks) % TS_MOD
        self._push(self._decoder.conceal(self._in_frame, next_payload), ts, out)

    def _push(self, pcm: Pcm, in_ts: int, out: list[bytes]) -> None:
        assert self._encoder is not None
        # The output instant of this frame's first sample, for moving telephone-events across.
        self._anchor = (in_ts, (self.out_ts + round(len(self._fifo) * self._ticks_per_sample)) % TS_MOD)
        pcm = self._resampler.process(pcm)
        fifo = np.concatenate((self._fifo, pcm)) if len(self._fifo) else pcm
        n = self._encoder.frame_samples
        start = 0
        while len(fifo) - start >= n:
            payload = self._encoder.encode(fifo[start:start + n])
            start += n
            if payload:
                out.append(self._packet(self.sink.payload_type, payload, self.sink.frame_ticks))
            else:  # nothing from the encoder yet: time passes, no packet is numbered
                self.out_ts = (self.out_ts + self.sink.frame_ticks) % TS_MOD
        self._fifo = fifo[start:]

    def _packet(self, pt: int, payload: bytes, ticks: int, marker: bool | None = None,
                ts: int | None = None) -> bytes:
        if marker is None:
            marker, self._marker = self._marker, False
        data = _HEADER.pack(0x80, (0x80 if marker else 0) | pt, self.out_seq,
                            self.out_ts if ts is None else ts, self.ssrc) + payload
        self.out_seq = (self.out_seq + 1) % SEQ_MOD
        if ts is None:
            self.out_ts = (self.out_ts + ticks) % TS_MOD
        self.stats.sent += 1
        self.stats.octets += len(payload)
        return data

    def _event(self, ts: int, payload: bytes, out: list[bytes]) -> None:
        """RFC 4733 §2.3: one telephone-event packet moved to the output's timeline."""
        sink = self.sink
        if sink.dtmf_payload_type is None:
            self._detect(ts, payload)
            return
        if len(payload) < 4:
            return
        if self._anchor is None:
            self._anchor = (ts, self.out_ts)
        in_ts, out_ts = self._anchor
        scaled = round(_ts_diff(ts, in_ts) * sink.clock_rate / self.source.clock_rate)
        event_ts = (out_ts + scaled) % TS_MOD
        duration = struct.unpack_from("!H", payload, 2)[0]
        duration = min(0xFFFF, round(duration * sink.dtmf_clock_rate / self.source.dtmf_clock_rate))
        body = payload[:2] + struct.pack("!H", duration) + payload[4:]
        # §2.5.1.2: the marker goes on the first packet of an event, which the sender marked too.
        first = bool(self._event_ts != event_ts)
        self._event_ts = event_ts
        self.stats.events += 1
        out.append(self._packet(sink.dtmf_payload_type, body, 0, marker=first, ts=event_ts))

    # Relay ------------------------------------------------------------------------------------

    def relay_into(self, buf: bytearray, size: int) -> bool:
        """Relay the packet in ``buf[:size]`` by rewriting its header in place (one
        ``struct.pack_into``): payload type, marker, sequence, timestamp, SSRC. True when it is to
        be sent. CSRCs, header extension and padding stay as they came: the payload is not touched.
        """
        if size < 12:
            self.stats.bad += 1
            return False
        first, second, seq, ts, ssrc = _HEADER.unpack_from(buf)
        return self.relay_header(buf, size, first, second, seq, ts, ssrc)

    def relay_header(self, buf: bytearray, size: int, first: int, second: int, seq: int, ts: int,
                     ssrc: int) -> bool:
        """`relay_into` for a caller that has already unpacked the 12-octet header of ``buf[:size]``."""
        stats = self.stats
        pt = second & 0x7F
        audio = pt == self._relay_in_pt
        if first >> 6 != 2 or not (audio or pt == self._relay_in_event_pt):
            stats.bad += 1
            return False
        stats.received += 1
        marker = second & 0x80
        ahead = (seq - self._expected_seq + 32768) % SEQ_MOD - 32768
        if ssrc != self._in_ssrc or ahead > RESTART_GAP or ahead < -RESTART_GAP:
            # Continue our stream from where it stood: next sequence number, next frame's instant.
            self._in_ssrc = ssrc
            self._relay_seq_offset = (self.out_seq - seq) % SEQ_MOD
            self._relay_ts_offset = (self.out_ts - ts) % TS_MOD
            marker = 0x80
            ahead = 0
        out_seq = (seq + self._relay_seq_offset) % SEQ_MOD
        out_ts = (ts + self._relay_ts_offset) % TS_MOD
        if ahead >= 0:
            self._expected_seq = (seq + 1) % SEQ_MOD
            self.out_seq = (out_seq + 1) % SEQ_MOD
            if audio:
                self.out_ts = (out_ts + self._relay_ticks) % TS_MOD
        if audio:
            out_pt = self._relay_out_pt
        else:
            event_pt = self._relay_out_event_pt
            if event_pt is None:
                if ahead >= 0:
                    self._detect(ts, bytes(buf[12 + 4 * (first & 0x0F):size]))
                return False
            out_pt = event_pt
            stats.events += 1
        stats.sent += 1
        stats.octets += size - 12 - 4 * (first & 0x0F)
        _HEADER.pack_into(buf, 0, first, marker | out_pt, out_seq, out_ts, self.ssrc)
        return True

    # Digits ------------------------------------------------------------------------------------

    def _detect(self, ts: int, payload: bytes) -> None:
        """An event for a sink without telephone-event: the digit, once, to `on_digit`."""
        if self._detector is None or self.on_digit is None:
            return
        for digit in self._detector.feed(ts, payload):
            self.stats.events += 1
            self.on_digit(digit)

    @property
    def can_send_events(self) -> bool:
        return self.sink.dtmf_payload_type is not None

    def event_packet(self, payload: bytes, ts: int, marker: bool) -> bytes:
        """One generated telephone-event packet (RFC 4733 §2.3 ``payload``) at output timestamp
        ``ts``, numbered next in our stream; a relay's later packets are numbered after it."""
        assert self.sink.dtmf_payload_type is not None
        self._relay_seq_offset = (self._relay_seq_offset + 1) % SEQ_MOD
        return self._packet(self.sink.dtmf_payload_type, payload, 0, marker=marker, ts=ts)
