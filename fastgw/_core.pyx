# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled hot path: WebSocket framing, fan-out writes, wire profiles, batching.

Twin of ``fastgw/_core_py.py`` (the reference); both give byte-identical
results and the test suite runs against each. See that module for the
contract. This file keeps to functions over bytes, message dicts and
transports: no protocol logic lives here. ``_core.pxd`` declares what other
Cython code may ``cimport``.

Where a fast C path cannot be proven identical to the reference for every
input (float subclasses, non-list sequences, huge values), the code falls
back to the reference's Python expression instead of guessing.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Copy, PyDict_DelItem, PyDict_GetItem, PyDict_GetItemWithError, PyDict_SetItem
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.list cimport PyList_CheckExact, PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsDouble, PyLong_CheckExact, PyLong_FromDouble, PyLong_FromLongLong
from cpython.ref cimport PyObject
from cpython.unicode cimport PyUnicode_CheckExact, PyUnicode_DATA, PyUnicode_GET_LENGTH
from libc.math cimport fabs, isfinite
from libc.math cimport round as c_round
from libc.stdio cimport snprintf
from libc.string cimport memcpy

from orjson import dumps as _orjson_dumps

cdef object _float_round = float.__round__  # unbound: called as _float_round(x, ndigits)

cdef extern from "Python.h":
    # True if every code point is < 128 (then the 1-byte data is the UTF-8 encoding).
    bint PyUnicode_IS_ASCII(object o)

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

cdef enum:
    _FIN = 0x80
    _RSV1 = 0x40  # permessage-deflate (RFC 7692): "this message is compressed"
    _MAX_HEADER = 10


# --------------------------------------------------------------------------- framing


cdef inline Py_ssize_t _header_into(unsigned char* out, Py_ssize_t length, int opcode, bint rsv1) noexcept:
    """Write a frame header into ``out`` (room for ``_MAX_HEADER`` bytes); returns its size."""
    cdef int i
    out[0] = <unsigned char>(_FIN | opcode | (_RSV1 if rsv1 else 0))
    if length < 126:
        out[1] = <unsigned char>length
        return 2
    if length < 65536:
        out[1] = 126
        out[2] = <unsigned char>((length >> 8) & 0xFF)
        out[3] = <unsigned char>(length & 0xFF)
        return 4
    out[1] = 127
    for i in range(8):
        out[2 + i] = <unsigned char>((length >> (8 * (7 - i))) & 0xFF)
    return 10


cpdef bytes frame_header(Py_ssize_t length, int opcode=OP_TEXT, bint rsv1=False):
    """Header of a final, unmasked server-to-client WebSocket frame (RFC 6455 §5.2).

    ``rsv1`` sets the permessage-deflate "compressed" bit (RFC 7692 §6).
    """
    cdef unsigned char buf[_MAX_HEADER]
    cdef Py_ssize_t n = _header_into(buf, length, opcode, rsv1)
    return PyBytes_FromStringAndSize(<char*>buf, n)


cpdef bytes build_frame(bytes payload, int opcode=OP_TEXT, bint rsv1=False):
    """One complete frame: header + payload, built once and shared by every recipient."""
    cdef Py_ssize_t length = PyBytes_GET_SIZE(payload)
    cdef unsigned char head[_MAX_HEADER]
    cdef Py_ssize_t hlen = _header_into(head, length, opcode, rsv1)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hlen + length)
    cdef char* dst = PyBytes_AS_STRING(out)
    memcpy(dst, head, hlen)
    memcpy(dst + hlen, PyBytes_AS_STRING(payload), length)
    return out


cpdef bytes build_close_frame(int code, str reason=""):
    """A close frame carrying ``code`` and a UTF-8 reason (truncated to fit 125 bytes)."""
    cdef bytes body = bytes(((code >> 8) & 0xFF, code & 0xFF)) + reason.encode("utf-8")[:123]
    return build_frame(body, OP_CLOSE)


# --------------------------------------------------------------------------- write-many


def fanout(bytes frame, list transports, Py_ssize_t limit):
    """Write ``frame`` to every transport; return ``(written, overflowed_indices)``.

    A transport whose buffered bytes plus this frame would exceed ``limit`` is
    not written to and its index is reported; one already closed is skipped.
    """
    cdef Py_ssize_t room = limit - PyBytes_GET_SIZE(frame)
    cdef Py_ssize_t written = 0
    cdef Py_ssize_t i, n = PyList_GET_SIZE(transports)
    cdef list overflowed = []
    cdef object transport
    cdef Py_ssize_t buffered
    for i in range(n):
        transport = <object>PyList_GET_ITEM(transports, i)
        buffered = transport.get_write_buffer_size()
        if buffered > room:
            overflowed.append(i)
            continue
        try:
            transport.write(frame)
        except RuntimeError:  # closed under us; the server removes it shortly
            continue
        written += 1
    return written, overflowed


# --------------------------------------------------------------------------- wire profiles


cdef inline bint _is_finite_number(object value):
    """int or finite float: the values the rounding rules apply to (see the twin)."""
    if PyFloat_CheckExact(value):
        return isfinite(PyFloat_AS_DOUBLE(value))
    return isinstance(value, int) or (isinstance(value, float) and isfinite(<double>value))


cdef inline double _round_half_even(double x) noexcept:
    """CPython's ``round(float)`` step for step (``float.__round__`` without ndigits)."""
    cdef double rounded = c_round(x)  # half away from zero
    if fabs(x - rounded) == 0.5:
        rounded = 2.0 * c_round(x / 2.0)  # a tie: go to the even neighbour
    return rounded


cdef object _round_to(object value, object decimals):
    """``round(value, decimals)``: Python's own (correctly rounded decimal), not a C approximation.

    For a plain float, ``float.__round__`` is called directly: what ``round``
    does after looking the method up (and binding it, an allocation) per call.
    """
    if PyFloat_CheckExact(value):
        return _float_round(value, decimals)
    return round(value, decimals)


cdef object _reduced_speed(object speed):
    """``int(round(speed))``; C arithmetic for the common plain int/float."""
    if PyFloat_CheckExact(speed):
        return PyLong_FromDouble(_round_half_even(PyFloat_AS_DOUBLE(speed)))
    if PyLong_CheckExact(speed):
        return speed  # int(round(n)) is n
    return int(round(speed))  # bool, int/float subclasses: exactly the reference


cdef object _reduced_heading(object heading):
    """``int(round(heading / 5.0)) * 5 % 360``; C arithmetic for the common plain int/float."""
    cdef double x, steps
    cdef long long degrees
    if PyFloat_CheckExact(heading):
        x = PyFloat_AS_DOUBLE(heading)
    elif PyLong_CheckExact(heading):
        x = PyLong_AsDouble(heading)  # the conversion int / float does (OverflowError if huge)
    else:
        return int(round(heading / 5.0)) * 5 % 360  # bool, subclasses: the reference
    steps = _round_half_even(x / 5.0)
    if fabs(steps) >= 1e15:  # * 5 might not fit a long long: Python ints (same value)
        return PyLong_FromDouble(steps) * 5 % 360
    degrees = (<long long>steps * 5) % 360
    if degrees < 0:  # C's % truncates (cdivision); Python's floors
        degrees += 360
    return PyLong_FromLongLong(degrees)


cdef inline void _reduce_field(dict out, str key, object (*reduce)(object)) except *:
    """``out[key] = reduce(out[key])`` if the key is present and holds a finite number."""
    cdef PyObject* value = PyDict_GetItem(out, key)
    if value != NULL and _is_finite_number(<object>value):
        PyDict_SetItem(out, key, reduce(<object>value))


cdef inline void _discard(dict out, str key) except *:
    """``out.pop(key, None)``."""
    if PyDict_GetItem(out, key) != NULL:
        PyDict_DelItem(out, key)


cpdef dict reduce_location(dict message, object decimals, bint drop_confidence):
    """A smaller copy of a ``location_update`` payload for the low-bandwidth profiles.

    Latitude/longitude ``round(x, decimals)``; speed and heading (5° steps) as
    ints; ``contributor_count`` (and ``confidence`` if ``drop_confidence``)
    removed; ``metadata`` copied without ``quality_score``, dropped if empty.
    A new dict: the input is never mutated.
    """
    if message is None:
        raise TypeError("reduce_location() argument 'message' must be dict, not None")
    cdef dict out = PyDict_Copy(message)
    cdef PyObject* value
    cdef dict metadata
    for key in ("latitude", "longitude"):
        value = PyDict_GetItem(out, key)
        if value != NULL and _is_finite_number(<object>value):
            PyDict_SetItem(out, key, _round_to(<object>value, decimals))
    _reduce_field(out, "speed", _reduced_speed)
    _reduce_field(out, "heading", _reduced_heading)
    _discard(out, "contributor_count")
    if drop_confidence:
        _discard(out, "confidence")
    value = PyDict_GetItem(out, "metadata")
    if value != NULL and isinstance(<object>value, dict):
        metadata = PyDict_Copy(<object>value)
        _discard(metadata, "quality_score")
        if metadata:
            PyDict_SetItem(out, "metadata", metadata)
        else:
            PyDict_DelItem(out, "metadata")
    return out


cpdef dict strip_fields(dict message, object fields):
    """A new dict without the top-level keys in ``fields`` (absent ones are ignored)."""
    if message is None:
        raise TypeError("strip_fields() argument 'message' must be dict, not None")
    cdef dict out = PyDict_Copy(message)
    for field in fields:
        out.pop(field, None)
    return out


# --------------------------------------------------------------------------- batching

cdef bytes _BATCH_HEAD = b'{"type":"batched_messages","batches":['
cdef bytes _BATCH_COUNT = b'],"total_messages":'
cdef bytes _BATCH_STAMP = b',"batched_at":'
cdef bytes _BATCH_TAIL = b"}"


cdef bytes _encode_stamp(object batched_at):
    """``orjson.dumps(batched_at)``; built here for a plain ASCII string needing no escapes."""
    cdef Py_ssize_t i, n
    cdef const unsigned char* text
    cdef unsigned char c
    cdef bytes out
    cdef char* dst
    if not (PyUnicode_CheckExact(batched_at) and PyUnicode_IS_ASCII(batched_at)):
        return _orjson_dumps(batched_at)
    n = PyUnicode_GET_LENGTH(batched_at)
    text = <const unsigned char*>PyUnicode_DATA(batched_at)
    for i in range(n):
        c = text[i]
        if c < 0x20 or c == c'"' or c == c'\\':  # JSON escapes these: leave it to orjson
            return _orjson_dumps(batched_at)
    out = PyBytes_FromStringAndSize(NULL, n + 2)
    dst = PyBytes_AS_STRING(out)
    dst[0] = c'"'
    memcpy(dst + 1, text, n)
    dst[n + 1] = c'"'
    return out


cdef inline char* _put(char* dst, bytes data) noexcept:
    """Copy ``data`` to ``dst``; returns the end of what was written."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    memcpy(dst, PyBytes_AS_STRING(data), n)
    return dst + n


cdef Py_ssize_t _items_size(list items) noexcept:
    """Total size of ``items``, a list of bytes (checked by the caller)."""
    cdef Py_ssize_t i, total = 0
    for i in range(PyList_GET_SIZE(items)):
        total += PyBytes_GET_SIZE(<object>PyList_GET_ITEM(items, i))
    return total


cdef bint _is_bytes_list(object items) noexcept:
    """True for a plain list of bytes: what the C paths below accept."""
    cdef Py_ssize_t i
    if not PyList_CheckExact(items):
        return False
    for i in range(PyList_GET_SIZE(items)):
        if not PyBytes_Check(<object>PyList_GET_ITEM(items, i)):
            return False
    return True


cdef struct _BatchLayout:
    # sizes of one batched_messages payload, measured first so it is written with one allocation
    Py_ssize_t size
    Py_ssize_t count_len
    char count[24]  # total_messages in decimal


cdef void _measure_batch(_BatchLayout* layout, list items, bytes stamp) noexcept:
    cdef Py_ssize_t n = PyList_GET_SIZE(items)
    layout.count_len = snprintf(layout.count, sizeof(layout.count), "%zd", n)
    layout.size = (PyBytes_GET_SIZE(_BATCH_HEAD) + _items_size(items) + (n - 1 if n > 1 else 0)
                   + PyBytes_GET_SIZE(_BATCH_COUNT) + layout.count_len
                   + PyBytes_GET_SIZE(_BATCH_STAMP) + PyBytes_GET_SIZE(stamp)
                   + PyBytes_GET_SIZE(_BATCH_TAIL))


cdef void _write_batch(char* dst, const _BatchLayout* layout, list items, bytes stamp) noexcept:
    """Write the payload measured in ``layout`` at ``dst`` (``layout.size`` bytes)."""
    cdef Py_ssize_t i
    dst = _put(dst, _BATCH_HEAD)
    for i in range(PyList_GET_SIZE(items)):
        if i:
            dst[0] = c','
            dst += 1
        dst = _put(dst, <bytes>PyList_GET_ITEM(items, i))
    dst = _put(dst, _BATCH_COUNT)
    memcpy(dst, layout.count, layout.count_len)
    dst += layout.count_len
    dst = _put(dst, _BATCH_STAMP)
    dst = _put(dst, stamp)
    _put(dst, _BATCH_TAIL)


cpdef bytes build_batch(object items, object batched_at):
    """The ``batched_messages`` envelope around already-encoded JSON objects (see the twin)."""
    if not _is_bytes_list(items):  # a tuple, bytearrays...: the reference expression itself
        return (_BATCH_HEAD + b",".join(items) + _BATCH_COUNT + str(len(items)).encode()
                + _BATCH_STAMP + _orjson_dumps(batched_at) + _BATCH_TAIL)
    cdef bytes stamp = _encode_stamp(batched_at)
    cdef _BatchLayout layout
    _measure_batch(&layout, items, stamp)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, layout.size)
    _write_batch(PyBytes_AS_STRING(out), &layout, items, stamp)
    return out


cdef bytes _batch_frame(list items, bytes stamp):
    """``build_frame(build_batch(items, ...))`` with one allocation and one copy per item."""
    cdef _BatchLayout layout
    _measure_batch(&layout, items, stamp)
    cdef unsigned char head[_MAX_HEADER]
    cdef Py_ssize_t hlen = _header_into(head, layout.size, 0x1, False)  # OP_TEXT
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hlen + layout.size)
    cdef char* dst = PyBytes_AS_STRING(out)
    memcpy(dst, head, hlen)
    _write_batch(dst + hlen, &layout, items, stamp)
    return out


cdef bytes _concat(list items):
    """``b"".join(items)`` for a list of bytes."""
    cdef Py_ssize_t i
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _items_size(items))
    cdef char* dst = PyBytes_AS_STRING(out)
    for i in range(PyList_GET_SIZE(items)):
        dst = _put(dst, <bytes>PyList_GET_ITEM(items, i))
    return out


cdef class _Stamp:
    """``batched_at`` and its JSON encoding, made on first use and shared by a whole flush.

    Encoded lazily so that, as in the reference, a ``batched_at`` orjson cannot
    encode fails only where an envelope is built, after the queue was reset.
    """

    def __cinit__(self, object value):
        self.value = value
        self.encoded = None

    cdef bytes get(self):
        if self.encoded is None:
            self.encoded = _encode_stamp(self.value)
        return self.encoded


cdef class Batcher:
    """What one connection receives at its next flush: queued items, conflated by key.

    ``Batcher(transport, limit, envelope)``. ``envelope=False``: items are
    complete frames, written back to back in one ``write``. ``envelope=True``:
    items are encoded ``channel_message`` objects, sent as one
    ``batched_messages`` text frame (a lone item as its own frame).
    Declared in ``_core.pxd``; see ``fastgw/_core_py.py`` for the contract.
    """

    def __cinit__(self, object transport, Py_ssize_t limit, bint envelope):
        # __cinit__, not __init__: the list exists even if __init__ is bypassed
        self.transport = transport
        self.limit = limit
        self.envelope = envelope
        self._items = []
        self._index = None

    @property
    def pending(self) -> int:
        """Number of items queued (a conflated item counts once)."""
        return PyList_GET_SIZE(self._items)

    def add(self, bytes item not None, object key) -> bool:
        """Queue ``item`` (replacing one queued under an equal ``key``); True if it was empty."""
        return self._add(item, key) == 1

    def take(self, object batched_at):
        """The bytes to write for everything queued (None if nothing), and reset."""
        return self._take(_Stamp(batched_at))

    cdef int _add(self, bytes item, object key) except -1:
        cdef Py_ssize_t n = PyList_GET_SIZE(self._items)
        cdef PyObject* index
        if key is not None:
            if self._index is None:
                self._index = {}
            elif n:  # (an empty queue has no key to conflate with: skip the lookup)
                index = PyDict_GetItemWithError(self._index, key)  # borrowed; NULL if absent
                if index != NULL:
                    # conflation: the newest item takes the place of the queued one
                    self._items[<Py_ssize_t><object>index] = item
                    return 0
            PyDict_SetItem(self._index, key, n)
        self._items.append(item)
        return n == 0

    cdef object _take(self, _Stamp stamp):
        cdef list items = self._items
        cdef Py_ssize_t n = PyList_GET_SIZE(items)
        if n == 0:
            return None
        # reset first, as the reference does: a failure below drops the queue
        self._items = []
        if self._index is not None:
            self._index.clear()
        if not self.envelope:
            return <bytes>PyList_GET_ITEM(items, 0) if n == 1 else _concat(items)
        if n == 1:
            return build_frame(<bytes>PyList_GET_ITEM(items, 0))
        return _batch_frame(items, stamp.get())


def enqueue(bytes item not None, list batchers not None, object key):
    """``add`` ``item`` to every batcher; returns those that were empty before."""
    cdef list started = []
    cdef Batcher batcher
    cdef Py_ssize_t i = 0
    # the length is re-read each step, like a list iterator: key hashing is Python code
    while i < PyList_GET_SIZE(batchers):
        batcher = <Batcher?><object>PyList_GET_ITEM(batchers, i)
        if batcher._add(item, key):
            started.append(batcher)
        i += 1
    return started


def flush(list batchers not None, object batched_at):
    """``take`` every batcher and write its bytes; returns ``(written, overflowed_indices)``.

    Over-limit transports are not written to (queue dropped, index reported);
    closed ones are skipped; empty batchers are skipped silently.
    """
    cdef Py_ssize_t written = 0
    cdef list overflowed = []
    cdef Batcher batcher
    cdef object data, transport
    cdef _Stamp stamp = _Stamp(batched_at)  # encoded once, when a batcher first needs it
    cdef Py_ssize_t buffered
    cdef Py_ssize_t i = 0
    # the length is re-read each step: transport.write may run protocol callbacks
    while i < PyList_GET_SIZE(batchers):
        batcher = <Batcher?><object>PyList_GET_ITEM(batchers, i)
        i += 1
        data = batcher._take(stamp)
        if data is None:
            continue
        transport = batcher.transport
        buffered = transport.get_write_buffer_size()
        if buffered + PyBytes_GET_SIZE(data) > batcher.limit:
            overflowed.append(i - 1)
            continue
        try:
            transport.write(data)
        except RuntimeError:  # closed under us; the server removes it shortly
            continue
        written += 1
    return written, overflowed
