# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Compiled codec twin (``descartes_fast.wire._codec_c``).

The behaviour is defined by ``descartes_fast/wire/_codec_py.py``: same bytes, same
objects, same exception types and texts (both twins build their texts with
:mod:`descartes_fast.wire.texts`, and read their numbers from :mod:`descartes_fast.wire.constants`).
This twin writes MessagePack straight into one reusable C buffer (``msgpack_writer.h``) and
reads it straight from the input buffer, with the layout tables of
:mod:`descartes_fast.wire.layout` flattened into C structs at import time
(``codec_tables.pxi``). Objects are built by allocating the slots dataclass and storing each
field at its slot offset, read from the class's member descriptors (``pyobject_access.h``),
the way ``__init__`` would.
"""

from cpython.object cimport PyObject, PyTypeObject
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyObject_CheckBuffer, PyBUF_SIMPLE
from cpython.long cimport PyLong_FromLongLong, PyLong_FromUnsignedLongLong, PyLong_AsLongLongAndOverflow
from cpython.float cimport PyFloat_FromDouble, PyFloat_AS_DOUBLE
from cpython.ref cimport Py_INCREF, Py_DECREF
from libc.string cimport memcpy, memcmp
from libc.stdlib cimport free
from libc.math cimport isfinite

import uuid as _uuid_mod

from descartes_fast.wire import _codec_py as P
from descartes_fast.wire import layout as L
from descartes_fast.wire import texts as T
from descartes_fast.wire.errors import (
    ArityError, DecodeError, EncodeError, InvalidValueError, MalformedError,
    MessageTooLargeError, NestingTooDeepError, OutOfRangeError, TruncatedError,
    WrongTypeError, UnknownMessageTypeError)

__all__ = ["encode", "decode"]

cdef extern from "pyobject_access.h":
    Py_ssize_t df_member_offset(object descr)
    object df_alloc(object type)
    PyObject* df_get_slot(object obj, Py_ssize_t off)
    void df_set_slot(object obj, Py_ssize_t off, object v)
    int df_long_to_be16(object v, unsigned char* out) except -1
    object df_long_from_be16(const unsigned char* p)
    PyObject* df_utf8(const char* p, Py_ssize_t n)
    PyObject* df_str(const char* p, Py_ssize_t n)
    const char* df_as_utf8(object s, Py_ssize_t* n)
    int df_as_u64(object v, unsigned long long* out) except -1

cdef extern from "Python.h":
    bint PyUnicode_Check(object o)
    bint PyLong_Check(object o)
    bint PyFloat_Check(object o)
    bint PyBytes_CheckExact(object o)
    bint PyBytes_Check(object o)
    bint PyByteArray_Check(object o)
    bint PyMemoryView_Check(object o)
    bint PyList_Check(object o)
    bint PyTuple_Check(object o)
    bint PyDict_Check(object o)
    bint PyObject_TypeCheck(object o, PyTypeObject* t)
    void PyList_SET_ITEM(object l, Py_ssize_t i, object v)
    Py_ssize_t PyList_GET_SIZE(object l)
    PyObject* PyList_GET_ITEM(object l, Py_ssize_t i)
    Py_ssize_t PyTuple_GET_SIZE(object t)
    PyObject* PyTuple_GET_ITEM(object t, Py_ssize_t i)
    Py_ssize_t PyDict_Size(object d) except -1
    bint PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value)
    object PyList_New(Py_ssize_t n)
    PyObject* PyErr_Occurred()

include "codec_tables.pxi"
include "codec_encode.pxi"
include "codec_decode.pxi"
