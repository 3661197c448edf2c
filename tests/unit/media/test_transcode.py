"""The transcoding channel: tones through each conversion, stream continuity, DTMF, loss, relay.

Audio is judged by a least-squares fit of a sine at the known frequency to what comes out (after
the codec's start-up): the fit is the alignment (phase and level), what it leaves is noise and
distortion, and their ratio is the SNR. Thresholds, from what each chain can do at best:

- G.711 and L16 chains: >= 30 dB. A -10 dBFS sine through one u-law or A-law stage has about 38 dB
  of quantisation SNR; two stages and a resampler cost a few dB; 30 leaves margin, and a wrong
  table, a byte-order slip or a dropped sample per frame falls far below it (< 10 dB).
- G.722 in the chain: >= 25 dB (its 64 kbit/s ADPCM gives 35-40 dB on a steady tone here).
- Opus in the chain: >= 18 dB. Opus is a perceptual codec at 16-32 kbit/s; it keeps a steady tone
  at 24-38 dB here, not the waveform sample for sample. A frame lost, duplicated or misplaced in
  time puts a phase jump in the fit and drops it below 10 dB.

The peak of the spectrum must also be the tone's frequency within one FFT bin.
"""

from __future__ import annotations

import itertools
import random
import struct

import numpy as np
import pytest

from sipmob.media.audioformat import AudioFormat, make_decoder, make_encoder
from sipmob.media.transcode import Channel, split

FORMATS = {
    "PCMU": AudioFormat.of("PCMU", 0, 8000, dtmf_payload_type=101),
    "PCMA": AudioFormat.of("PCMA", 8, 8000, dtmf_payload_type=101),
    "G722": AudioFormat.of("G722", 9, 8000, dtmf_payload_type=101),
    "opus": AudioFormat.of("opus", 111, 48000, dtmf_payload_type=110, fmtp="useinbandfec=1"),
    "L16": AudioFormat.of("L16", 96, 16000),
}
THRESHOLD = {"PCMU": 30.0, "PCMA": 30.0, "L16": 30.0, "G722": 25.0, "opus": 18.0}


def tone(rate: int, freq: float, samples: int, level: float = 0.316) -> np.ndarray:
    return (level * 32767 * np.sin(2 * np.pi * freq * np.arange(samples) / rate)).astype(np.int16)


def packets(fmt: AudioFormat, pcm: np.ndarray, ssrc: int = 0x1234, seq: int = 65530,
            ts: int = 2**32 - 480) -> list[bytes]:
    encoder = make_encoder(fmt, fmt.sample_rate)
    n = encoder.frame_samples
    out = []
    for i in range(len(pcm) // n):
        payload = encoder.encode(pcm[i * n:(i + 1) * n])
        out.append(struct.pack("!BBHII", 0x80, fmt.payload_type, (seq + i) % 65536,
                               (ts + i * fmt.frame_ticks) % 2**32, ssrc) + payload)
    return out


def decode_all(fmt: AudioFormat, datagrams: list[bytes]) -> np.ndarray:
    decoder = make_decoder(fmt)
    return np.concatenate([decoder.decode(split(d)[5]) for d in datagrams
                           if split(d)[0] == fmt.payload_type])


def snr_and_peak(pcm: np.ndarray, rate: int, freq: float) -> tuple[float, float]:
    y = pcm[rate // 10:].astype(np.float64)  # after the codecs' and filters' start-up
    t = np.arange(len(y)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t), np.ones_like(t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    fit = basis @ coef
    noise = y - fit
    snr = 10 * np.log10(np.sum(fit ** 2) / max(np.sum(noise ** 2), 1e-9))
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(snr), float(np.argmax(spectrum) * rate / len(y))


def through(source: AudioFormat, sink: AudioFormat, freq: float, seconds: float = 1.0) -> list[bytes]:
    channel = Channel(source, sink, rng=random.Random(7))
    out = []
    for datagram in packets(source, tone(source.sample_rate, freq, int(source.sample_rate * seconds))):
        out.extend(channel.receive(datagram))
    return out


PAIRS = [("PCMU", "opus"), ("opus", "PCMU"), ("PCMU", "G722"), ("G722", "PCMU"), ("PCMA", "PCMU"),
         ("PCMU", "PCMA"), ("G722", "opus"), ("opus", "G722"), ("L16", "PCMU"), ("PCMU", "L16"),
         ("PCMU", "PCMU")]


@pytest.mark.parametrize(("src", "dst"), PAIRS)
@pytest.mark.parametrize("freq", [440.0, 1000.0])
def test_a_tone_comes_out_at_its_frequency_and_clean(src: str, dst: str, freq: float) -> None:
    source, sink = FORMATS[src], FORMATS[dst]
    out = through(source, sink, freq)
    pcm = decode_all(sink, out)
    snr, peak = snr_and_peak(pcm, make_decoder(sink).rate, freq)
    assert abs(peak - freq) < 2.0, f"{src}->{dst}: peak at {peak:.1f} Hz"
    assert snr >= min(THRESHOLD[src], THRESHOLD[dst]), f"{src}->{dst}: SNR {snr:.1f} dB"


def headers(datagrams: list[bytes]) -> list[tuple[int, bool, int, int, int]]:
    return [split(d)[:5] for d in datagrams]


def assert_continuous(datagrams: list[bytes], ticks: int) -> None:
    hs = headers(datagrams)
    assert len({h[4] for h in hs}) == 1, "one SSRC"
    for a, b in itertools.pairwise(hs):
        assert b[2] == (a[2] + 1) % 65536
        assert b[3] == (a[3] + ticks) % 2**32


def test_output_sequence_and_timestamp_run_on_across_a_new_input_ssrc_and_wraps() -> None:
    source, sink = FORMATS["PCMU"], FORMATS["opus"]
    channel = Channel(source, sink, rng=random.Random(1))
    channel.out_seq, channel.out_ts = 65530, 2**32 - 2000
    pcm = tone(8000, 440, 8000)
    out = [o for d in packets(source, pcm[:4000], ssrc=1) for o in channel.receive(d)]
    out += [o for d in packets(source, pcm[4000:], ssrc=2, seq=7, ts=99) for o in channel.receive(d)]
    assert len(out) == 50
    assert_continuous(out, 960)
    assert split(out[0])[1] is True and not any(split(d)[1] for d in out[1:25])


def test_a_codec_change_keeps_the_output_stream() -> None:
    channel = Channel(FORMATS["PCMU"], FORMATS["opus"], rng=random.Random(2))
    pcm = tone(8000, 440, 4000)
    out = [o for d in packets(FORMATS["PCMU"], pcm) for o in channel.receive(d)]
    channel.set_formats(FORMATS["G722"], FORMATS["opus"])  # the other side's re-INVITE
    out += [o for d in packets(FORMATS["G722"], tone(16000, 440, 8000), ssrc=9) for o in channel.receive(d)]
    assert_continuous(out, 960)


@pytest.mark.parametrize(("ptime_in", "ptime_out"), [(20, 40), (40, 20), (10, 30), (30, 10), (20, 60)])
def test_ptime_is_converted(ptime_in: int, ptime_out: int) -> None:
    source = AudioFormat.of("PCMU", 0, ptime_ms=ptime_in)
    sink = AudioFormat.of("PCMA", 8, ptime_ms=ptime_out)
    channel = Channel(source, sink, rng=random.Random(3))
    out = [o for d in packets(source, tone(8000, 1000, 9600)) for o in channel.receive(d)]
    assert len(out) == 9600 // (8 * ptime_out)
    assert all(len(split(d)[5]) == 8 * ptime_out for d in out)
    assert_continuous(out, 8 * ptime_out)
    snr, peak = snr_and_peak(decode_all(sink, out), 8000, 1000.0)
    assert snr >= 30 and abs(peak - 1000) < 2


def test_lost_packets_are_concealed_and_the_output_has_no_gap() -> None:
    source, sink = FORMATS["G722"], FORMATS["PCMU"]
    channel = Channel(source, sink, rng=random.Random(4))
    sent = packets(source, tone(16000, 440, 16000))
    del sent[20], sent[30:32]  # one lost, then two in a row
    out = [o for d in sent for o in channel.receive(d)]
    assert channel.stats.concealed == 3
    assert len(out) == 50
    assert_continuous(out, 160)


def test_reordered_packets_are_put_back_in_order_and_a_late_one_deepens_the_buffer() -> None:
    source, sink = FORMATS["PCMU"], FORMATS["PCMA"]
    channel = Channel(source, sink, rng=random.Random(5))
    sent = packets(source, tone(8000, 1000, 8000))
    sent[10], sent[11] = sent[11], sent[10]
    late = sent.pop(20)
    sent.insert(23, late)  # three places late: after its place was concealed (depth 1)
    out = [o for d in sent for o in channel.receive(d)]
    assert channel.stats.late == 1 and channel.stats.concealed == 1
    assert channel.stats.depth == 2
    assert len(out) == 50
    assert_continuous(out, 160)
    snr, _ = snr_and_peak(np.concatenate([decode_all(sink, out[:19]), decode_all(sink, out[21:])]),
                          8000, 1000.0)
    assert snr >= 25


def event(seq: int, ts: int, digit: int, end: bool, duration: int, pt: int = 101, ssrc: int = 0x1234,
          marker: bool = False) -> bytes:
    return struct.pack("!BBHIIBBH", 0x80, (0x80 if marker else 0) | pt, seq, ts, ssrc, digit,
                       (0x80 if end else 0) | 10, duration)


def test_telephone_events_cross_with_timestamps_moved_and_durations_rescaled() -> None:
    source, sink = FORMATS["PCMU"], FORMATS["opus"]
    channel = Channel(source, sink, rng=random.Random(6))
    audio = packets(source, tone(8000, 440, 1600), seq=100, ts=8000)  # 10 packets, ts 8000..9440
    out = [o for d in audio[:5] for o in channel.receive(d)]
    # Digit 5 starting at the 6th frame's instant (ts 8800), 100 ms long, sent as RFC 4733 §2.5 does.
    evs = [event(105, 8800, 5, False, 400, marker=True), event(106, 8800, 5, False, 800),
           event(107, 8800, 5, True, 800), event(108, 8800, 5, True, 800)]
    got = [o for d in evs for o in channel.receive(d)]
    assert len(got) == 4
    hs = headers(got)
    assert {h[0] for h in hs} == {110} and len({h[3] for h in hs}) == 1
    assert [h[1] for h in hs] == [True, False, False, False]
    # The event starts where the 6th input frame starts in the output: 5 frames of 960 after the first.
    assert hs[0][3] == (split(out[0])[3] + 5 * 960) % 2**32
    assert [struct.unpack("!H", split(d)[5][2:4])[0] for d in got] == [2400, 4800, 4800, 4800]
    assert split(got[-1])[5][1] & 0x80
    seqs = [split(d)[2] for d in out + got]
    assert seqs == [(seqs[0] + i) % 65536 for i in range(len(seqs))]


def test_events_are_dropped_toward_a_side_without_telephone_event() -> None:
    sink = AudioFormat.of("PCMA", 8)
    channel = Channel(FORMATS["PCMU"], sink, rng=random.Random(8))
    assert channel.receive(event(1, 0, 1, False, 160)) == []
    assert channel.stats.events == 0


def test_same_codec_is_relayed_without_decoding_with_our_ssrc_seq_and_ts() -> None:
    source = FORMATS["opus"]
    sink = AudioFormat.of("opus", 96, 48000, dtmf_payload_type=97)
    channel = Channel(source, sink, rng=random.Random(9))
    assert channel.relay
    sent = packets(source, tone(48000, 440, 48000 // 5))
    out = [o for d in sent for o in channel.receive(d)]
    assert [split(d)[5] for d in out] == [split(d)[5] for d in sent]
    assert {split(d)[0] for d in out} == {96}
    assert_continuous(out, 960)
    later = packets(source, tone(48000, 440, 960 * 3), ssrc=77, seq=5000, ts=123)
    more = [o for d in later for o in channel.receive(d)]
    assert_continuous(out + more, 960)
    assert split(more[0])[1] is True


@pytest.mark.parametrize("data", [b"", b"\x80" * 5, b"\x40" + bytes(20), bytes([0x80, 0x00]) + bytes(10),
                                  bytes([0x8F, 0x00]) + bytes(20),
                                  bytes([0x90, 0]) + bytes(10) + b"\x00\x00\xff\xff"])
def test_malformed_packets_are_counted_and_dropped(data: bytes) -> None:
    channel = Channel(FORMATS["PCMU"], FORMATS["G722"], rng=random.Random(10))
    assert channel.receive(data) == [] or data[:2] == bytes([0x80, 0x00])
    assert channel.stats.bad + channel.stats.received == 1


def test_a_payload_type_the_side_did_not_offer_is_dropped() -> None:
    channel = Channel(FORMATS["PCMU"], FORMATS["G722"], rng=random.Random(11))
    datagram = packets(FORMATS["PCMA"], tone(8000, 440, 160))[0]
    assert channel.receive(datagram) == []
    assert channel.stats.bad == 1


def test_a_corrupt_opus_payload_is_concealed_not_raised() -> None:
    channel = Channel(FORMATS["opus"], FORMATS["PCMU"], rng=random.Random(12))
    good = packets(FORMATS["opus"], tone(48000, 440, 960 * 3))
    bad = good[1][:12] + b"\xff" * 3
    out = [o for d in (good[0], bad, good[2]) for o in channel.receive(d)]
    assert len(out) == 3


def test_a_relayed_packet_is_rewritten_in_place_header_only() -> None:
    source = FORMATS["PCMU"]
    sink = AudioFormat.of("PCMU", 0, 8000)
    channel = Channel(source, sink, ssrc=0xABCD, rng=random.Random(13))
    # One CSRC (CC=1) and a payload: only PT/marker, sequence, timestamp and SSRC may change.
    data = struct.pack("!BBHIII", 0x81, 0, 7, 1120, 0x5555, 0x0C0C0C0C) + b"\x11" * 160
    buf = bytearray(data)
    assert channel.relay_into(buf, len(buf))
    assert buf[12:] == data[12:]
    first, second, _, _, ssrc = struct.unpack_from("!BBHII", buf)
    assert (first, second & 0x7F, ssrc) == (0x81, 0, 0xABCD)
    assert channel.stats.octets == 160
    assert not channel.relay_into(bytearray(b"\x80\x00\x00"), 3)
    assert channel.stats.bad == 1
