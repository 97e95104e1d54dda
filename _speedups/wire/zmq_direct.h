/* Direct calls into the libzmq that pyzmq loaded, for the compiled dispatcher
 * (descartes_fast.wire._dispatch_c). Header-only.
 *
 * The functions are resolved from the handle of pyzmq's own backend extension: dlopen() of
 * its file with RTLD_NOLOAD hands back the module already in memory (nothing is loaded),
 * and dlsym() on that handle searches the module and the libraries it was linked against,
 * so the addresses are those pyzmq calls: never a second libzmq, whatever its file is
 * called. The library's version must equal the one pyzmq reports. */
#ifndef DESCARTES_FAST_ZMQ_DIRECT_H
#define DESCARTES_FAST_ZMQ_DIRECT_H

#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>

/* libzmq's zmq_msg_t: 64 opaque bytes, pointer-aligned */
typedef struct { union { unsigned char bytes[64]; void *align; } u; } df_zmq_msg;

static int (*df_msg_init)(df_zmq_msg *);
static int (*df_msg_recv)(df_zmq_msg *, void *, int);
static void *(*df_msg_data)(df_zmq_msg *);
static size_t (*df_msg_size)(const df_zmq_msg *);
static int (*df_msg_more)(const df_zmq_msg *);
static int (*df_msg_close)(df_zmq_msg *);
static int (*df_send)(void *, const void *, size_t, int);
static int (*df_errno)(void);
static const char *(*df_msg_gets)(const df_zmq_msg *, const char *);
static void (*df_version)(int *, int *, int *);

#define DF_RESOLVE(var, name) \
    do { *(void **)(&(var)) = dlsym(lib, (name)); \
         if ((var) == NULL) { snprintf(why, why_len, "%s not found through %s", (name), module_path); \
                              return -1; } } while (0)

/* Resolve every function from the loaded module at *module_path*, and check that the library
 * is libzmq major.minor.patch. 0 on success; otherwise -1 with the reason in *why*. */
static int df_zmq_resolve(const char *module_path, int major, int minor, int patch, char *why, size_t why_len) {
    int found_major = 0, found_minor = 0, found_patch = 0;
    void *lib = dlopen(module_path, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL) {
        const char *err = dlerror();
        snprintf(why, why_len, "pyzmq's backend %s is not loaded (%s)", module_path, err ? err : "no reason given");
        return -1;
    }
    DF_RESOLVE(df_version, "zmq_version");
    df_version(&found_major, &found_minor, &found_patch);
    if (found_major != major || found_minor != minor || found_patch != patch) {
        snprintf(why, why_len, "the libzmq behind pyzmq's backend is %d.%d.%d, but pyzmq reports %d.%d.%d",
                 found_major, found_minor, found_patch, major, minor, patch);
        return -1;
    }
    DF_RESOLVE(df_msg_init, "zmq_msg_init");
    DF_RESOLVE(df_msg_recv, "zmq_msg_recv");
    DF_RESOLVE(df_msg_data, "zmq_msg_data");
    DF_RESOLVE(df_msg_size, "zmq_msg_size");
    DF_RESOLVE(df_msg_more, "zmq_msg_more");
    DF_RESOLVE(df_msg_close, "zmq_msg_close");
    DF_RESOLVE(df_send, "zmq_send");
    DF_RESOLVE(df_errno, "zmq_errno");
    DF_RESOLVE(df_msg_gets, "zmq_msg_gets");
    return 0;
}

#undef DF_RESOLVE

#endif /* DESCARTES_FAST_ZMQ_DIRECT_H */
