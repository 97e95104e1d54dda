"""Numbers of the wire format that both twins use: the one place they are written down.

The compiled twins read these at import (``_speedups/wire/*.pyx``); nothing there restates
a value, so a change here reaches both twins (see docs/protocol.md §1 and §2).
"""

from __future__ import annotations

from typing import Final

#: Echoed in ``HealthCheckResponse.protocol_version``.
PROTOCOL_VERSION: Final = "1.0.0"
#: Largest message accepted or produced, in bytes (10 MiB); sockets set ZMQ_MAXMSGSIZE to it.
MAX_MESSAGE_SIZE: Final = 10 * 1024 * 1024
#: Containers nested deeper than this (the message itself is level 1) are refused.
#: rmp-serde allows 1024; serde_json's own parser stops at 128; 256 keeps both twins
#: (the pure one recurses in Python) well inside the interpreter's recursion limit.
MAX_DEPTH: Final = 256
#: A request with more frames than this is dropped (counted in ``bad_frames``); a Rust
#: REQ request has 2 with the routing id, a REQ_CORRELATE one 4.
MAX_FRAMES: Final = 16
#: A dispatcher's drain stops after requests of this many bytes in all (and goes on at the next
#: turn of the event loop), so that a run of large requests does not hold the loop.
DRAIN_BYTES: Final = 1 << 20

# Wire kinds of schema fields: small ints so the compiled twin can switch on them.
K_STR: Final = 1
K_BOOL: Final = 2
K_U64: Final = 3
K_I64: Final = 4
K_UUID: Final = 5
K_TIME: Final = 6
K_ENUM: Final = 7
K_STRUCT: Final = 8
K_BYTES: Final = 9
K_JSON: Final = 10
K_LIST: Final = 11
K_MAP: Final = 12
K_BIN: Final = 13      # bytes written as MessagePack bin (our extension messages; read like K_BYTES)

# MessagePack value types, as the decoders see them (T_BAD: the reserved byte 0xc1).
T_NIL: Final = 0
T_BOOL: Final = 1
T_INT: Final = 2
T_FLOAT: Final = 3
T_STR: Final = 4
T_BIN: Final = 5
T_ARRAY: Final = 6
T_MAP: Final = 7
T_EXT: Final = 8
T_BAD: Final = 9
#: what an error text calls each type (index = T_*)
TYPE_NAMES: Final = ("nil", "bool", "int", "float", "str", "bin", "array", "map", "ext")
