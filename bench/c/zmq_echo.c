/* The physical limit for the server benchmarks: a ROUTER that sends every message it receives
 * straight back, frame for frame (routing id included), with nothing else in the way.
 *
 *   cc -O2 -o zmq_echo bench/c/zmq_echo.c -lzmq     (Debian: apt-get install libzmq3-dev)
 *   ./zmq_echo tcp://127.0.0.1:5599
 *
 * bench/server_bench.py builds and runs it where it can. It runs until killed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <zmq.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s ENDPOINT\n", argv[0]);
        return 2;
    }
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    int hwm = 100000;
    zmq_setsockopt(router, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    if (zmq_bind(router, argv[1]) != 0) {
        fprintf(stderr, "zmq_echo: cannot bind %s: %s\n", argv[1], zmq_strerror(zmq_errno()));
        return 1;
    }
    zmq_msg_t part;
    for (;;) {
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, router, 0) < 0) {
            zmq_msg_close(&part);
            if (zmq_errno() == EINTR) continue;
            fprintf(stderr, "zmq_echo: receive failed: %s\n", zmq_strerror(zmq_errno()));
            return 1;
        }
        int more = zmq_msg_more(&part);
        /* zmq_msg_send takes the message over: no copy of the payload */
        if (zmq_msg_send(&part, router, more ? ZMQ_SNDMORE : 0) < 0) zmq_msg_close(&part);
    }
}
