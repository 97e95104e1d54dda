/* A growable output buffer and the MessagePack writers of the compiled codec
 * (descartes_fast.wire._codec_c). Header-only; every writer returns 0, or -1 with
 * MemoryError set. The codes are those of the MessagePack specification. */
#ifndef DESCARTES_FAST_MSGPACK_WRITER_H
#define DESCARTES_FAST_MSGPACK_WRITER_H

#include <Python.h>
#include <stdlib.h>
#include <string.h>

/* grows by doubling */
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
/* bin 8/16/32 header, then the bytes */
static inline int df_w_bin(df_out *o, const char *p, Py_ssize_t n) {
    int r = n <= 0xff ? df_w_head(o, 0xc4, (unsigned long long)n, 1)
          : n <= 0xffff ? df_w_head(o, 0xc5, (unsigned long long)n, 2)
          : df_w_head(o, 0xc6, (unsigned long long)n, 4);
    return r < 0 ? r : df_w_raw(o, p, n);
}
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

#endif /* DESCARTES_FAST_MSGPACK_WRITER_H */
