# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Compiled codec twin (``descartes_fast._speedups._codec_c``).

The behaviour is defined by ``descartes_fast/_codec_py.py``: same bytes, same
objects, same exception types and texts. This twin writes MessagePack straight into
one reusable C buffer and reads it straight from the input buffer, with the layout
tables of ``descartes_fast._layout`` flattened into C structs at import time. Objects
are built by allocating the slots dataclass and storing each field at its slot
offset (read from the class's member descriptors), the way ``__init__`` would.
Error texts come from the pure twin's helpers, so the two twins cannot drift there.
"""

from cpython.object cimport PyObject, PyTypeObject
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyObject_CheckBuffer, PyBUF_SIMPLE
from cpython.long cimport PyLong_FromLong, PyLong_FromLongLong, PyLong_FromUnsignedLongLong, PyLong_AsLongLongAndOverflow
from cpython.float cimport PyFloat_FromDouble, PyFloat_AS_DOUBLE
from cpython.ref cimport Py_INCREF, Py_DECREF
from libc.string cimport memcpy, memcmp
from libc.stdlib cimport realloc, free
from libc.math cimport isfinite

import uuid as _uuid_mod

from descartes_fast import _layout as L
from descartes_fast import _codec_py as P
from descartes_fast.errors import (
    ArityError, DecodeError, EncodeError, InvalidValueError, MalformedError,
    MessageTooLargeError, NestingTooDeepError, OutOfRangeError, TruncatedError,
    WrongTypeError, UnknownMessageTypeError)
from descartes_fast.schema import MAX_MESSAGE_SIZE

__all__ = ["encode", "decode"]

cdef extern from *:
    """
    #include <structmember.h>

    /* Offset of a __slots__ member descriptor, or -1 if *descr* is not one. */
    static Py_ssize_t df_member_offset(PyObject *descr) {
        if (!PyObject_TypeCheck(descr, &PyMemberDescr_Type)) return -1;
        PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
        return m->type == T_OBJECT_EX ? m->offset : -1;
    }
    static PyObject *df_alloc(PyObject *type) {
        PyTypeObject *tp = (PyTypeObject *)type;
        return tp->tp_alloc(tp, 0);
    }
    /* Borrowed; NULL when the slot is unset. */
    static inline PyObject *df_get_slot(PyObject *obj, Py_ssize_t off) {
        return *(PyObject **)((char *)obj + off);
    }
    static inline void df_set_slot(PyObject *obj, Py_ssize_t off, PyObject *v) {
        PyObject **p = (PyObject **)((char *)obj + off);
        PyObject *old = *p;
        Py_INCREF(v);
        *p = v;
        Py_XDECREF(old);
    }
    #if PY_VERSION_HEX >= 0x030D0000
    #define df_long_to_be16(v, out) _PyLong_AsByteArray((PyLongObject *)(v), (out), 16, 0, 0, 1)
    #else
    #define df_long_to_be16(v, out) _PyLong_AsByteArray((PyLongObject *)(v), (out), 16, 0, 0)
    #endif
    #define df_long_from_be16(p) _PyLong_FromByteArray((p), 16, 0, 0)

    /* Strict UTF-8; NULL with no exception set when the bytes are not UTF-8. */
    static PyObject *df_utf8(const char *p, Py_ssize_t n) {
        PyObject *s = PyUnicode_DecodeUTF8(p, n, NULL);
        if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) PyErr_Clear();
        return s;
    }
    /* UTF-8 of a str; NULL with no exception set when it has lone surrogates. */
    static const char *df_as_utf8(PyObject *s, Py_ssize_t *n) {
        const char *p = PyUnicode_AsUTF8AndSize(s, n);
        if (p == NULL && PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) PyErr_Clear();
        return p;
    }
    /* -- output buffer: grows by doubling; every writer returns 0 or -1 (MemoryError) -- */
    typedef struct { char *buf; Py_ssize_t len; Py_ssize_t cap; } df_out;

    static int df_grow(df_out *o, Py_ssize_t n) {
        Py_ssize_t cap = o->cap ? o->cap * 2 : 256;
        while (cap < o->len + n) cap *= 2;
        char *nb = (char *)realloc(o->buf, (size_t)cap);
        if (nb == NULL) { PyErr_NoMemory(); return -1; }
        o->buf = nb;
        o->cap = cap;
        return 0;
    }
    static inline int df_reserve(df_out *o, Py_ssize_t n) {
        return (o->len + n <= o->cap) ? 0 : df_grow(o, n);
    }
    static inline void df_put_be(df_out *o, unsigned long long v, int width) {
        for (int k = width - 1; k >= 0; k--) o->buf[o->len++] = (char)((v >> (8 * k)) & 0xff);
    }
    static inline int df_w_head(df_out *o, unsigned char code, unsigned long long v, int width) {
        if (df_reserve(o, 1 + width) < 0) return -1;
        o->buf[o->len++] = (char)code;
        df_put_be(o, v, width);
        return 0;
    }
    static inline int df_w_uint(df_out *o, unsigned long long u) {
        if (u < 0x80) return df_w_head(o, (unsigned char)u, 0, 0);
        if (u <= 0xff) return df_w_head(o, 0xcc, u, 1);
        if (u <= 0xffff) return df_w_head(o, 0xcd, u, 2);
        if (u <= 0xffffffffULL) return df_w_head(o, 0xce, u, 4);
        return df_w_head(o, 0xcf, u, 8);
    }
    static inline int df_w_int(df_out *o, long long i) {
        if (i >= 0) return df_w_uint(o, (unsigned long long)i);
        if (i >= -32) return df_w_head(o, (unsigned char)(i & 0xff), 0, 0);
        if (i >= -128) return df_w_head(o, 0xd0, (unsigned long long)i, 1);
        if (i >= -32768) return df_w_head(o, 0xd1, (unsigned long long)i, 2);
        if (i >= -2147483648LL) return df_w_head(o, 0xd2, (unsigned long long)i, 4);
        return df_w_head(o, 0xd3, (unsigned long long)i, 8);
    }
    /* header of a str (fix 0xa0/32), array (0x90/16) or map (0x80/16) */
    static inline int df_w_len(df_out *o, Py_ssize_t n, unsigned char fix, Py_ssize_t fix_max,
                               unsigned char c8, unsigned char c16, unsigned char c32) {
        if (n < fix_max) return df_w_head(o, fix | (unsigned char)n, 0, 0);
        if (c8 && n <= 0xff) return df_w_head(o, c8, (unsigned long long)n, 1);
        if (n <= 0xffff) return df_w_head(o, c16, (unsigned long long)n, 2);
        return df_w_head(o, c32, (unsigned long long)n, 4);
    }
    static inline int df_w_raw(df_out *o, const char *p, Py_ssize_t n) {
        if (df_reserve(o, n) < 0) return -1;
        memcpy(o->buf + o->len, p, (size_t)n);
        o->len += n;
        return 0;
    }
    static inline int df_w_str(df_out *o, const char *p, Py_ssize_t n) {
        if (n < 32) {
            if (df_reserve(o, 1 + n) < 0) return -1;
            o->buf[o->len++] = (char)(0xa0 | n);
            memcpy(o->buf + o->len, p, (size_t)n);
            o->len += n;
            return 0;
        }
        if (df_w_len(o, n, 0xa0, 32, 0xd9, 0xda, 0xdb) < 0) return -1;
        return df_w_raw(o, p, n);
    }
    static inline int df_w_array(df_out *o, Py_ssize_t n) { return df_w_len(o, n, 0x90, 16, 0, 0xdc, 0xdd); }
    static inline int df_w_map(df_out *o, Py_ssize_t n) { return df_w_len(o, n, 0x80, 16, 0, 0xde, 0xdf); }
    /* 0 written, -1 error set, 1 not encodable as UTF-8 (lone surrogates; no error set) */
    static inline int df_w_pystr(df_out *o, PyObject *s) {
        Py_ssize_t n;
        const char *p;
        if (PyUnicode_IS_COMPACT_ASCII(s)) {
            p = (const char *)PyUnicode_DATA(s);
            n = PyUnicode_GET_LENGTH(s);
        } else {
            p = PyUnicode_AsUTF8AndSize(s, &n);
            if (p == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return -1;
                PyErr_Clear();
                return 1;
            }
        }
        return df_w_str(o, p, n);
    }
    /* A str from UTF-8 bytes, ASCII built directly; NULL with no error set if not UTF-8. */
    static PyObject *df_str(const char *p, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) {
            unsigned long long w;
            memcpy(&w, p + i, 8);
            if (w & 0x8080808080808080ULL) goto utf8;
        }
        for (; i < n; i++) if ((unsigned char)p[i] & 0x80) goto utf8;
        {
            PyObject *s = PyUnicode_New(n, 127);
            if (s != NULL) memcpy(PyUnicode_1BYTE_DATA(s), p, (size_t)n);
            return s;
        }
    utf8:
        return df_utf8(p, n);
    }

    /* 0 and *out set, or 1 when out of range (no exception), or -1 on another error. */
    static int df_as_u64(PyObject *v, unsigned long long *out) {
        if (_PyLong_Sign(v) < 0) return 1;
        *out = PyLong_AsUnsignedLongLong(v);
        if (*out == (unsigned long long)-1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
            PyErr_Clear();
            return 1;
        }
        return 0;
    }
    """
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

# -- layout tables, flattened -------------------------------------------------------

DEF MAX_STRUCTS = 32
DEF MAX_FIELDS = 32
DEF MAX_ENUMS = 16
DEF MAX_MEMBERS = 16
DEF MAX_ELEMS = 64

cdef enum:
    K_STR = 1
    K_BOOL = 2
    K_U64 = 3
    K_I64 = 4
    K_UUID = 5
    K_TIME = 6
    K_ENUM = 7
    K_STRUCT = 8
    K_BYTES = 9
    K_JSON = 10
    K_LIST = 11
    K_MAP = 12

cdef enum:
    T_NIL = 0
    T_BOOL = 1
    T_INT = 2
    T_FLOAT = 3
    T_STR = 4
    T_BIN = 5
    T_ARRAY = 6
    T_MAP = 7
    T_EXT = 8
    T_BAD = 9

cdef struct TypeC:
    int kind
    int sub            # enum or struct index
    TypeC* elem        # list / map element type
    PyObject* spec     # the TypeSpec, for error texts (kept alive by _keep)

cdef struct FieldC:
    TypeC type
    bint optional
    bint required
    Py_ssize_t offset

cdef struct StructC:
    int nfields
    int min_len
    PyObject* cls
    FieldC fields[MAX_FIELDS]

cdef struct EnumC:
    int n
    PyObject* cls
    const char* vals[MAX_MEMBERS]
    Py_ssize_t lens[MAX_MEMBERS]
    PyObject* members[MAX_MEMBERS]

cdef StructC _structs[MAX_STRUCTS]
cdef EnumC _enums[MAX_ENUMS]
cdef TypeC _elems[MAX_ELEMS]
cdef int _n_elems = 0
cdef int _n_structs = 0
cdef int _n_rust_variants = 0
cdef int _max_depth = L.MAX_DEPTH
cdef Py_ssize_t _max_size = MAX_MESSAGE_SIZE
cdef long long NANOS = 1000000000

cdef list _keep = []            # owners of every borrowed pointer above
cdef list _names = []           # per struct: tuple of field names (str)
cdef list _name_bytes = []      # per struct: tuple of field names (bytes)
cdef list _defaults = []        # per struct: tuple of (factory, default)
cdef list _tags = []            # per message struct: tag bytes (or None)
cdef dict _index_of = {}        # class -> struct index
cdef list _msg_of_variant = []  # Rust variant index -> struct index
cdef list _msg_structs = []     # struct indices that are messages
cdef int _msg_idx[MAX_STRUCTS]  # the same, for the C-level class scan in encode
cdef const char* _tag_ptr[MAX_STRUCTS]  # per struct: wire tag (messages only)
cdef Py_ssize_t _tag_len[MAX_STRUCTS]
cdef int _n_messages = 0

cdef object _UUID = _uuid_mod.UUID
cdef object _SAFE_UNKNOWN = _uuid_mod.SafeUUID.unknown
cdef Py_ssize_t _uuid_int_off = df_member_offset(_UUID.__dict__.get("int"))
cdef Py_ssize_t _uuid_safe_off = df_member_offset(_UUID.__dict__.get("is_safe"))
cdef bint _uuid_fast = _uuid_int_off >= 0 and _uuid_safe_off >= 0

cdef tuple TYPE_NAMES = P.TYPE_NAMES
cdef unsigned char _TYPE[256]


cdef void _fill_type(TypeC* out, object t) except *:
    out.kind = t.kind
    out.sub = t.index
    out.spec = <PyObject*>t
    _keep.append(t)
    out.elem = NULL
    if t.elem is not None:
        global _n_elems
        if _n_elems >= MAX_ELEMS:
            raise RuntimeError("too many element types for the compiled codec")
        out.elem = &_elems[_n_elems]
        _n_elems += 1
        _fill_type(out.elem, t.elem)


cdef void _init_tables() except *:
    global _n_structs, _n_rust_variants
    cdef int i, j
    cdef StructC* s
    cdef EnumC* e
    if len(L.STRUCTS) > MAX_STRUCTS or len(L.ENUMS) > MAX_ENUMS:
        raise RuntimeError("schema too large for the compiled codec")
    for i, enum_cls in enumerate(L.ENUMS):
        e = &_enums[i]
        members = list(enum_cls)
        if len(members) > MAX_MEMBERS:
            raise RuntimeError("enum too large for the compiled codec")
        e.n = len(members)
        e.cls = <PyObject*>enum_cls
        for j, m in enumerate(members):
            raw = m.value.encode()
            _keep.append(raw)
            _keep.append(m)
            e.vals[j] = PyBytes_AS_STRING(raw)
            e.lens[j] = len(raw)
            e.members[j] = <PyObject*>m
    for i, spec in enumerate(L.STRUCTS):
        s = &_structs[i]
        s.nfields = len(spec.fields)
        s.min_len = spec.min_len
        s.cls = <PyObject*>spec.cls
        _keep.append(spec.cls)
        _index_of[spec.cls] = i
        for j, f in enumerate(spec.fields):
            _fill_type(&s.fields[j].type, f.type)
            s.fields[j].optional = f.optional
            s.fields[j].required = f.required
            s.fields[j].offset = df_member_offset(spec.cls.__dict__.get(f.name))
            if s.fields[j].offset < 0:
                raise RuntimeError(f"{spec.name}.{f.name} is not a __slots__ member")
        _names.append(tuple(f.name for f in spec.fields))
        _name_bytes.append(tuple(f.name.encode() for f in spec.fields))
        _defaults.append(tuple((f.factory, f.default) for f in spec.fields))
        _tags.append(spec.tag.encode() if spec.tag is not None else None)
        if spec.tag is not None:
            _msg_structs.append(i)
    _n_structs = len(L.STRUCTS)
    global _n_messages
    for i in _msg_structs:
        _msg_idx[_n_messages] = i
        _n_messages += 1
        _tag_ptr[i] = PyBytes_AS_STRING(_tags[i])
        _tag_len[i] = PyBytes_GET_SIZE(_tags[i])
    for spec in L.RUST_VARIANTS:
        _msg_of_variant.append(spec.index)
    _n_rust_variants = len(_msg_of_variant)
    for i in range(256):
        if i <= 0x7f or i >= 0xe0 or 0xcc <= i <= 0xd3:
            _TYPE[i] = T_INT
        elif i <= 0x8f or i == 0xde or i == 0xdf:
            _TYPE[i] = T_MAP
        elif i <= 0x9f or i == 0xdc or i == 0xdd:
            _TYPE[i] = T_ARRAY
        elif i <= 0xbf or 0xd9 <= i <= 0xdb:
            _TYPE[i] = T_STR
        elif i == 0xc0:
            _TYPE[i] = T_NIL
        elif i == 0xc1:
            _TYPE[i] = T_BAD
        elif i <= 0xc3:
            _TYPE[i] = T_BOOL
        elif i <= 0xc6:
            _TYPE[i] = T_BIN
        elif i <= 0xc9 or 0xd4 <= i <= 0xd8:
            _TYPE[i] = T_EXT
        else:
            _TYPE[i] = T_FLOAT


_init_tables()


cdef inline object _spec(TypeC* t):
    return <object>t.spec


# -- encoding -------------------------------------------------------------------------

cdef extern from *:
    ctypedef struct df_out:
        char* buf
        Py_ssize_t len
        Py_ssize_t cap
    int df_w_head(df_out* o, unsigned char code, unsigned long long v, int width) except -1
    int df_w_uint(df_out* o, unsigned long long u) except -1
    int df_w_int(df_out* o, long long i) except -1
    int df_w_str(df_out* o, const char* p, Py_ssize_t n) except -1
    int df_w_raw(df_out* o, const char* p, Py_ssize_t n) except -1
    int df_w_array(df_out* o, Py_ssize_t n) except -1
    int df_w_map(df_out* o, Py_ssize_t n) except -1
    int df_w_pystr(df_out* o, object s) except -1
    int df_reserve(df_out* o, Py_ssize_t n) except -1

ctypedef df_out Out

# One scratch buffer reused by every encode (the result is copied out once); a nested
# call (only possible from a finalizer run by the GC) gets a buffer of its own.
cdef char* _scratch = NULL
cdef Py_ssize_t _scratch_cap = 0
cdef bint _scratch_busy = False
DEF SCRATCH_KEEP = 1 << 20


cdef int _w_pystr(Out* o, object v) except -1:
    if df_w_pystr(o, v) == 1:
        raise EncodeError("str is not encodable as UTF-8")
    return 0


cdef int _enc_fields(Out* o, object obj, int sidx, int depth) except -1:
    cdef StructC* s = &_structs[sidx]
    cdef FieldC* f
    cdef PyObject* v
    cdef int i = 0
    try:
        for i in range(s.nfields):
            f = &s.fields[i]
            v = df_get_slot(obj, f.offset)
            if v == NULL:
                raise EncodeError("field is not set")
            if <object>v is None:
                if not f.optional:
                    _type_error(None, &f.type)
                df_w_head(o, 0xc0, 0, 0)
            else:
                _enc(o, <object>v, &f.type, depth + 1)
    except EncodeError as exc:
        exc.add_context(_names[sidx][i])
        raise
    return 0


cdef int _type_error(object v, TypeC* t) except -1:
    raise EncodeError(f"expected {_spec(t).expected}, got {type(v).__name__}")


cdef inline bint _is_int(object v):
    return PyLong_Check(v) and v is not True and v is not False


cdef int _enc(Out* o, object v, TypeC* t, int depth) except -1:
    """The frequent kinds; the others and every error go to _enc_other."""
    cdef int k = t.kind
    cdef int j
    cdef EnumC* e
    if k == K_STR:
        if PyUnicode_Check(v):
            if df_w_pystr(o, v) == 0:
                return 0
    elif k == K_ENUM:
        e = &_enums[t.sub]
        for j in range(e.n):
            if <PyObject*>v == e.members[j]:
                return df_w_str(o, e.vals[j], e.lens[j])
    elif k == K_STRUCT:
        if PyObject_TypeCheck(v, <PyTypeObject*>_structs[t.sub].cls):
            _check_depth(depth, EncodeError)
            df_w_array(o, _structs[t.sub].nfields)
            return _enc_fields(o, v, t.sub, depth)
    elif k == K_UUID:
        if PyObject_TypeCheck(v, <PyTypeObject*>_UUID):
            return _enc_uuid(o, v)
    elif k == K_BOOL:
        if v is True:
            return df_w_head(o, 0xc3, 0, 0)
        if v is False:
            return df_w_head(o, 0xc2, 0, 0)
    return _enc_other(o, v, t, depth)


cdef int _enc_other(Out* o, object v, TypeC* t, int depth) except -1:
    cdef int k = t.kind
    cdef int overflow, j
    cdef long long i
    cdef unsigned long long u
    cdef Py_ssize_t n
    cdef const char* p
    cdef EnumC* e
    cdef Py_buffer view
    if k == K_STR:
        if PyUnicode_Check(v):
            return _w_pystr(o, v)
    elif k == K_U64:
        if _is_int(v):
            if df_as_u64(v, &u) != 0:
                raise EncodeError(f"integer {int.__int__(v)} out of range for u64")
            return df_w_uint(o, u)
    elif k == K_I64:
        if _is_int(v):
            i = PyLong_AsLongLongAndOverflow(v, &overflow)
            if overflow:
                raise EncodeError(f"integer {int.__int__(v)} out of range for i64")
            return df_w_int(o, i)
    elif k == K_TIME:
        if _is_int(v):
            return _enc_time(o, v)
    elif k == K_ENUM:
        if PyUnicode_Check(v):
            e = &_enums[t.sub]
            p = df_as_utf8(v, &n)
            if p == NULL:
                if PyErr_Occurred() != NULL:
                    return -1
            else:
                for j in range(e.n):
                    if e.lens[j] == n and memcmp(e.vals[j], p, n) == 0:
                        return df_w_str(o, p, n)
            raise EncodeError(f"{str.__str__(v)!r} is not a {_spec(t).expected} value")
    elif k == K_BYTES:
        if PyBytes_Check(v) or PyByteArray_Check(v) or PyMemoryView_Check(v):
            if PyMemoryView_Check(v) and not v.c_contiguous:
                raise EncodeError("memoryview is not contiguous")
            PyObject_GetBuffer(v, &view, PyBUF_SIMPLE)
            try:
                _enc_byte_array(o, <const unsigned char*>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
            return 0
    elif k == K_JSON:
        return _enc_json(o, v, depth)
    elif k == K_LIST:
        if PyList_Check(v) or PyTuple_Check(v):
            _check_depth(depth, EncodeError)
            n = _seq_len(v)
            df_w_array(o, n)
            for j in range(n):
                _enc_item(o, <object>_seq_item(v, j), t.elem, depth + 1, j)
            return 0
    elif k == K_MAP:
        if PyDict_Check(v):
            _check_depth(depth, EncodeError)
            return _enc_map(o, v, t.elem, depth)
    return _type_error(v, t)


cdef int _enc_uuid(Out* o, object v) except -1:
    """16 bytes from the UUID's own ``int`` slot (what ``UUID.bytes`` is made from)."""
    cdef unsigned char raw16[16]
    cdef PyObject* as_int
    if _uuid_fast:
        as_int = df_get_slot(v, _uuid_int_off)
        value = <object>as_int if as_int != NULL else None
    else:
        value = getattr(v, "int", None)
    if not PyLong_Check(value):
        raise EncodeError("UUID has no valid 128-bit value")
    try:
        df_long_to_be16(value, raw16)
    except OverflowError:
        raise EncodeError("UUID has no valid 128-bit value") from None
    df_w_head(o, 0xc4, 16, 1)
    return df_w_raw(o, <const char*>raw16, 16)


# Lists, tuples and dicts are read from their storage (as the pure twin does), never
# through overridable methods. No Python code runs while the borrowed items are used.
cdef inline Py_ssize_t _seq_len(object v):
    return PyList_GET_SIZE(v) if PyList_Check(v) else PyTuple_GET_SIZE(v)


cdef inline PyObject* _seq_item(object v, Py_ssize_t j):
    return PyList_GET_ITEM(v, j) if PyList_Check(v) else PyTuple_GET_ITEM(v, j)


cdef int _enc_map(Out* o, object v, TypeC* elem, int depth) except -1:
    """A dict with str keys; values of type *elem*, or JSON values when elem is NULL."""
    cdef Py_ssize_t pos = 0
    cdef PyObject* key
    cdef PyObject* val
    df_w_map(o, PyDict_Size(v))
    while PyDict_Next(v, &pos, &key, &val):
        if not PyUnicode_Check(<object>key):
            raise EncodeError(f"expected str map key, got {type(<object>key).__name__}")
        _w_pystr(o, <object>key)
        if elem == NULL:
            _enc_json(o, <object>val, depth + 1)
        else:
            _enc_item(o, <object>val, elem, depth + 1, <object>key)
    return 0


cdef int _enc_item(Out* o, object v, TypeC* t, int depth, object where) except -1:
    try:
        if v is None:
            if t.kind == K_JSON:
                return df_w_head(o, 0xc0, 0, 0)
            return _type_error(None, t)
        return _enc(o, v, t, depth)
    except EncodeError as exc:
        exc.add_context(f"[{where!r}]")
        raise


cdef int _enc_byte_array(Out* o, const unsigned char* p, Py_ssize_t n) except -1:
    cdef Py_ssize_t j
    cdef unsigned char c
    df_w_array(o, n)
    df_reserve(o, 2 * n)
    for j in range(n):
        c = p[j]
        if c >= 0x80:
            o.buf[o.len] = <char>0xcc
            o.len += 1
        o.buf[o.len] = <char>c
        o.len += 1
    return 0


cdef int _enc_time(Out* o, object v) except -1:
    cdef int overflow
    cdef long long ns = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow < 0 or (overflow == 0 and ns < 0):
        raise EncodeError(f"timestamp {int.__int__(v)} is before 1970")
    if overflow == 0:
        df_w_array(o, 2)
        df_w_uint(o, <unsigned long long>(ns // NANOS))
        return df_w_uint(o, <unsigned long long>(ns % NANOS))
    secs, nanos = divmod(int.__int__(v), NANOS)
    if secs > P.I64_MAX:
        raise EncodeError(f"timestamp {int.__int__(v)} out of range")
    df_w_array(o, 2)
    df_w_uint(o, <unsigned long long>secs)
    return df_w_uint(o, <unsigned long long>nanos)


cdef int _enc_json(Out* o, object v, int depth) except -1:
    cdef int overflow
    cdef long long i
    cdef unsigned long long u
    cdef double d
    cdef unsigned long long bits
    cdef Py_ssize_t j, n
    if v is None:
        return df_w_head(o, 0xc0, 0, 0)
    if v is True:
        return df_w_head(o, 0xc3, 0, 0)
    if v is False:
        return df_w_head(o, 0xc2, 0, 0)
    if PyLong_Check(v):
        i = PyLong_AsLongLongAndOverflow(v, &overflow)
        if overflow == 0:
            return df_w_int(o, i)
        if overflow > 0 and df_as_u64(v, &u) == 0:
            return df_w_uint(o, u)
        raise EncodeError(f"integer {int.__int__(v)} out of range for a JSON number")
    if PyFloat_Check(v):
        d = PyFloat_AS_DOUBLE(v)
        if not isfinite(d):
            raise EncodeError(f"JSON numbers cannot be {d!r}")
        memcpy(&bits, &d, 8)
        return df_w_head(o, 0xcb, bits, 8)
    if PyUnicode_Check(v):
        return _w_pystr(o, v)
    if PyList_Check(v) or PyTuple_Check(v):
        _check_depth(depth, EncodeError)
        n = _seq_len(v)
        df_w_array(o, n)
        for j in range(n):
            _enc_json(o, <object>_seq_item(v, j), depth + 1)
        return 0
    if PyDict_Check(v):
        _check_depth(depth, EncodeError)
        return _enc_map(o, v, NULL, depth)
    raise EncodeError(f"expected JSON value, got {type(v).__name__}")


cdef inline int _check_depth(int depth, object error) except -1:
    if depth > _max_depth:
        raise error(f"containers nested deeper than {_max_depth} levels")
    return 0


cdef int _message_index(object msg) except -2:
    tp = type(msg)
    cdef PyObject* cls = <PyObject*>tp
    cdef int j
    for j in range(_n_messages):
        if _structs[_msg_idx[j]].cls == cls:
            return _msg_idx[j]
    for base in type(msg).__mro__[1:]:
        for j in range(_n_messages):
            if _structs[_msg_idx[j]].cls == <PyObject*>base:
                return _msg_idx[j]
    raise EncodeError(f"expected a message, got {type(msg).__name__}")


def encode(msg):
    """Encode a message object to rmp-serde compact MessagePack."""
    global _scratch, _scratch_cap, _scratch_busy
    cdef int sidx = _message_index(msg)
    cdef Out o
    cdef bint own = not _scratch_busy
    cdef bytes tag = _tags[sidx]
    o.len = 0
    if own:
        _scratch_busy = True
        o.buf = _scratch
        o.cap = _scratch_cap
    else:
        o.buf = NULL
        o.cap = 0
    try:
        df_w_array(&o, _structs[sidx].nfields + 1)
        df_w_str(&o, PyBytes_AS_STRING(tag), PyBytes_GET_SIZE(tag))
        try:
            _enc_fields(&o, msg, sidx, 1)
        except EncodeError as exc:
            exc.message_type = (<object>_structs[sidx].cls).__name__
            raise
        if o.len > _max_size:
            raise MessageTooLargeError(o.len, _max_size)
        return PyBytes_FromStringAndSize(o.buf, o.len)
    finally:
        if own:
            if o.cap > SCRATCH_KEEP:
                free(o.buf)
                o.buf = NULL
                o.cap = 0
            _scratch = o.buf
            _scratch_cap = o.cap
            _scratch_busy = False
        else:
            free(o.buf)


# -- decoding -------------------------------------------------------------------------

cdef struct Rd:
    const unsigned char* p
    const unsigned char* end

cdef struct Head:
    int t
    bint neg           # T_INT: the value is i (negative), else u
    unsigned long long u
    long long i
    double f
    Py_ssize_t n       # str / bin / ext payload length, array / map count


cdef inline unsigned long long _be(const unsigned char* p, int width) noexcept:
    cdef unsigned long long v = 0
    cdef int k
    for k in range(width):
        v = (v << 8) | p[k]
    return v


cdef inline const unsigned char* _need(Rd* r, Py_ssize_t n) except NULL:
    cdef const unsigned char* p = r.p
    if r.end - p < n:
        raise TruncatedError("truncated input")
    r.p = p + n
    return p


cdef inline int _peek(Rd* r) except -1:
    if r.p >= r.end:
        raise TruncatedError("truncated input")
    cdef int t = _TYPE[r.p[0]]
    if t == T_BAD:
        raise MalformedError("invalid MessagePack byte 0xc1")
    return t


cdef int _head(Rd* r, Head* h) except -1:
    cdef int t = _peek(r)
    cdef unsigned char b = r.p[0]
    cdef const unsigned char* q
    cdef unsigned long long bits
    cdef float f32
    cdef unsigned int b32
    r.p += 1
    h.t = t
    h.neg = False
    if b <= 0x7f:
        h.u = b
    elif b >= 0xe0:
        h.neg = True
        h.i = <signed char>b
    elif b <= 0x8f:
        h.n = b & 0x0f
    elif b <= 0x9f:
        h.n = b & 0x0f
    elif b <= 0xbf:
        h.n = b & 0x1f
    elif b == 0xc0:
        pass
    elif b <= 0xc3:
        h.u = b == 0xc3
    elif b >= 0xd4 and b <= 0xd8:
        h.n = (1 << (b - 0xd4)) + 1
    elif b == 0xca:
        q = _need(r, 4)
        b32 = <unsigned int>_be(q, 4)
        memcpy(&f32, &b32, 4)
        h.f = f32
    elif b == 0xcb:
        q = _need(r, 8)
        bits = _be(q, 8)
        memcpy(&h.f, &bits, 8)
    elif b >= 0xcc and b <= 0xcf:
        q = _need(r, 1 << (b - 0xcc))
        h.u = _be(q, 1 << (b - 0xcc))
    elif b >= 0xd0 and b <= 0xd3:
        q = _need(r, 1 << (b - 0xd0))
        if b == 0xd0:
            h.i = <signed char>q[0]
        elif b == 0xd1:
            h.i = <short>_be(q, 2)
        elif b == 0xd2:
            h.i = <int>_be(q, 4)
        else:
            h.i = <long long>_be(q, 8)
        if h.i < 0:
            h.neg = True
        else:
            h.u = <unsigned long long>h.i
    else:
        # lengths: bin8/16/32 c4-c6, ext8/16/32 c7-c9, str8/16/32 d9-db,
        # array16/32 dc-dd, map16/32 de-df
        if b <= 0xc6:
            q = _need(r, 1 << (b - 0xc4))
            h.n = <Py_ssize_t>_be(q, 1 << (b - 0xc4))
        elif b <= 0xc9:
            q = _need(r, 1 << (b - 0xc7))
            h.n = <Py_ssize_t>_be(q, 1 << (b - 0xc7)) + 1
        elif b <= 0xdb:
            q = _need(r, 1 << (b - 0xd9))
            h.n = <Py_ssize_t>_be(q, 1 << (b - 0xd9))
        elif b <= 0xdd:
            q = _need(r, 2 if b == 0xdc else 4)
            h.n = <Py_ssize_t>_be(q, 2 if b == 0xdc else 4)
        else:
            q = _need(r, 2 if b == 0xde else 4)
            h.n = <Py_ssize_t>_be(q, 2 if b == 0xde else 4)
    return t


cdef inline object _int_obj(Head* h):
    if h.neg:
        return PyLong_FromLongLong(h.i)
    return PyLong_FromUnsignedLongLong(h.u)


cdef object _wrong(object expected, int t):
    raise WrongTypeError(f"expected {expected}, got {TYPE_NAMES[t]}")


cdef object _str_from(const unsigned char* p, Py_ssize_t n):
    cdef PyObject* s = df_str(<const char*>p, n)
    if s == NULL:
        if PyErr_Occurred() != NULL:
            raise MemoryError()
        raise InvalidValueError("invalid UTF-8 in str")
    cdef object out = <object>s  # the cast adds a reference: give df_str's back
    Py_DECREF(out)
    return out


cdef int _skip(Rd* r, int depth) except -1:
    cdef Head h
    cdef Py_ssize_t j, count
    cdef int t = _head(r, &h)
    if t == T_STR or t == T_BIN or t == T_EXT:
        _need(r, h.n)
    elif t == T_ARRAY or t == T_MAP:
        _check_depth(depth, NestingTooDeepError)
        count = h.n if t == T_ARRAY else 2 * h.n
        for j in range(count):
            _skip(r, depth + 1)
    return 0


cdef object _message(Rd* r):
    cdef Head h
    cdef int t = _head(r, &h)
    cdef int sidx = -1
    cdef const unsigned char* start
    cdef Py_ssize_t j
    if t == T_ARRAY:
        if h.n == 0:
            raise UnknownMessageTypeError("missing message type tag")
        sidx = _tag(r)
        try:
            return _struct_array(r, sidx, h.n - 1, 1)
        except DecodeError as exc:
            exc.message_type = (<object>_structs[sidx].cls).__name__
            raise
    if t == T_MAP:
        start = r.p
        for j in range(h.n):
            if _key(r, -1) == -2:
                if sidx >= 0:
                    raise ArityError("duplicate field 'type'")
                sidx = _tag(r)
            else:
                _skip(r, 2)
        if sidx < 0:
            raise UnknownMessageTypeError("missing message type tag")
        r.p = start
        try:
            return _struct_map(r, sidx, h.n, 1)
        except DecodeError as exc:
            exc.message_type = (<object>_structs[sidx].cls).__name__
            raise
    return _wrong("array or map", t)


cdef int _tag(Rd* r) except -1:
    cdef Head h
    cdef int t = _head(r, &h)
    cdef const unsigned char* p
    cdef int j, sidx
    if t == T_STR or t == T_BIN:
        p = _need(r, h.n)
        for j in range(_n_messages):
            sidx = _msg_idx[j]
            if _tag_len[sidx] == h.n and memcmp(_tag_ptr[sidx], p, h.n) == 0:
                return sidx
        raise UnknownMessageTypeError(
            f"unknown message type {P._shown(PyBytes_FromStringAndSize(<const char*>p, h.n))}")
    if t == T_INT:
        if not h.neg and h.u < <unsigned long long>_n_rust_variants:
            return _msg_of_variant[h.u]
        raise UnknownMessageTypeError(f"unknown message type index {_int_obj(&h)}")
    _wrong("message type tag", t)
    return -1


cdef int _key(Rd* r, int sidx) except -3:
    """Field index, -1 to ignore, or -2 for "type" when sidx < 0 (envelope scan)."""
    cdef Head h
    cdef int t = _head(r, &h)
    cdef const unsigned char* p
    cdef int j
    cdef tuple names
    if t == T_STR or t == T_BIN:
        p = _need(r, h.n)
        if sidx < 0:
            return -2 if h.n == 4 and memcmp(p, b"type", 4) == 0 else -1
        names = <tuple>_name_bytes[sidx]
        for j in range(_structs[sidx].nfields):
            name = names[j]
            if PyBytes_GET_SIZE(name) == h.n and memcmp(PyBytes_AS_STRING(name), p, h.n) == 0:
                return j
        return -1
    if t == T_INT and not h.neg:
        if sidx < 0:
            return -1
        return <int>h.u if h.u < <unsigned long long>_structs[sidx].nfields else -1
    _wrong("field name", t)
    return -3


cdef inline object _default(int sidx, int j):
    factory, default = (<tuple>_defaults[sidx])[j]
    return factory() if factory is not None else default


cdef object _struct_array(Rd* r, int sidx, Py_ssize_t n, int depth):
    cdef StructC* s = &_structs[sidx]
    cdef int j = 0
    _check_depth(depth, NestingTooDeepError)
    if n < s.min_len or n > s.nfields:
        raise ArityError(P._arity(n, s.min_len, s.nfields))
    obj = df_alloc(<object>s.cls)
    try:
        for j in range(n):
            df_set_slot(obj, s.fields[j].offset, _field(r, &s.fields[j], depth + 1))
    except DecodeError as exc:
        exc.add_context(_names[sidx][j])
        raise
    for j in range(n, s.nfields):
        df_set_slot(obj, s.fields[j].offset, _default(sidx, j))
    return obj


cdef object _struct_map(Rd* r, int sidx, Py_ssize_t count, int depth):
    cdef StructC* s = &_structs[sidx]
    cdef unsigned int seen = 0
    cdef int cur = -1
    cdef int j
    cdef Py_ssize_t k
    _check_depth(depth, NestingTooDeepError)
    obj = df_alloc(<object>s.cls)
    try:
        for k in range(count):
            cur = -1
            j = _key(r, sidx)
            if j < 0:
                _skip(r, depth + 1)
                continue
            cur = j
            if seen & (1u << j):
                raise ArityError("duplicate field")
            seen |= 1u << j
            df_set_slot(obj, s.fields[j].offset, _field(r, &s.fields[j], depth + 1))
    except DecodeError as exc:
        if cur >= 0:
            exc.add_context(_names[sidx][cur])
        raise
    for j in range(s.nfields):
        if not seen & (1u << j):
            if s.fields[j].required:
                exc = ArityError("missing field")
                exc.add_context(_names[sidx][j])
                raise exc
            df_set_slot(obj, s.fields[j].offset, _default(sidx, j))
    return obj


cdef inline object _field(Rd* r, FieldC* f, int depth):
    if f.optional and r.p < r.end and r.p[0] == 0xc0:
        r.p += 1
        return None
    return _value(r, &f.type, depth)


cdef object _value(Rd* r, TypeC* t, int depth):
    """The common encodings of the frequent kinds; everything else goes to _value_other."""
    cdef int k = t.kind
    cdef unsigned char b
    cdef Py_ssize_t n
    if r.p < r.end:
        b = r.p[0]
        if k == K_STR:
            if (b & 0xe0) == 0xa0:
                n = b & 0x1f
                r.p += 1
                return _str_from(_need(r, n), n)
            if b == 0xd9 and r.end - r.p >= 2:
                n = r.p[1]
                r.p += 2
                return _str_from(_need(r, n), n)
        elif k == K_ENUM:
            if (b & 0xe0) == 0xa0:
                n = b & 0x1f
                r.p += 1
                return _enum(t, _need(r, n), n)
        elif k == K_STRUCT:
            if (b & 0xf0) == 0x90:
                r.p += 1
                return _struct_array(r, t.sub, b & 0x0f, depth)
        elif k == K_UUID:
            if b == 0xc4 and r.end - r.p >= 18 and r.p[1] == 16:
                r.p += 2
                return _make_uuid(_need(r, 16))
        elif k == K_U64:
            if b < 0x80 or 0xcc <= b <= 0xcf:
                return PyLong_FromUnsignedLongLong(_uint(r, 64))
        elif k == K_BOOL:
            if b == 0xc2 or b == 0xc3:
                r.p += 1
                return b == 0xc3
        elif k == K_TIME:
            if b == 0x92:
                _check_depth(depth, NestingTooDeepError)
                r.p += 1
                return _time_array(r)
    return _value_other(r, t, depth)


cdef object _value_other(Rd* r, TypeC* t, int depth):
    cdef int k = t.kind
    cdef Head h
    cdef int typ
    cdef const unsigned char* p
    if k == K_JSON:
        return _json(r, depth)
    typ = _head(r, &h)
    if k == K_STR:
        if typ == T_STR or typ == T_BIN:
            return _str_from(_need(r, h.n), h.n)
    elif k == K_BOOL:
        if typ == T_BOOL:
            return h.u != 0
    elif k == K_U64:
        if typ == T_INT:
            if h.neg:
                raise OutOfRangeError(f"integer {h.i} out of range for u64")
            return PyLong_FromUnsignedLongLong(h.u)
    elif k == K_I64:
        if typ == T_INT:
            if not h.neg and h.u > 0x7fffffffffffffffULL:
                raise OutOfRangeError(f"integer {h.u} out of range for i64")
            return _int_obj(&h)
    elif k == K_UUID:
        if typ == T_BIN:
            if h.n != 16:
                raise InvalidValueError(f"UUID bin must be 16 bytes, got {h.n}")
            return _make_uuid(_need(r, 16))
        if typ == T_STR:
            return P._parse_uuid(_str_from(_need(r, h.n), h.n))
    elif k == K_TIME:
        if typ == T_ARRAY:
            _check_depth(depth, NestingTooDeepError)
            if h.n != 2:
                raise ArityError(P._arity(h.n, 2, 2))
            return _time_array(r)
        if typ == T_MAP:
            _check_depth(depth, NestingTooDeepError)
            return _time_map(r, h.n)
    elif k == K_ENUM:
        if typ == T_STR:
            return _enum(t, _need(r, h.n), h.n)
        if typ == T_MAP:
            _check_depth(depth, NestingTooDeepError)
            return _enum_map(r, t, h.n)
    elif k == K_STRUCT:
        if typ == T_ARRAY:
            return _struct_array(r, t.sub, h.n, depth)
        if typ == T_MAP:
            return _struct_map(r, t.sub, h.n, depth)
    elif k == K_BYTES:
        if typ == T_BIN:
            p = _need(r, h.n)
            return PyBytes_FromStringAndSize(<const char*>p, h.n)
        if typ == T_ARRAY:
            _check_depth(depth, NestingTooDeepError)
            return _byte_array(r, h.n)
    elif k == K_LIST:
        if typ == T_ARRAY:
            _check_depth(depth, NestingTooDeepError)
            return _list(r, t.elem, h.n, depth + 1)
    elif k == K_MAP:
        if typ == T_MAP:
            _check_depth(depth, NestingTooDeepError)
            return _map(r, t.elem, h.n, depth + 1)
    return _wrong(_spec(t).expected, typ)


cdef object _make_uuid(const unsigned char* p):
    if not _uuid_fast:
        return _UUID(bytes=PyBytes_FromStringAndSize(<const char*>p, 16))
    obj = df_alloc(_UUID)
    df_set_slot(obj, _uuid_int_off, df_long_from_be16(p))
    df_set_slot(obj, _uuid_safe_off, _SAFE_UNKNOWN)
    return obj


cdef object _enum(TypeC* t, const unsigned char* p, Py_ssize_t n):
    cdef EnumC* e = &_enums[t.sub]
    cdef int j
    for j in range(e.n):
        if e.lens[j] == n and memcmp(e.vals[j], p, n) == 0:
            return <object>e.members[j]
    return P._enum(_spec(t), PyBytes_FromStringAndSize(<const char*>p, n))


cdef object _enum_map(Rd* r, TypeC* t, Py_ssize_t count):
    cdef Head h
    cdef int typ
    if count != 1:
        raise InvalidValueError(
            f"expected {_spec(t).expected} as a one-entry map, got {count} entries")
    typ = _head(r, &h)
    if typ != T_STR and typ != T_BIN:
        raise WrongTypeError(f"expected {_spec(t).expected} variant name, got {TYPE_NAMES[typ]}")
    member = _enum(t, _need(r, h.n), h.n)
    typ = _head(r, &h)
    if typ == T_NIL or (typ == T_MAP and h.n == 0):
        return member
    raise WrongTypeError(f"expected nil for unit variant, got {TYPE_NAMES[typ]}")


cdef unsigned long long _uint(Rd* r, int bits) except? 0xffffffffffffffffULL:
    cdef Head h
    cdef unsigned char b
    cdef int width
    if r.p < r.end:  # fast path: positive fixint, uint8/16/32 (u64 only if bits == 64)
        b = r.p[0]
        if b < 0x80:
            r.p += 1
            return b
        if 0xcc <= b <= 0xce or (b == 0xcf and bits == 64):
            width = 1 << (b - 0xcc)
            if r.end - r.p > width and (bits == 64 or width * 8 <= bits):
                r.p += 1 + width
                return _be(r.p - width, width)
    cdef int t = _head(r, &h)
    if t != T_INT:
        _wrong(f"u{bits}", t)
    if h.neg or (bits < 64 and h.u >= (1ULL << bits)):
        raise OutOfRangeError(f"integer {_int_obj(&h)} out of range for u{bits}")
    return h.u


cdef object _timestamp(unsigned long long secs, unsigned long long nanos):
    if secs <= 9000000000ULL:
        return PyLong_FromLongLong(<long long>secs * NANOS + <long long>nanos)
    return P._timestamp(secs, nanos)


cdef object _time_array(Rd* r):
    cdef unsigned long long secs = _uint(r, 64)
    cdef unsigned long long nanos = _uint(r, 32)
    return _timestamp(secs, nanos)


cdef object _time_map(Rd* r, Py_ssize_t count):
    cdef Head h
    cdef int typ, j
    cdef unsigned long long parts[2]
    cdef bint have[2]
    cdef const unsigned char* p
    cdef Py_ssize_t k
    have[0] = have[1] = False
    for k in range(count):
        typ = _head(r, &h)
        if typ != T_STR and typ != T_BIN:
            _wrong("field name", typ)
        p = _need(r, h.n)
        if h.n == 16 and memcmp(p, b"secs_since_epoch", 16) == 0:
            j = 0
        elif h.n == 17 and memcmp(p, b"nanos_since_epoch", 17) == 0:
            j = 1
        else:
            raise ArityError(
                f"unknown field {P._shown(PyBytes_FromStringAndSize(<const char*>p, h.n))}")
        if have[j]:
            raise ArityError(f"duplicate field {P._TIME_NAMES[j]!r}")
        parts[j] = _uint(r, 64 if j == 0 else 32)
        have[j] = True
    for j in range(2):
        if not have[j]:
            raise ArityError(f"missing field {P._TIME_NAMES[j]!r}")
    return _timestamp(parts[0], parts[1])


cdef object _byte_array(Rd* r, Py_ssize_t n):
    # Each element takes at least one byte, so never allocate more than what is left:
    # a claimed count past the end is reported as truncation at the right index.
    cdef Py_ssize_t cap = n if n <= r.end - r.p else r.end - r.p
    cdef Py_ssize_t j = 0
    cdef unsigned char b
    cdef Head h
    cdef int t
    out = PyBytes_FromStringAndSize(NULL, cap)
    cdef unsigned char* dst = <unsigned char*>PyBytes_AS_STRING(out)
    try:
        for j in range(n):
            if r.p < r.end:
                b = r.p[0]
                if b < 0x80:
                    dst[j] = b
                    r.p += 1
                    continue
                if b == 0xcc and r.end - r.p >= 2:
                    dst[j] = r.p[1]
                    r.p += 2
                    continue
            t = _head(r, &h)
            if t != T_INT:
                _wrong("u8", t)
            if h.neg or h.u > 0xff:
                raise OutOfRangeError(f"integer {_int_obj(&h)} out of range for u8")
            dst[j] = <unsigned char>h.u
    except DecodeError as exc:
        exc.add_context(f"[{j!r}]")
        raise
    return out


cdef object _list(Rd* r, TypeC* elem, Py_ssize_t n, int depth):
    cdef Py_ssize_t j = 0
    if n > r.end - r.p:  # cannot all be there: build as we go, truncation will stop us
        out = []
        try:
            for j in range(n):
                out.append(_value(r, elem, depth))
        except DecodeError as exc:
            exc.add_context(f"[{j!r}]")
            raise
        return out
    out = PyList_New(n)  # NULL items until set; list dealloc and GC accept that
    try:
        for j in range(n):
            v = _value(r, elem, depth)
            Py_INCREF(v)
            PyList_SET_ITEM(out, j, v)
    except DecodeError as exc:
        exc.add_context(f"[{j!r}]")
        raise
    return out


cdef object _map(Rd* r, TypeC* elem, Py_ssize_t n, int depth):
    cdef dict out = {}
    cdef Head h
    cdef int typ
    cdef Py_ssize_t k
    for k in range(n):
        typ = _head(r, &h)
        if typ != T_STR and typ != T_BIN:
            _wrong("str map key", typ)
        key = _str_from(_need(r, h.n), h.n)
        try:
            out[key] = _value(r, elem, depth)
        except DecodeError as exc:
            exc.add_context(f"[{key!r}]")
            raise
    return out


cdef object _json(Rd* r, int depth):
    cdef Head h
    cdef int t = _head(r, &h)
    cdef Py_ssize_t j
    cdef list lst
    cdef dict d
    if t == T_NIL:
        return None
    if t == T_BOOL:
        return h.u != 0
    if t == T_INT:
        return _int_obj(&h)
    if t == T_FLOAT:
        return PyFloat_FromDouble(h.f) if isfinite(h.f) else None
    if t == T_STR:
        return _str_from(_need(r, h.n), h.n)
    if t == T_ARRAY:
        _check_depth(depth, NestingTooDeepError)
        lst = []
        for j in range(h.n):
            lst.append(_json(r, depth + 1))
        return lst
    if t == T_MAP:
        _check_depth(depth, NestingTooDeepError)
        d = {}
        for j in range(h.n):
            t = _head(r, &h)
            if t != T_STR:
                _wrong("str map key", t)
            key = _str_from(_need(r, h.n), h.n)
            d[key] = _json(r, depth + 1)
        return d
    return _wrong("JSON value", t)


def decode(buf):
    """Decode one message from a bytes-like object (bytes, bytearray, memoryview, zmq.Frame)."""
    cdef Rd r
    cdef Py_buffer view
    cdef Py_ssize_t n
    if PyBytes_CheckExact(buf):
        n = PyBytes_GET_SIZE(buf)
        r.p = <const unsigned char*>PyBytes_AS_STRING(buf)
        return _decode_at(&r, n)
    if not PyObject_CheckBuffer(buf):
        raise TypeError("decode() needs a bytes-like object (bytes, bytearray, memoryview, "
                        f"zmq.Frame), not {type(buf).__name__}")
    if PyMemoryView_Check(buf) and not buf.c_contiguous:
        raise TypeError("decode() needs a contiguous buffer")
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        r.p = <const unsigned char*>view.buf
        return _decode_at(&r, view.len)
    finally:
        PyBuffer_Release(&view)


cdef object _decode_at(Rd* r, Py_ssize_t n):
    if n > _max_size:
        raise MessageTooLargeError(n, _max_size)
    if n == 0:
        raise TruncatedError("empty input")
    r.end = r.p + n
    return _message(r)
