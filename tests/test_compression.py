"""Per-message compression: zstd with the packaged dictionary, and permessage-deflate.

Checked with independent decoders where one exists: plain ``zstandard`` with
the dictionary bytes (what a third-party client does) and ``websockets``'
permessage-deflate extension. Frame headers are parsed by hand per RFC 8878.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

from fastgw.compression import (
    DICTIONARY_FILE,
    CompressionError,
    PayloadTooLarge,
    ZstdCodec,
    decompress_message,
    deflate_message,
    inflate_message,
    load_codec,
)
from fastgw.protocol.native import channel_message
from fastgw.sources.simulator import SYSTEM_CHANNEL, Simulator

REPO = Path(__file__).resolve().parents[1]
DICT_PATH = REPO / "fastgw" / "data" / DICTIONARY_FILE
TRAIN_SCRIPT = REPO / "scripts" / "train_zstd_dictionary.py"
KIB = 1024


@pytest.fixture(scope="module")
def codec() -> ZstdCodec:
    return load_codec()


@pytest.fixture(scope="module")
def envelopes() -> list[bytes]:
    """Real ``channel_message`` envelopes from the simulator (a seed and time unlike the training's)."""
    published: list[tuple[str, dict]] = []
    sim = Simulator(lambda ch, m: published.append((ch, m)), max_buses=40, seed=99, clock=lambda: 0.0)
    start = 1_900_000_000.25  # 2030-03-17
    for tick in range(3):
        sim.step(start + tick)
    out = [
        channel_message(ch, m, "2030-03-17T17:46:40.%03dZ" % (i % 1000), f"0badc0de-{i:x}")
        for i, (ch, m) in enumerate(published)
        if ch != SYSTEM_CHANNEL
    ]
    assert len(out) >= 100
    return out


def parse_frame_header(frame: bytes) -> dict:
    """The zstd frame header fields, per RFC 8878 §3.1.1 (Frame_Header_Descriptor: §3.1.1.1.1)."""
    assert frame[:4] == b"\x28\xb5\x2f\xfd", "magic number"
    fhd = frame[4]
    fcs_flag = fhd >> 6
    single_segment = (fhd >> 5) & 1
    reserved = (fhd >> 3) & 1
    checksum = (fhd >> 2) & 1
    did_flag = fhd & 3
    did_size = (0, 1, 2, 4)[did_flag]
    fcs_size = (single_segment, 2, 4, 8)[fcs_flag]  # flag 0: 1 byte if single segment, else absent
    window_descriptor = 0 if single_segment else 1
    return {
        "fcs_flag": fcs_flag,
        "single_segment": single_segment,
        "reserved": reserved,
        "checksum": checksum,
        "did_flag": did_flag,
        "header_size": 4 + 1 + window_descriptor + did_size + fcs_size,
    }


# --------------------------------------------------------------------------- packaged dictionary


def test_packaged_dictionary_loads_and_id_matches_file(codec):
    raw = DICT_PATH.read_bytes()
    assert codec.dictionary == raw
    assert 4 * KIB <= len(raw) <= 64 * KIB
    assert raw[:4] == b"\x37\xa4\x30\xec"  # zstd dictionary magic (RFC 8878 §5)
    file_id = int.from_bytes(raw[4:8], "little")
    assert codec.dict_id == file_id == zstandard.ZstdCompressionDict(raw).dict_id()
    assert 32_768 <= codec.dict_id < 2**31  # outside the ranges zstd reserves
    assert load_codec() is codec  # cached


def test_codec_rejects_a_non_dictionary():
    with pytest.raises(ValueError):
        ZstdCodec(b"not a dictionary" * 100)


# --------------------------------------------------------------------------- zstd round trips


def test_codec_round_trip_simulator_envelopes(codec, envelopes):
    for env in envelopes:
        frame = codec.compress(env)
        assert len(frame) < len(env) / 3
        assert codec.decompress(frame, 64 * KIB) == env


def test_decompress_message_needs_only_zstandard_and_the_dictionary_bytes(codec, envelopes):
    dictionary = DICT_PATH.read_bytes()
    # The exact client code of decompress_message's docstring:
    dctx = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary))
    for env in envelopes:
        frame = codec.compress(env)
        assert dctx.decompress(frame, max_output_size=1 << 20, allow_extra_data=False) == env
        assert decompress_message(frame, dictionary) == env


@pytest.mark.parametrize("size", [0, 1, 100, 4 * KIB, 64 * KIB, 200 * KIB])
def test_codec_round_trip_sizes(codec, size):
    payload = (os.urandom(size // 2) + b'{"type":"location_update"}' * size)[:size]
    frame = codec.compress(payload)
    assert codec.decompress(frame, max(size, 1)) == payload
    assert decompress_message(frame, codec.dictionary, max_size=size) == payload
    if size:
        with pytest.raises(PayloadTooLarge):
            codec.decompress(frame, size - 1)
        with pytest.raises(PayloadTooLarge):
            decompress_message(frame, codec.dictionary, max_size=size - 1)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=3000))
def test_codec_round_trip_any_bytes(codec, payload):
    frame = codec.compress(payload)
    assert codec.decompress(frame, 3000) == payload
    assert decompress_message(frame, codec.dictionary, 3000) == payload


def test_codec_accepts_frames_from_a_standard_one_shot_compressor(codec, envelopes):
    """A client may compress with default settings (content size, dict id, checksum in the frame)."""
    cctx = zstandard.ZstdCompressor(dict_data=zstandard.ZstdCompressionDict(codec.dictionary), write_checksum=True)
    frame = cctx.compress(envelopes[0])
    assert parse_frame_header(frame)["did_flag"] and parse_frame_header(frame)["checksum"]
    assert codec.decompress(frame, 64 * KIB) == envelopes[0]


# --------------------------------------------------------------------------- the frame header


def test_frame_header_has_no_dict_id_checksum_or_content_size(codec, envelopes):
    for env in envelopes[:200] + [b"", b"x", b"y" * 70_000]:
        frame = codec.compress(env)
        h = parse_frame_header(frame)
        assert h["fcs_flag"] == 0 and h["single_segment"] == 0, "no Frame_Content_Size field"
        assert h["checksum"] == 0, "no Content_Checksum"
        assert h["did_flag"] == 0, "no Dictionary_ID field"
        assert h["reserved"] == 0
        assert h["header_size"] == 6  # magic + descriptor + window descriptor
        assert zstandard.frame_header_size(frame) == 6
        params = zstandard.get_frame_parameters(frame)
        assert params.content_size == zstandard.CONTENTSIZE_UNKNOWN
        assert params.dict_id == 0 and not params.has_checksum
        # Last block ends the frame: no 4-byte checksum after it.
        block = int.from_bytes(frame[6:9], "little")
        if block & 1:
            kind, size = (block >> 1) & 3, block >> 3
            assert len(frame) == 9 + (1 if kind == 1 else size)


# --------------------------------------------------------------------------- bad input


def _bomb(repeats: int, *, filler: bytes = b"\0", dictionary: bytes | None = None, content_size: bool = False,
          window_log: int | None = None) -> bytes:
    zdict = zstandard.ZstdCompressionDict(dictionary) if dictionary else None
    if window_log is None:
        cctx = zstandard.ZstdCompressor(dict_data=zdict, write_content_size=content_size, write_dict_id=False)
    else:
        params = zstandard.ZstdCompressionParameters.from_level(
            3, window_log=window_log, write_content_size=content_size, write_dict_id=False
        )
        cctx = zstandard.ZstdCompressor(dict_data=zdict, compression_params=params)
    return cctx.compress(filler * repeats)


def test_zstd_bomb_is_refused_quickly(codec):
    """10 MB of zeros, no content size: its 2 MiB window alone gets it refused, before decoding."""
    bomb = _bomb(10_000_000, dictionary=codec.dictionary)
    assert len(bomb) < 1000
    assert zstandard.get_frame_parameters(bomb).window_size == 2 << 20
    t0 = time.perf_counter()
    with pytest.raises(CompressionError):
        codec.decompress(bomb, 64 * KIB)
    # The client helper has no window check: decoding stops at the bound.
    with pytest.raises(PayloadTooLarge):
        decompress_message(bomb, codec.dictionary, max_size=64 * KIB)
    assert time.perf_counter() - t0 < 0.05


@pytest.mark.parametrize("filler", [b"\0", b"ab"], ids=["zeros-rle-blocks", "ab-compressed-blocks"])
def test_zstd_bomb_with_a_small_window_stops_at_max_size_without_big_allocations(codec, filler):
    """10 MB with a window the limit allows (128 KiB): refused after at most max_size bytes of output.

    Zeros become RLE blocks, ``abab...`` compressed blocks of long matches.
    """
    bomb = _bomb(10_000_000 // len(filler), filler=filler, dictionary=codec.dictionary, window_log=17)
    assert len(bomb) < 2000
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        with pytest.raises(PayloadTooLarge):
            codec.decompress(bomb, 64 * KIB)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.05
    assert peak < 2 * 64 * KIB + 16 * KIB  # output buffers of ~max_size, never 10 MB


def test_declared_content_size_over_the_limit_is_refused_before_decoding(codec):
    bomb = _bomb(10_000_000, dictionary=codec.dictionary, content_size=True)
    t0 = time.perf_counter()
    with pytest.raises(PayloadTooLarge):
        codec.decompress(bomb, 64 * KIB)
    with pytest.raises(PayloadTooLarge):
        decompress_message(bomb, codec.dictionary, max_size=64 * KIB)
    assert time.perf_counter() - t0 < 0.05


def test_a_window_larger_than_the_limit_needs_is_refused(codec):
    """Streaming compressors that don't know the size declare MiB windows; the decoder would allocate them."""
    cctx = zstandard.ZstdCompressor(dict_data=zstandard.ZstdCompressionDict(codec.dictionary))
    cobj = cctx.compressobj()
    frame = cobj.compress(b'{"type":"ping"}') + cobj.flush()
    assert zstandard.get_frame_parameters(frame).window_size > 64 * KIB
    with pytest.raises(CompressionError, match="window"):
        codec.decompress(frame, 64 * KIB)


CORRUPT = {
    "empty": b"",
    "garbage": b"definitely not zstd",
    "magic only": b"\x28\xb5\x2f\xfd",
    "skippable frame": b"\x50\x2a\x4d\x18\x04\x00\x00\x00abcd",
}


@pytest.mark.parametrize("data", list(CORRUPT.values()), ids=list(CORRUPT))
def test_corrupt_input_raises_compression_error(codec, data):
    with pytest.raises(CompressionError):
        codec.decompress(data, 64 * KIB)
    with pytest.raises(CompressionError):
        decompress_message(data, codec.dictionary)


def test_truncated_and_trailing_bytes_are_refused(codec, envelopes):
    frame = codec.compress(envelopes[0])
    for bad in (frame[:-1], frame[: len(frame) // 2], frame + b"\0", frame + frame):
        with pytest.raises(CompressionError) as info:
            codec.decompress(bad, 64 * KIB)
        assert not isinstance(info.value, PayloadTooLarge)
    for bad in (frame[:-1], frame[: len(frame) // 2]):  # the client helper: trailing bytes go unnoticed
        with pytest.raises(CompressionError):
            decompress_message(bad, codec.dictionary)


def test_flipped_bytes_never_escape_as_other_errors(codec, envelopes):
    frame = codec.compress(envelopes[1])
    for i in range(len(frame)):
        for flip in (0x01, 0x80, 0xFF):
            bad = frame[:i] + bytes([frame[i] ^ flip]) + frame[i + 1 :]
            try:
                out = codec.decompress(bad, 64 * KIB)
            except CompressionError:
                continue
            assert len(out) <= 64 * KIB


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200), keep_magic=st.booleans())
def test_random_input_only_raises_compression_error(codec, data, keep_magic):
    if keep_magic:
        data = b"\x28\xb5\x2f\xfd" + data
    try:
        out = codec.decompress(data, 4 * KIB)
    except CompressionError:
        return
    assert len(out) <= 4 * KIB


def test_negative_max_size_is_a_caller_error(codec):
    with pytest.raises(ValueError):
        codec.decompress(codec.compress(b"x"), -1)


def test_exception_hierarchy():
    assert issubclass(PayloadTooLarge, CompressionError)
    assert issubclass(CompressionError, ValueError)


# --------------------------------------------------------------------------- training determinism


#: libzstd that trained the packaged dictionary; another version's fastCover may pick other bytes.
TRAINED_WITH_ZSTD = (1, 5, 7)


@pytest.mark.skipif(
    tuple(zstandard.ZSTD_VERSION) != TRAINED_WITH_ZSTD,
    reason=f"dictionary trained with libzstd {TRAINED_WITH_ZSTD}, this is {zstandard.ZSTD_VERSION}",
)
def test_training_script_reproduces_the_packaged_dictionary(tmp_path):
    """Same samples, same fastCover run (single thread), same bytes and id. ~10 s."""
    out = tmp_path / "zstd-transit-v1.dict"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "--output", str(out), "--quiet", "--no-unseen"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == DICT_PATH.read_bytes(), (
        "scripts/train_zstd_dictionary.py no longer reproduces fastgw/data/zstd-transit-v1.dict "
        "(the simulator, the reduction or zstd changed?): retrain, and clients get a new dict id\n" + proc.stdout
    )
    assert elapsed < 60


# --------------------------------------------------------------------------- permessage-deflate


def _websockets_decoder(*, no_context_takeover: bool = True) -> PerMessageDeflate:
    # As a client sees the server: "remote" is the server.
    return PerMessageDeflate(
        remote_no_context_takeover=no_context_takeover,
        local_no_context_takeover=True,
        remote_max_window_bits=15,
        local_max_window_bits=15,
    )


def test_websockets_permessage_deflate_decodes_deflate_message_exactly(envelopes):
    decoder = _websockets_decoder()
    for env in envelopes[:300]:
        data = deflate_message(env)
        frame = decoder.decode(Frame(Opcode.TEXT, data, rsv1=True), max_size=64 * KIB)
        assert frame.data == env and not frame.rsv1


def test_a_client_with_context_takeover_decodes_them_too(envelopes):
    """Each message references nothing before it, so a persistent client decoder is fine too."""
    decoder = _websockets_decoder(no_context_takeover=False)
    for env in envelopes[:100]:
        assert decoder.decode(Frame(Opcode.TEXT, deflate_message(env), rsv1=True)).data == env


def test_deflate_message_equals_websockets_own_encoder(envelopes):
    encoder = _websockets_decoder()  # local_no_context_takeover=True, default zlib settings (level 6)
    for env in envelopes[:100]:
        assert encoder.encode(Frame(Opcode.TEXT, env)).data == deflate_message(env)


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=5000), level=st.integers(0, 9))
def test_deflate_round_trip(payload, level):
    data = deflate_message(payload, level)
    assert inflate_message(data, 5000) == payload
    assert _websockets_decoder().decode(Frame(Opcode.BINARY, data, rsv1=True)).data == payload


def test_deflate_has_no_sync_tail_and_no_context():
    first = deflate_message(b"hello hello hello")
    assert not first.endswith(b"\x00\x00\xff\xff")
    assert deflate_message(b"hello hello hello") == first  # fresh compressor every time


def test_inflate_bounds_and_errors():
    bomb = deflate_message(b"\0" * 10_000_000)
    t0 = time.perf_counter()
    with pytest.raises(PayloadTooLarge):
        inflate_message(bomb, 64 * KIB)
    assert time.perf_counter() - t0 < 0.05
    assert inflate_message(deflate_message(b"a" * 100), 100) == b"a" * 100
    with pytest.raises(PayloadTooLarge):
        inflate_message(deflate_message(b"a" * 101), 100)
    with pytest.raises(CompressionError):
        inflate_message(b"\xff\xff\xff\xff garbage", 64 * KIB)
    # A final (BFINAL) block is allowed by RFC 7692 §7.2.3.4; bytes after it are not.
    final = zlib.compressobj(6, zlib.DEFLATED, -15)
    whole = final.compress(b"done") + final.flush(zlib.Z_FINISH)
    assert inflate_message(whole, 100) == b"done"
    with pytest.raises(CompressionError):
        inflate_message(whole + b"junk", 100)
