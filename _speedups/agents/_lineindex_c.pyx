# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""Compiled line index twin (``descartes_fast.agents._lineindex_c``).

Behaviour is defined by ``descartes_fast/agents/_lineindex_py.py``: the same line ends, texts and
record positions for every input. This twin walks the buffer with ``memchr``/``memrchr`` and the
index records through a pointer, with no Python object per line or per probe.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint64_t, uint8_t
from libc.string cimport memchr, memcpy

__all__ = ["scan", "line_ends", "split_lines", "find_record", "RECORD_FIELDS"]

cdef enum:
    _FIELDS = 3  # u64 fields per index record: end_offset, end_line, time_ns

RECORD_FIELDS = _FIELDS

cdef extern from "string.h":
    void* memrchr(const void* s, int c, size_t n)

cdef extern from *:
    """
    #include <stdint.h>
    static inline uint64_t df_load_le64(const unsigned char *p) {
        uint64_t v = 0;
        for (int k = 7; k >= 0; k--) v = (v << 8) | p[k];
        return v;
    }
    """
    uint64_t df_load_le64(const unsigned char* p)


cdef inline Py_ssize_t _end_of_line(const unsigned char* p, Py_ssize_t pos, Py_ssize_t n,
                                    Py_ssize_t room) noexcept:
    """Offset after the line end of the line whose remaining bytes start at *pos* and may take
    *room* more bytes; -1 when *n* comes first (the line is unfinished)."""
    cdef Py_ssize_t window = room if pos + room < n else n - pos
    cdef const unsigned char* nl = <const unsigned char*>memchr(p + pos, b'\n', window)
    if nl != NULL:
        return nl - p + 1
    if pos + room <= n:
        return pos + room
    return -1


def scan(data, Py_ssize_t carry, Py_ssize_t line_max):
    """Line ends in *data* after *carry* bytes of an unfinished line: ``(lines, cut)``."""
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef const unsigned char* nl
    cdef Py_ssize_t n, pos = 0, cut = 0, room, window, newline, lines = 0, j
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>view.buf
        n = view.len
        room = line_max - carry
        while pos < n:
            window = room if pos + room < n else n - pos
            nl = <const unsigned char*>memrchr(p + pos, b'\n', window)
            if nl != NULL:
                newline = nl - p
                j = pos
                while True:  # count the newlines in [pos, newline]
                    nl = <const unsigned char*>memchr(p + j, b'\n', newline + 1 - j)
                    lines += 1
                    j = nl - p + 1
                    if j > newline:
                        break
                pos = cut = newline + 1
                room = line_max
                continue
            if pos + room <= n:
                lines += 1
                pos = cut = pos + room
                room = line_max
                continue
            break
    finally:
        PyBuffer_Release(&view)
    return lines, cut


def line_ends(data, Py_ssize_t count, Py_ssize_t line_max):
    """Offsets just after each of the first *count* line ends of *data* (starting at a line start)."""
    cdef Py_buffer view
    cdef Py_ssize_t pos = 0, end
    cdef list out = []
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        while len(out) < count and pos < view.len:
            end = _end_of_line(<const unsigned char*>view.buf, pos, view.len, line_max)
            if end < 0:
                break
            out.append(end)
            pos = end
    finally:
        PyBuffer_Release(&view)
    return out


def split_lines(data, Py_ssize_t line_max, Py_ssize_t limit, bint final):
    """The first *limit* lines of *data* as text, line ends removed, bad UTF-8 replaced."""
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef Py_ssize_t pos = 0, end, stop
    cdef list out = []
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>view.buf
        while len(out) < limit and pos < view.len:
            end = _end_of_line(p, pos, view.len, line_max)
            if end < 0:
                break
            stop = end
            if p[end - 1] == b'\n':
                stop = end - 1
                if stop > pos and p[stop - 1] == b'\r':
                    stop -= 1
            out.append(PyUnicode_DecodeUTF8(<const char*>(p + pos), stop - pos, "replace"))
            pos = end
        if final and len(out) < limit and pos < view.len:
            out.append(PyUnicode_DecodeUTF8(<const char*>(p + pos), view.len - pos, "replace"))
    finally:
        PyBuffer_Release(&view)
    return out


def find_record(records, int field, uint64_t value):
    """Index of the first record whose *field* is greater than *value* (the count when none is)."""
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef Py_ssize_t lo = 0, hi, mid
    if not 0 <= field < _FIELDS:
        raise ValueError(f"field must be 0, 1 or 2, not {field}")
    PyObject_GetBuffer(records, &view, PyBUF_SIMPLE)
    try:
        if view.len % (8 * _FIELDS):
            raise ValueError("index records must be whole u64 triples")
        p = <const unsigned char*>view.buf
        hi = view.len // (8 * _FIELDS)
        while lo < hi:
            mid = (lo + hi) // 2
            if df_load_le64(p + (mid * _FIELDS + field) * 8) > value:
                hi = mid
            else:
                lo = mid + 1
    finally:
        PyBuffer_Release(&view)
    return lo
