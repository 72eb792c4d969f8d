"""Per-message compression of channel messages: zstd with the transit dictionary, and deflate.

Two wire variants, both *stateless per message*, so one compressed frame is
built once per publish (per profile) and shared by every subscriber:

* **zstd** (WebSocket subprotocol ``fastgw.v1.zstd``): each ``channel_message``
  envelope is one binary frame holding one independent zstd frame, compressed
  with the dictionary packaged as ``fastgw/data/zstd-transit-v1.dict`` (trained
  by ``scripts/train_zstd_dictionary.py``). The frame header carries no
  dictionary id, no checksum and no content size (a 6-byte header and no
  trailer: 9 bytes less per message than zstd's defaults; see
  ``/work/shared/design/PERFORMANCE-NOTES.md``): the client knows the
  dictionary from the handshake (``welcome.compression.dictId``, bytes at
  ``GET /dict/{id}``) and WebSocket framing already delimits and protects the
  message. Use :func:`load_codec`; :func:`decompress_message` is what a client
  does.
* **permessage-deflate without context takeover** (RFC 7692):
  :func:`deflate_message` / :func:`inflate_message`; the frame goes out with
  RSV1 set.

Compressors are not thread-safe; the gateway uses them from its event loop
thread only.
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from importlib import resources

import zstandard

__all__ = [
    "CompressionError",
    "PayloadTooLarge",
    "ZstdCodec",
    "load_codec",
    "decompress_message",
    "deflate_message",
    "inflate_message",
    "make_compressor",
    "DICTIONARY_FILE",
    "DEFAULT_LEVEL",
]

#: The packaged dictionary (``fastgw/data/``); the name's ``v1`` is the subprotocol version.
DICTIONARY_FILE = "zstd-transit-v1.dict"

#: zstd level of :class:`ZstdCodec`, paid once per message per profile. Held-out
#: simulator envelopes, packaged dictionary (scripts/train_zstd_dictionary.py prints the
#: sweep): levels 1-5 give 113-115 B per cellular message at 1.3-3.2 µs; 6-9 save 4-7 %
#: at 8-11 µs (5-7x the CPU); 15-19 save 8 % at 35-90 µs. Level 3 is the knee.
DEFAULT_LEVEL = 3

#: Smallest zstd window (``ZSTD_WINDOWLOG_MIN`` = 10).
_MIN_WINDOW = 1 << 10
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: The empty stored block that ends a SYNC_FLUSH; removed on the wire (RFC 7692 §7.2.1).
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


class CompressionError(ValueError):
    """Compressed data that cannot be accepted: corrupt, truncated, trailing bytes, bad parameters."""


class PayloadTooLarge(CompressionError):
    """The data would decompress to more than the allowed size."""


def make_compressor(
    dictionary: bytes | zstandard.ZstdCompressionDict, level: int = DEFAULT_LEVEL
) -> zstandard.ZstdCompressor:
    """A compressor producing the codec's frames: one frame per call, no dict id, checksum or content size.

    (The dictionary is not precomputed on purpose: a ``CDict`` precomputed at
    one level silently overrides the compressor's ``level``; the compression
    context builds and keeps its own digested copy after the first call.)
    """
    if not isinstance(dictionary, zstandard.ZstdCompressionDict):
        dictionary = zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_FULLDICT)
    return zstandard.ZstdCompressor(
        dict_data=dictionary,
        level=level,
        write_checksum=False,
        write_content_size=False,
        write_dict_id=False,
    )


def _window_limit(max_size: int) -> int:
    """Largest zstd window accepted for output of at most ``max_size`` bytes.

    A frame never needs a window larger than its content, and zstd's one-shot
    compression (``ZSTD_compress``, ``ZstdCompressor.compress``) declares at
    most the input size rounded up to a power of two (at least 1 KiB). Larger
    windows would only make the decoder allocate more.
    """
    return max(_MIN_WINDOW, 1 << max(0, max_size - 1).bit_length())


class ZstdCodec:
    """Stateless per-message zstd with the packaged transit dictionary.

    ``compress`` returns one independent zstd frame per message (no dictionary
    id, checksum or content size in its header). ``decompress`` reads one such
    frame from a client, with a bound on the output.
    """

    __slots__ = ("dict_id", "dictionary", "level", "_compress", "_dctx")

    dict_id: int
    dictionary: bytes

    def __init__(self, dictionary: bytes, level: int = DEFAULT_LEVEL) -> None:
        try:
            zdict = zstandard.ZstdCompressionDict(bytes(dictionary), dict_type=zstandard.DICT_TYPE_FULLDICT)
            dict_id = zdict.dict_id()
        except zstandard.ZstdError as exc:
            raise ValueError(f"not a zstd dictionary: {exc}") from None
        if not dict_id:
            raise ValueError("the zstd dictionary has no id")
        #: The dictionary's own zstd id (in its header), announced to clients.
        self.dict_id = dict_id
        #: Raw dictionary bytes, served at ``GET /dict/{dict_id}``.
        self.dictionary = bytes(dictionary)
        self.level = level
        self._compress = make_compressor(zdict, level).compress
        self._dctx = zstandard.ZstdDecompressor(dict_data=zdict)

    def __repr__(self) -> str:
        return f"ZstdCodec(dict_id={self.dict_id}, {len(self.dictionary)} bytes, level={self.level})"

    def compress(self, payload: bytes) -> bytes:
        """One independent zstd frame holding ``payload``."""
        return self._compress(payload)

    def decompress(self, data: bytes, max_size: int) -> bytes:
        """Decompress one zstd frame (a client's binary message) of at most ``max_size`` bytes.

        Raises :class:`PayloadTooLarge` if the output would exceed ``max_size``
        (decoding stops after ``max_size`` bytes) and :class:`CompressionError`
        for anything that is not exactly one complete, valid zstd frame for
        this dictionary: corrupt, truncated, trailing bytes, a skippable frame,
        or a window larger than ``max_size`` of output needs (streaming
        compressors that do not know the size declare MiB windows: clients
        must compress each message in one call, e.g. ``ZSTD_compress``).
        Memory: one output buffer of ``max_size`` bytes plus zstd's window (at
        most ``max_size`` + the dictionary size, rounded up to a power of two)
        and block buffers. A valid frame is decoded twice (the second time
        only to find trailing bytes): about 1 µs for a small command.
        """
        if max_size < 0:
            raise ValueError("max_size must be >= 0")
        if bytes(data[:4]) != _ZSTD_MAGIC:  # also refuses skippable frames
            raise CompressionError("not a zstd frame")
        try:
            params = zstandard.get_frame_parameters(data)
        except zstandard.ZstdError as exc:
            raise CompressionError(f"not a zstd frame: {exc}") from None
        if params.content_size != zstandard.CONTENTSIZE_UNKNOWN and params.content_size > max_size:
            raise PayloadTooLarge(f"frame content size {params.content_size} exceeds {max_size} bytes")
        window_limit = _window_limit(max_size + len(self.dictionary))
        if params.window_size > window_limit:
            raise CompressionError(
                f"zstd window of {params.window_size} bytes is larger than {max_size} bytes of output need "
                f"({window_limit}); compress each message in one call (ZSTD_compress)"
            )
        dctx = self._dctx
        try:
            # Bounded: one buffer of max_output_size; truncated, corrupt or larger output raises.
            # (max_output_size=0 would mean "no limit": ask for at least 1 byte, check below.)
            out = dctx.decompress(data, max_output_size=max(max_size, 1), allow_extra_data=False)
            if len(out) > max_size:
                raise PayloadTooLarge(f"decompressed size exceeds {max_size} bytes")
            # decompress() ignores bytes after a frame that has no content size. Decoding the
            # same (now known to be small) frame again with decompressobj() reports them.
            if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
                check = dctx.decompressobj(write_size=max(len(out), 1))
                check.decompress(data)
                if check.unused_data:
                    raise CompressionError(f"{len(check.unused_data)} bytes after the zstd frame")
        except zstandard.ZstdError as exc:
            raise _failure(dctx, data, max_size, exc) from None
        return out


def _failure(dctx: zstandard.ZstdDecompressor, data: bytes, max_size: int, exc: Exception) -> CompressionError:
    """Tell "too large" from "corrupt" after a failed ``decompress`` (error path only, bounded work)."""
    try:
        with dctx.stream_reader(data) as reader:
            produced = len(reader.read(max_size + 1))
    except zstandard.ZstdError as exc2:
        return CompressionError(f"corrupt zstd frame: {exc2}")
    if produced > max_size:
        return PayloadTooLarge(f"decompressed size exceeds {max_size} bytes")
    return CompressionError(f"invalid zstd frame: {exc}")


@lru_cache(maxsize=1)
def load_codec() -> ZstdCodec:
    """The codec with the packaged dictionary ``fastgw/data/zstd-transit-v1.dict`` (loaded once)."""
    dictionary = resources.files("fastgw").joinpath("data", DICTIONARY_FILE).read_bytes()
    return ZstdCodec(dictionary)


def decompress_message(data: bytes, dictionary: bytes, max_size: int = 1 << 20) -> bytes:
    """Decompress one ``fastgw.v1.zstd`` binary message, as a third-party client would.

    Uses only the public ``zstandard`` API (python-zstandard; ``allow_extra_data``
    needs 0.19 or later). Errors come out as :class:`CompressionError`
    (:class:`PayloadTooLarge` when the output would exceed ``max_size``). The
    client code, once per connection and then per binary message::

        import json
        import zstandard

        # dictionary = body of GET /dict/{id}, id from welcome["compression"]["dictId"]
        dctx = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary))

        # Per binary message. The frame has no content size, so give the bound:
        # one output buffer of max_output_size bytes is allocated, and a frame
        # that is truncated, corrupt or larger than that raises ZstdError.
        text = dctx.decompress(data, max_output_size=1 << 20, allow_extra_data=False)
        envelope = json.loads(text)

    Why not the streaming APIs: ``dctx.stream_reader(data).read(n)`` bounds
    the output as well but returns a *truncated* frame's partial output
    without an error, and ``dctx.decompressobj().decompress(data)`` has no
    output bound at all (check ``.eof`` after it if you use it anyway). This
    helper uses ``stream_reader`` only after a failure, to tell "larger than
    max_size" from "corrupt". Bytes after a complete frame are not detected by
    python-zstandard for frames without a content size; WebSocket framing
    makes them impossible in practice (:meth:`ZstdCodec.decompress` checks).
    In C: ``ZSTD_decompressStream`` or ``ZSTD_decompress_usingDDict`` with a
    DDict of the same bytes; the frame names no dictionary id, so the decoder
    must be given the dictionary explicitly.
    """
    if max_size < 0:
        raise ValueError("max_size must be >= 0")
    try:
        content_size = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise CompressionError(f"not a zstd frame: {exc}") from None
    if content_size > max_size:  # -1: not in the header (what the gateway sends)
        raise PayloadTooLarge(f"frame content size {content_size} exceeds {max_size} bytes")
    dctx = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary))
    try:
        out = dctx.decompress(data, max_output_size=max(max_size, 1), allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise _failure(dctx, data, max_size, exc) from None
    if len(out) > max_size:
        raise PayloadTooLarge(f"decompressed size exceeds {max_size} bytes")
    return out


def deflate_message(payload: bytes, level: int = 6) -> bytes:
    """One message compressed for permessage-deflate without context takeover (RFC 7692 §7.2.1).

    Raw DEFLATE (``wbits=-15``) from a fresh compressor, ``Z_SYNC_FLUSH``, the
    trailing ``00 00 ff ff`` removed. Send it with RSV1 set. Any
    permessage-deflate client decodes it, whatever context-takeover mode it
    negotiated: the message references nothing before it.
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if not data.endswith(_DEFLATE_TAIL):  # a sync flush always ends with an empty stored block
        raise RuntimeError("zlib sync flush did not end with 00 00 ff ff")
    return data[:-4]


def inflate_message(data: bytes, max_size: int) -> bytes:
    """Decompress one permessage-deflate message (``00 00 ff ff`` appended back), at most ``max_size`` bytes.

    Raises :class:`PayloadTooLarge` past ``max_size`` (zlib stops at
    ``max_size`` + 1 bytes of output) and :class:`CompressionError` for invalid
    DEFLATE data or bytes after a final block. (A message cut short at a
    block boundary cannot be told from a complete one; WebSocket framing
    guarantees whole messages.)
    """
    if max_size < 0:
        raise ValueError("max_size must be >= 0")
    inflater = zlib.decompressobj(-15)
    try:
        out = inflater.decompress(bytes(data) + _DEFLATE_TAIL, max_size + 1)
    except zlib.error as exc:
        raise CompressionError(f"invalid deflate data: {exc}") from None
    if len(out) > max_size:
        raise PayloadTooLarge(f"inflated size exceeds {max_size} bytes")
    if inflater.eof and inflater.unused_data not in (b"", _DEFLATE_TAIL):
        raise CompressionError("data after the final deflate block")
    return out
