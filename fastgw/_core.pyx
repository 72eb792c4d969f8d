# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled hot path: WebSocket framing and fan-out writes.

Twin of ``fastgw/_core_py.py`` (the reference); both give byte-identical
results and the test suite runs against each. See that module for the
contract. This file keeps to functions over bytes and transports: no
protocol logic lives here.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from libc.string cimport memcpy

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


cdef inline Py_ssize_t _header_into(unsigned char* out, Py_ssize_t length, int opcode) noexcept:
    cdef int i
    out[0] = <unsigned char>(0x80 | opcode)
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


cpdef bytes frame_header(Py_ssize_t length, int opcode=OP_TEXT):
    """Header of a final, unmasked server-to-client WebSocket frame (RFC 6455 §5.2)."""
    cdef unsigned char buf[10]
    cdef Py_ssize_t n = _header_into(buf, length, opcode)
    return PyBytes_FromStringAndSize(<char*>buf, n)


cpdef bytes build_frame(bytes payload, int opcode=OP_TEXT):
    """One complete frame: header + payload, built once and shared by every recipient."""
    cdef Py_ssize_t length = PyBytes_GET_SIZE(payload)
    cdef unsigned char head[10]
    cdef Py_ssize_t hlen = _header_into(head, length, opcode)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hlen + length)
    cdef char* dst = PyBytes_AS_STRING(out)
    memcpy(dst, head, hlen)
    memcpy(dst + hlen, PyBytes_AS_STRING(payload), length)
    return out


cpdef bytes build_close_frame(int code, str reason=""):
    """A close frame carrying ``code`` and a UTF-8 reason (truncated to fit 125 bytes)."""
    cdef bytes body = bytes(((code >> 8) & 0xFF, code & 0xFF)) + reason.encode("utf-8")[:123]
    return build_frame(body, OP_CLOSE)


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
