# The decoder: MessagePack read straight from the input buffer into schema objects.
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
        raise TruncatedError(T.TRUNCATED)
    r.p = p + n
    return p


cdef inline int _peek(Rd* r) except -1:
    if r.p >= r.end:
        raise TruncatedError(T.TRUNCATED)
    cdef int t = _TYPE[r.p[0]]
    if t == T_BAD:
        raise MalformedError(T.RESERVED_BYTE)
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
    raise WrongTypeError(T.expected_type(expected, t))


cdef object _str_from(const unsigned char* p, Py_ssize_t n):
    cdef PyObject* s = df_str(<const char*>p, n)
    if s == NULL:
        if PyErr_Occurred() != NULL:
            raise MemoryError()
        raise InvalidValueError(T.BAD_UTF8)
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
            raise UnknownMessageTypeError(T.NO_TAG)
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
                    raise ArityError(T.DUPLICATE_TAG)
                sidx = _tag(r)
            else:
                _skip(r, 2)
        if sidx < 0:
            raise UnknownMessageTypeError(T.NO_TAG)
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
        raise UnknownMessageTypeError(T.unknown_tag(PyBytes_FromStringAndSize(<const char*>p, h.n)))
    if t == T_INT:
        if not h.neg and h.u < <unsigned long long>_n_rust_variants:
            return _msg_of_variant[h.u]
        raise UnknownMessageTypeError(T.unknown_tag_index(_int_obj(&h)))
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
        raise ArityError(T.arity(n, s.min_len, s.nfields))
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
                raise ArityError(T.DUPLICATE_FIELD)
            seen |= 1u << j
            df_set_slot(obj, s.fields[j].offset, _field(r, &s.fields[j], depth + 1))
    except DecodeError as exc:
        if cur >= 0:
            exc.add_context(_names[sidx][cur])
        raise
    for j in range(s.nfields):
        if not seen & (1u << j):
            if s.fields[j].required:
                exc = ArityError(T.MISSING_FIELD)
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
                raise OutOfRangeError(T.int_range(h.i, "u64"))
            return PyLong_FromUnsignedLongLong(h.u)
    elif k == K_I64:
        if typ == T_INT:
            if not h.neg and h.u > 0x7fffffffffffffffULL:
                raise OutOfRangeError(T.int_range(h.u, "i64"))
            return _int_obj(&h)
    elif k == K_UUID:
        if typ == T_BIN:
            if h.n != 16:
                raise InvalidValueError(T.uuid_bin_length(h.n))
            return _make_uuid(_need(r, 16))
        if typ == T_STR:
            return P._parse_uuid(_str_from(_need(r, h.n), h.n))
    elif k == K_TIME:
        if typ == T_ARRAY:
            _check_depth(depth, NestingTooDeepError)
            if h.n != 2:
                raise ArityError(T.arity(h.n, 2, 2))
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
    elif k == K_BYTES or k == K_BIN:
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
        raise InvalidValueError(T.enum_map_entries(_spec(t).expected, count))
    typ = _head(r, &h)
    if typ != T_STR and typ != T_BIN:
        raise WrongTypeError(T.enum_variant_name(_spec(t).expected, typ))
    member = _enum(t, _need(r, h.n), h.n)
    typ = _head(r, &h)
    if typ == T_NIL or (typ == T_MAP and h.n == 0):
        return member
    raise WrongTypeError(T.unit_variant(typ))


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
        raise OutOfRangeError(T.int_range(_int_obj(&h), f"u{bits}"))
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
            raise ArityError(T.unknown_field(PyBytes_FromStringAndSize(<const char*>p, h.n)))
        if have[j]:
            raise ArityError(T.duplicate_named_field(P._TIME_NAMES[j]))
        parts[j] = _uint(r, 64 if j == 0 else 32)
        have[j] = True
    for j in range(2):
        if not have[j]:
            raise ArityError(T.missing_named_field(P._TIME_NAMES[j]))
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
                raise OutOfRangeError(T.int_range(_int_obj(&h), "u8"))
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
        raise TypeError(T.not_bytes_like(type(buf).__name__))
    if PyMemoryView_Check(buf) and not buf.c_contiguous:
        raise TypeError(T.NOT_CONTIGUOUS)
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
        raise TruncatedError(T.EMPTY)
    r.end = r.p + n
    return _message(r)
