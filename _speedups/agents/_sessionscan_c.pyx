# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""Compiled session scan twin (``descartes_fast.agents._sessionscan_c``).

Behaviour is defined by ``descartes_fast/agents/_sessionscan_py.py``: the same offsets (or
``None``) for every input. This twin walks the lines with ``memchr``, compares heads with
``memcmp`` and finds markers with ``memmem`` (or an SSE2 filter), with no Python object per line.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.string cimport memchr, memcmp

__all__ = ["scan"]

cdef extern from *:
    """
    #include <string.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    /* The first occurrence of needle (m bytes) in h (n bytes), or NULL: memmem, or (SSE2) a filter
       on two of its bytes, 16 places at a time, and memcmp where both are there. */
    static const char* df_find(const char* h, size_t n, const char* needle, size_t m) {
    #if defined(__SSE2__)
        if (m >= 4 && n >= m + 16) {
            const size_t i = 1, j = m - 2, last = n - m;  /* candidates start at 0..last */
            const __m128i a = _mm_set1_epi8(needle[i]), b = _mm_set1_epi8(needle[j]);
            size_t k = 0;
            for (; k + 15 <= last; k += 16) {
                unsigned hits = (unsigned)_mm_movemask_epi8(_mm_and_si128(
                    _mm_cmpeq_epi8(a, _mm_loadu_si128((const __m128i*)(h + k + i))),
                    _mm_cmpeq_epi8(b, _mm_loadu_si128((const __m128i*)(h + k + j)))));
                for (; hits; hits &= hits - 1)
                    if (memcmp(h + k + __builtin_ctz(hits), needle, m) == 0)
                        return h + k + __builtin_ctz(hits);
            }
            return (const char*)memmem(h + k, n - k, needle, m);
        }
    #endif
        return (const char*)memmem(h, n, needle, m);
    }
    """
    const char* df_find(const char* h, size_t n, const char* needle, size_t m) noexcept

cdef struct Needle:
    const char* at
    Py_ssize_t size
    Py_ssize_t next  # markers: where it next occurs (-1: not looked for yet, n: nowhere)


cdef int _needles(tuple items, Needle* out) except -1:
    """Point *out* at the bytes of *items* (which the caller's tuple keeps alive)."""
    cdef Py_ssize_t i
    for i, item in enumerate(items):
        if type(item) is not bytes:
            raise TypeError(f"heads and markers must be bytes, not {type(item).__name__}")
        out[i].at = PyBytes_AS_STRING(item)
        out[i].size = PyBytes_GET_SIZE(item)
        out[i].next = -1
    return 0


cdef inline bint _starts_any(const char* line, Py_ssize_t size, const Needle* heads, Py_ssize_t count) noexcept:
    cdef Py_ssize_t i
    for i in range(count):
        if heads[i].size <= size and memcmp(line, heads[i].at, heads[i].size) == 0:
            return True
    return False


def scan(data, tuple known, tuple wanted, tuple markers):
    """Start offsets of the lines to decode (a wanted head or a marker), or ``None`` when a line
    starts with no known head; see the pure twin."""
    cdef Py_buffer view
    cdef const char* p
    cdef const char* nl
    cdef const char* hit
    cdef Py_ssize_t n, pos = 0, end, i, nk = len(known), nw = len(wanted), nm = len(markers)
    cdef Needle* needles = <Needle*>PyMem_Malloc((nk + nw + nm + 1) * sizeof(Needle))
    cdef Needle* w = needles + nk
    cdef Needle* m = w + nw
    cdef Needle* mk
    cdef bint picked
    cdef list out = []
    if needles == NULL:
        raise MemoryError()
    try:
        _needles(known, needles)
        _needles(wanted, w)
        _needles(markers, m)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            p = <const char*>view.buf
            n = view.len
            while pos < n:
                nl = <const char*>memchr(p + pos, b'\n', n - pos)
                end = nl - p if nl != NULL else n
                if not _starts_any(p + pos, end - pos, needles, nk):
                    return None
                picked = _starts_any(p + pos, end - pos, w, nw)
                i = 0
                while not picked and i < nm:
                    mk = m + i
                    if mk.next < pos:  # find its next occurrence from this line on
                        hit = df_find(p + pos, n - pos, mk.at, mk.size)
                        mk.next = hit - p if hit != NULL else n
                    picked = mk.next + mk.size <= end
                    i += 1
                if picked:
                    out.append(pos)
                pos = end + 1
        finally:
            PyBuffer_Release(&view)
    finally:
        PyMem_Free(needles)
    return out
