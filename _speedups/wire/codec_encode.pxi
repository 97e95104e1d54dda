# The encoder: schema objects to rmp-serde compact MessagePack, into one reusable C buffer.
cdef extern from "msgpack_writer.h":
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
    int df_w_bin(df_out* o, const char* p, Py_ssize_t n) except -1
    int df_w_pystr(df_out* o, object s) except -1
    int df_reserve(df_out* o, Py_ssize_t n) except -1

ctypedef df_out Out

# One scratch buffer reused by every encode (the result is copied out once); a nested
# call (only possible from a finalizer run by the GC) gets a buffer of its own.
cdef char* _scratch = NULL
cdef Py_ssize_t _scratch_cap = 0
cdef bint _scratch_busy = False
cdef enum:
    SCRATCH_KEEP = 1 << 20  # a scratch buffer grown past this is freed after use


cdef int _w_pystr(Out* o, object v) except -1:
    if df_w_pystr(o, v) == 1:
        raise EncodeError(T.STR_NOT_UTF8)
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
                raise EncodeError(T.FIELD_NOT_SET)
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
    raise EncodeError(T.expected(_spec(t).expected, type(v).__name__))


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
                raise EncodeError(T.int_range(int.__int__(v), "u64"))
            return df_w_uint(o, u)
    elif k == K_I64:
        if _is_int(v):
            i = PyLong_AsLongLongAndOverflow(v, &overflow)
            if overflow:
                raise EncodeError(T.int_range(int.__int__(v), "i64"))
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
            raise EncodeError(T.not_enum_value(str.__str__(v), _spec(t).expected))
    elif k == K_BYTES or k == K_BIN:
        if PyBytes_Check(v) or PyByteArray_Check(v) or PyMemoryView_Check(v):
            if PyMemoryView_Check(v) and not v.c_contiguous:
                raise EncodeError(T.MEMORYVIEW_NOT_CONTIGUOUS)
            PyObject_GetBuffer(v, &view, PyBUF_SIMPLE)
            try:
                if k == K_BIN:
                    df_w_bin(o, <const char*>view.buf, view.len)
                else:
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
        raise EncodeError(T.UUID_NO_VALUE)
    try:
        df_long_to_be16(value, raw16)
    except OverflowError:
        raise EncodeError(T.UUID_NO_VALUE) from None
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
            raise EncodeError(T.expected("str map key", type(<object>key).__name__))
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
        raise EncodeError(T.before_epoch(int.__int__(v)))
    if overflow == 0:
        df_w_array(o, 2)
        df_w_uint(o, <unsigned long long>(ns // NANOS))
        return df_w_uint(o, <unsigned long long>(ns % NANOS))
    secs, nanos = divmod(int.__int__(v), NANOS)
    if secs > P.I64_MAX:
        raise EncodeError(T.time_range(int.__int__(v)))
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
        raise EncodeError(T.json_int_range(int.__int__(v)))
    if PyFloat_Check(v):
        d = PyFloat_AS_DOUBLE(v)
        if not isfinite(d):
            raise EncodeError(T.json_float(d))
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
    raise EncodeError(T.expected("JSON value", type(v).__name__))


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
    raise EncodeError(T.not_a_message(type(msg).__name__))


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
