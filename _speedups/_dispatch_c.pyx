# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""Compiled request dispatcher (``descartes_fast._speedups._dispatch_c``).

Behaviour is defined by ``descartes_fast/_dispatch_py.py``. This twin runs the drain loop,
envelope split, size check, decode, handler lookup and reply in C, with the compiled codec
and frame helpers.
"""

import zmq

from descartes_fast._speedups._codec_c import decode, encode
from descartes_fast._speedups._frames_c import build_reply, split_request
from descartes_fast.errors import FrameError, MessageTooLargeError, ProtocolError
from descartes_fast.schema import MAX_MESSAGE_SIZE

__all__ = ["Dispatcher"]

cdef int NOBLOCK = zmq.NOBLOCK
cdef object Again = zmq.Again
cdef Py_ssize_t _max_size = MAX_MESSAGE_SIZE


cdef class Dispatcher:
    """Drain a ROUTER socket and route each request to ``handlers[type(message)]``."""

    cdef public object sock
    cdef public dict handlers
    cdef public object on_error
    cdef public Py_ssize_t received
    cdef public Py_ssize_t bad_frames
    cdef public Py_ssize_t decode_errors
    cdef object _recv
    cdef object _send

    def __init__(self, sock, handlers, on_error):
        self.sock = sock
        self.handlers = handlers
        self.on_error = on_error
        self.received = 0
        self.bad_frames = 0
        self.decode_errors = 0
        self._recv = sock.recv_multipart
        self._send = sock.send_multipart

    def drain(self, Py_ssize_t limit=4096):
        """Handle up to *limit* queued requests; returns how many were taken."""
        cdef Py_ssize_t taken = 0
        recv = self._recv
        while taken < limit:
            try:
                frames = recv(NOBLOCK, copy=False)
            except Again:
                break
            taken += 1
            self.received += 1
            self.handle(frames)
        return taken

    cpdef handle(self, frames):
        """One request: reply to it now, or leave it to its handler."""
        try:
            envelope, payload = split_request(frames)
        except FrameError:
            self.bad_frames += 1
            return None
        try:
            if len(payload) > _max_size:
                raise MessageTooLargeError(len(payload), _max_size)
            message = decode(payload)
        except ProtocolError as exc:
            self.decode_errors += 1
            self.reply(envelope, self.on_error(payload, exc))
            return None
        reply = self.handlers[type(message)](message, envelope)
        if reply is not None:
            self.reply(envelope, reply)
        return None

    cpdef reply(self, envelope, message):
        """Send *message* to the peer behind *envelope* (dropped if the peer is gone)."""
        try:
            self._send(build_reply(envelope, encode(message)), NOBLOCK)
        except Again:
            pass
        return None
