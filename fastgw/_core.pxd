# cython: language_level=3
"""C-level interface of ``fastgw._core``, for other Cython modules to ``cimport``.

``from fastgw._core cimport Batcher, build_frame`` gives direct C calls (no
Python dispatch). The Python-level contract is documented in
``fastgw/_core_py.py``; the definitions are in ``fastgw/_core.pyx``.
"""

cimport cython

cpdef bytes frame_header(Py_ssize_t length, int opcode=*, bint rsv1=*)
cpdef bytes build_frame(bytes payload, int opcode=*, bint rsv1=*)
cpdef bytes build_batch(object items, object batched_at)
cpdef dict reduce_location(dict message, object decimals, bint drop_confidence)
cpdef dict strip_fields(dict message, object fields)


@cython.final
cdef class _Stamp:
    # batched_at and its orjson encoding (bytes), encoded on first use
    cdef object value
    cdef bytes encoded
    cdef bytes get(self)


@cython.final
cdef class Batcher:
    """What one connection receives at its next flush: queued items, conflated by key."""

    cdef readonly object transport
    cdef readonly Py_ssize_t limit
    cdef readonly bint envelope
    #: items queued since the last take (frames, or encoded channel_message objects)
    cdef list _items
    #: conflation key -> index into _items; None until the first keyed add
    cdef dict _index

    # 1 if the batcher was empty before, else 0 (-1: exception, e.g. unhashable key)
    cdef int _add(self, bytes item, object key) except -1
    # the bytes to write (None if empty), and reset; stamp: batched_at, shared by a flush
    cdef object _take(self, _Stamp stamp)
