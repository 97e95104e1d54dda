# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""Compiled request dispatcher (``descartes_fast.wire._dispatch_c``).

Behaviour is defined by ``descartes_fast/wire/_dispatch_py.py``. This twin receives and sends
with libzmq directly: at import it resolves ``zmq_msg_recv`` and friends from the handle of
pyzmq's own backend extension (``zmq_direct.h``: the libzmq pyzmq uses, never a second copy,
its version checked against pyzmq's) and works on the socket's own handle
(``Socket.underlying``). A request is read frame by frame into ``zmq_msg_t``s, its payload
decoded straight from libzmq's buffer, and the reply written with ``zmq_send``: no Frame
objects and no lists on the hot path. If the functions cannot be resolved, it uses pyzmq's
calls instead; ``LIBZMQ_DIRECT`` says which and ``DIRECT_REASON`` why.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport strcmp, strlen

import zmq
from zmq.backend.cython import _zmq as _pyzmq_backend

from descartes_fast.wire._codec_c import decode, encode
from descartes_fast.wire._frames_c import build_reply, split_request
from descartes_fast.wire.errors import FrameError, MessageTooLargeError, ProtocolError

__all__ = ["Dispatcher", "Requester", "LIBZMQ_DIRECT", "DIRECT_REASON"]

cdef extern from "zmq_direct.h":
    ctypedef struct df_zmq_msg:
        pass
    int df_zmq_resolve(const char* module_path, int major, int minor, int patch, char* why, size_t why_len)
    void df_version(int* major, int* minor, int* patch)
    int df_msg_init(df_zmq_msg* m)
    int df_msg_recv(df_zmq_msg* m, void* sock, int flags)
    void* df_msg_data(df_zmq_msg* m)
    size_t df_msg_size(const df_zmq_msg* m)
    int df_msg_more(const df_zmq_msg* m)
    int df_msg_close(df_zmq_msg* m)
    int df_send(void* sock, const void* buf, size_t n, int flags)
    int df_errno()
    const char* df_msg_gets(const df_zmq_msg* m, const char* prop)
    int EAGAIN

cdef extern from "Python.h":
    object PyMemoryView_FromMemory(char* mem, Py_ssize_t size, int flags)
    bint PyBytes_CheckExact(object o)
    int PyBUF_READ

include "_constants.pxi"  # DRAIN_BYTES, MAX_FRAMES, MAX_MESSAGE_SIZE (generated from descartes_fast/wire/constants.py)

cdef int NOBLOCK = zmq.NOBLOCK
cdef int SNDMORE = zmq.SNDMORE
cdef object Again = zmq.Again
cdef Py_ssize_t _max_size = MAX_MESSAGE_SIZE


def _resolve_libzmq():
    """(True, "") when libzmq's functions resolved from pyzmq's backend, else (False, why)."""
    cdef char why[512]
    path = getattr(_pyzmq_backend, "__file__", None)
    if not path:
        return False, "pyzmq's backend module has no file to resolve libzmq from"
    major, minor, patch = zmq.zmq_version_info()
    raw = path.encode()
    why[0] = 0
    if df_zmq_resolve(raw, major, minor, patch, why, sizeof(why)) == 0:
        return True, ""
    return False, why.decode("utf-8", "replace")


_direct, _why = _resolve_libzmq()
#: True when the hot path calls libzmq directly, False when it goes through pyzmq
LIBZMQ_DIRECT = _direct
#: why the direct path is not in use ("" when it is)
DIRECT_REASON = _why


def libzmq_version():
    """(major, minor, patch) of the libzmq the direct path calls (None when it is not in use)."""
    cdef int major = 0, minor = 0, patch = 0
    if not LIBZMQ_DIRECT:
        return None
    df_version(&major, &minor, &patch)
    return major, minor, patch


cdef void* _handle_of(sock, direct) except? NULL:
    """The socket's libzmq handle when libzmq is called directly (*direct*: None = when available)."""
    if LIBZMQ_DIRECT and direct is not False:
        return <void*><size_t>sock.underlying
    return NULL


cdef class _Property:
    """A connection property libzmq attached to received frames, as str (None when absent);
    the last value is kept, so a run of requests from one peer decodes it once."""

    cdef bytes name
    cdef bytes raw
    cdef object text

    def __cinit__(self, bytes name):
        self.name = name
        self.raw = b""
        self.text = None

    cdef object of(self, df_zmq_msg* msg):
        cdef const char* value = df_msg_gets(msg, PyBytes_AS_STRING(self.name))
        if value == NULL:
            return None
        if self.text is None or strcmp(value, PyBytes_AS_STRING(self.raw)) != 0:
            self.raw = value
            self.text = PyUnicode_DecodeUTF8(value, strlen(value), "replace")
        return self.text


def _frame_property(frame, name):
    try:
        return frame.get(name)
    except (AttributeError, zmq.ZMQError):
        return None


cdef class Dispatcher:
    """Drain a ROUTER socket and route each request to ``handlers[type(message)]``."""

    cdef public object sock
    cdef public dict handlers
    cdef public object on_error
    cdef public object on_failure
    cdef public Py_ssize_t received
    cdef public Py_ssize_t bad_frames
    cdef public Py_ssize_t decode_errors
    cdef public Py_ssize_t failures
    cdef public Py_ssize_t replies_dropped
    cdef public object gate
    cdef _Property _user_id
    cdef _Property _peer
    cdef void* _handle
    cdef df_zmq_msg _frames[MAX_FRAMES]

    def __init__(self, sock, handlers, on_error, direct=None, gate=None, on_failure=None):
        self.sock = sock
        self.handlers = handlers
        self.on_error = on_error
        self.on_failure = on_failure
        self.gate = gate
        self._user_id = _Property(b"User-Id")
        self._peer = _Property(b"Peer-Address")
        self.received = 0
        self.bad_frames = 0
        self.decode_errors = 0
        self.failures = 0
        self.replies_dropped = 0
        self._handle = _handle_of(sock, direct)

    @property
    def direct(self):
        """True when this dispatcher calls libzmq directly."""
        return self._handle != NULL

    def drain(self, Py_ssize_t limit=4096):
        """Handle up to *limit* queued requests, or fewer of ``DRAIN_BYTES`` in all; returns how
        many were taken."""
        cdef Py_ssize_t taken = 0, size = 0, got
        if self._handle == NULL:
            return self._drain_pyzmq(limit)
        while taken < limit and size < DRAIN_BYTES:
            got = self._take_one()
            if got < 0:
                break
            taken += 1
            size += got
        return taken

    cdef Py_ssize_t _take_one(self) except -2:
        """Receive and handle one request: its bytes (all frames), or -1 when none is queued."""
        cdef int n = 0
        cdef int i
        cdef Py_ssize_t got = 0
        cdef df_zmq_msg spill
        while True:
            df_msg_init(&self._frames[n])
            if df_msg_recv(&self._frames[n], self._handle, NOBLOCK) < 0:
                df_msg_close(&self._frames[n])
                if n == 0 and df_errno() == EAGAIN:
                    return -1
                break  # interrupted mid-message: handle what arrived
            got += <Py_ssize_t>df_msg_size(&self._frames[n])
            n += 1
            if not df_msg_more(&self._frames[n - 1]):
                break
            if n == MAX_FRAMES:  # more frames than any request has: read and drop the rest
                while True:
                    df_msg_init(&spill)
                    if df_msg_recv(&spill, self._handle, NOBLOCK) < 0 or not df_msg_more(&spill):
                        df_msg_close(&spill)
                        break
                    df_msg_close(&spill)
                n = -n  # marks "too many"
                break
        self.received += 1
        if n < 0:
            for i in range(-n):
                df_msg_close(&self._frames[i])
            self.bad_frames += 1
            return got
        try:
            self._handle_frames(n)
        finally:
            for i in range(n):
                df_msg_close(&self._frames[i])
        return got

    cdef _handle_frames(self, int n):
        cdef int i, split = -1
        cdef Py_ssize_t size
        if n < 2:
            self.bad_frames += 1
            return None
        for i in range(1, n):
            if df_msg_size(&self._frames[i]) == 0:
                split = i
                break
        if split == n - 1:
            self.bad_frames += 1
            return None
        cdef int payload_at = split + 1 if split > 0 else 1
        cdef int env_len = split + 1 if split > 0 else 1
        envelope = [PyBytes_FromStringAndSize(<char*>df_msg_data(&self._frames[i]),
                                              <Py_ssize_t>df_msg_size(&self._frames[i]))
                    for i in range(env_len)]
        size = <Py_ssize_t>df_msg_size(&self._frames[payload_at])
        user_id = peer = None
        if self.gate is not None:
            user_id, peer = self._user_id.of(&self._frames[0]), self._peer.of(&self._frames[0])
        view = PyMemoryView_FromMemory(<char*>df_msg_data(&self._frames[payload_at]), size, PyBUF_READ)
        try:
            self._route(envelope, view, size, user_id, peer)
        finally:
            view.release()  # the frame is closed after this; nothing may keep pointing into it
        return None

    cdef _route(self, list envelope, payload, Py_ssize_t size, user_id, peer):
        """What both receive paths do with a request: gate, size check, decode, handler, reply.
        *payload* may point into a frame about to be closed: ``on_error`` gets a copy."""
        if self.gate is not None:
            refusal = self.gate.check(user_id, peer, envelope[0])
            if refusal is not None:
                if refusal.reply:
                    self.reply(envelope, self.on_error(bytes(payload), refusal))
                return None
        try:
            if size > _max_size:
                raise MessageTooLargeError(size, _max_size)
            message = decode(payload)
        except ProtocolError as exc:
            self.decode_errors += 1
            self.reply(envelope, self.on_error(bytes(payload), exc))
            return None
        try:
            reply = self.handlers[type(message)](message, envelope)
        except Exception as exc:
            if self.on_failure is None:
                raise
            self.failures += 1
            reply = self.on_failure(message, exc)
        if reply is not None:
            self.reply(envelope, reply)
        return None

    def _drain_pyzmq(self, Py_ssize_t limit):
        cdef Py_ssize_t taken = 0, size = 0
        recv = self.sock.recv_multipart
        while taken < limit and size < DRAIN_BYTES:
            try:
                frames = recv(NOBLOCK, copy=False)
            except Again:
                break
            taken += 1
            size += sum([len(f) for f in frames])
            self.received += 1
            self.handle(frames)
        return taken

    cpdef handle(self, frames):
        """One request given as frames: reply to it now, or leave it to its handler."""
        if len(frames) > MAX_FRAMES:
            self.bad_frames += 1
            return None
        try:
            envelope, payload = split_request(frames)
        except FrameError:
            self.bad_frames += 1
            return None
        user_id = peer = None
        if self.gate is not None:
            user_id, peer = _frame_property(frames[0], "User-Id"), _frame_property(frames[0], "Peer-Address")
        self._route([bytes(f) for f in envelope], payload, len(payload), user_id, peer)
        return None

    cpdef reply(self, envelope, message):
        """Send *message* to the peer behind *envelope*; in its place ``on_failure``'s reply if it
        cannot be encoded (dropped, and counted, if the peer's queue is full or it has gone)."""
        cdef bytes payload
        cdef Py_ssize_t i, last
        try:
            payload = encode(message)
        except ProtocolError as exc:
            if self.on_failure is None:
                raise
            self.failures += 1
            payload = encode(self.on_failure(message, exc))
        if self._handle == NULL:
            try:
                self.sock.send_multipart(build_reply(envelope, payload), NOBLOCK)
            except zmq.ZMQError:  # full (EAGAIN), or gone (EHOSTUNREACH, ROUTER_MANDATORY)
                self.replies_dropped += 1
            return None
        last = len(envelope)
        for i in range(last):
            frame = envelope[i]
            if not PyBytes_CheckExact(frame):
                frame = bytes(frame)
            if df_send(self._handle, PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame), NOBLOCK | SNDMORE) < 0:
                self.replies_dropped += 1  # the peer's queue is full or it has gone
                return None
        df_send(self._handle, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), NOBLOCK)
        return None


cdef class Requester:
    """The client's side of the hot path: send requests, take every queued reply."""

    cdef public object sock
    cdef public object on_reply
    cdef public Py_ssize_t bad_replies
    cdef void* _handle

    def __init__(self, sock, on_reply, direct=None):
        self.sock = sock
        self.on_reply = on_reply
        self.bad_replies = 0
        self._handle = _handle_of(sock, direct)

    @property
    def direct(self):
        """True when this requester calls libzmq directly."""
        return self._handle != NULL

    cpdef send(self, bytes payload):
        """Queue ``[b"", payload]``; never blocks (zmq.Again when the send queue is full)."""
        if self._handle == NULL:
            self.sock.send_multipart([b"", payload], NOBLOCK)
            return None
        if df_send(self._handle, b"", 0, NOBLOCK | SNDMORE) < 0:
            raise Again()
        df_send(self._handle, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), NOBLOCK)
        return None

    def drain(self, Py_ssize_t limit=4096):
        """Hand up to *limit* queued replies to ``on_reply``; returns how many were taken."""
        cdef Py_ssize_t taken = 0
        cdef df_zmq_msg msg
        cdef bint more
        if self._handle == NULL:
            return self._drain_pyzmq(limit)
        on_reply = self.on_reply
        while taken < limit:
            df_msg_init(&msg)
            if df_msg_recv(&msg, self._handle, NOBLOCK) < 0:
                df_msg_close(&msg)
                break
            more = df_msg_more(&msg)
            while more:  # keep the last frame: the payload
                df_msg_close(&msg)
                df_msg_init(&msg)
                if df_msg_recv(&msg, self._handle, NOBLOCK) < 0:
                    break
                more = df_msg_more(&msg)
            taken += 1
            view = PyMemoryView_FromMemory(<char*>df_msg_data(&msg), <Py_ssize_t>df_msg_size(&msg), PyBUF_READ)
            try:
                reply = decode(view)
            except ProtocolError:
                self.bad_replies += 1
                continue
            finally:
                view.release()
                df_msg_close(&msg)
            on_reply(reply)
        return taken

    def _drain_pyzmq(self, Py_ssize_t limit):
        cdef Py_ssize_t taken = 0
        recv = self.sock.recv_multipart
        while taken < limit:
            try:
                frames = recv(NOBLOCK)
            except Again:
                break
            taken += 1
            try:
                reply = decode(frames[len(frames) - 1])
            except ProtocolError:
                self.bad_replies += 1
                continue
            self.on_reply(reply)
        return taken
