# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""Compiled frame helpers (``descartes_fast.wire._frames_c``).

Behaviour is defined by ``descartes_fast/wire/_frames_py.py``; this twin avoids Python-level
loops and copies (``memchr`` on the frame's buffer for PUB frames). Error texts come from
:mod:`descartes_fast.wire.texts`.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyObject_CheckBuffer, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_GET_SIZE, PyBytes_AS_STRING
from libc.string cimport memchr, memcpy

from descartes_fast.wire import _frames_py as P
from descartes_fast.wire import texts as T
from descartes_fast.wire.errors import FrameError

__all__ = ["split_request", "build_reply", "pub_frame", "parse_pub_frame", "log_topic",
           "status_topic", "HEARTBEAT_TOPIC"]

HEARTBEAT_TOPIC = P.HEARTBEAT_TOPIC
log_topic = P.log_topic
status_topic = P.status_topic

cdef extern from "Python.h":
    bint PyBytes_CheckExact(object o)


cdef inline Py_ssize_t _len(object frame) except -1:
    if PyBytes_CheckExact(frame):
        return PyBytes_GET_SIZE(frame)
    return len(frame)


def split_request(frames):
    """Split a ROUTER message into ``(envelope, payload)``; see the pure twin."""
    cdef Py_ssize_t n = len(frames)
    cdef Py_ssize_t i
    if n < 2:
        raise FrameError(T.frame_count(n))
    for i in range(1, n):
        if _len(frames[i]) == 0:
            if i + 1 == n:
                raise FrameError(T.NO_PAYLOAD)
            return list(frames[:i + 1]), frames[i + 1]
    return [frames[0]], frames[1]


def build_reply(envelope, payload):
    """The frames of a reply: the request's envelope, then the payload."""
    cdef list out = list(envelope)
    out.append(payload)
    return out


def pub_frame(topic, payload):
    """One PUB frame: ``topic + b"\\x00" + payload``."""
    cdef Py_buffer buf
    cdef Py_ssize_t tn
    cdef char* out
    if not PyBytes_CheckExact(topic):
        topic = P._topic_bytes(topic)  # str, or the error the pure twin gives
    tn = PyBytes_GET_SIZE(topic)
    if memchr(PyBytes_AS_STRING(topic), 0, tn) != NULL:
        raise FrameError(T.TOPIC_NUL)
    if not PyObject_CheckBuffer(payload):
        raise TypeError(T.payload_type(type(payload).__name__))
    PyObject_GetBuffer(payload, &buf, PyBUF_SIMPLE)
    try:
        frame = PyBytes_FromStringAndSize(NULL, tn + 1 + buf.len)
        out = PyBytes_AS_STRING(frame)
        memcpy(out, PyBytes_AS_STRING(topic), tn)
        out[tn] = 0
        memcpy(out + tn + 1, buf.buf, buf.len)
    finally:
        PyBuffer_Release(&buf)
    return frame


def parse_pub_frame(frame):
    """Split a PUB frame at its first NUL into ``(topic, payload view)`` without copying the payload."""
    cdef Py_buffer buf
    cdef const char* at
    cdef Py_ssize_t pos
    view = memoryview(frame).cast("B")
    PyObject_GetBuffer(view, &buf, PyBUF_SIMPLE)
    try:
        at = <const char*>memchr(buf.buf, 0, buf.len)
        if at == NULL:
            raise FrameError(T.NO_SEPARATOR)
        pos = at - <const char*>buf.buf
        topic = PyBytes_FromStringAndSize(<const char*>buf.buf, pos)
    finally:
        PyBuffer_Release(&buf)
    return topic, view[pos + 1:]
