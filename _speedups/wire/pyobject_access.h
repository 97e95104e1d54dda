/* Object access for the compiled codec (descartes_fast.wire._codec_c): __slots__ members,
 * UUIDs as 16 big-endian bytes, UTF-8 in both directions, u64 conversion. Header-only:
 * every function is static; the codec's .pyx declares them with `cdef extern from`. */
#ifndef DESCARTES_FAST_PYOBJECT_ACCESS_H
#define DESCARTES_FAST_PYOBJECT_ACCESS_H

#include <Python.h>
#include <structmember.h>
#include <string.h>

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

#endif /* DESCARTES_FAST_PYOBJECT_ACCESS_H */
