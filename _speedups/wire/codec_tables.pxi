# The layout tables of descartes_fast.wire.layout, flattened into C structs at import.
# Capacities of the flattened tables (checked against the schema at import).
cdef enum:
    MAX_STRUCTS = 32
    MAX_FIELDS = 32
    MAX_ENUMS = 16
    MAX_MEMBERS = 16
    MAX_ELEMS = 64

# The wire kinds, MessagePack value types and limits of descartes_fast.wire.constants, as C
# constants (generated at build time; the module refuses to import if they went stale).
include "_constants.pxi"

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
cdef int _max_depth = MAX_DEPTH
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
