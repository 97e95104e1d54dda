"""The twin table and the two build/run switches: the one place both ``setup.py`` and the
package read (this file imports nothing but ``os``, so the build can run it on its own).

Every compiled module has a pure-Python twin beside it, and its Cython source sits under the
same name in the top-level ``_speedups/`` folder: ``descartes_fast.wire._codec_c`` is built
from ``_speedups/wire/_codec_c.pyx`` and stands in for ``descartes_fast.wire._codec_py``.
"""

from __future__ import annotations

import os
from typing import Final

#: area -> (pure module, compiled module); both must expose the names in API[area]
TWINS: Final = {
    "codec": ("descartes_fast.wire._codec_py", "descartes_fast.wire._codec_c"),
    "frames": ("descartes_fast.wire._frames_py", "descartes_fast.wire._frames_c"),
    "dispatch": ("descartes_fast.wire._dispatch_py", "descartes_fast.wire._dispatch_c"),
    "lineindex": ("descartes_fast.agents._lineindex_py", "descartes_fast.agents._lineindex_c"),
    "sessionscan": ("descartes_fast.agents._sessionscan_py", "descartes_fast.agents._sessionscan_c"),
}
#: the names each twin of an area provides (a parity test checks both)
API: Final = {
    "codec": ("encode", "decode"),
    "frames": ("split_request", "build_reply", "pub_frame", "parse_pub_frame", "log_topic",
               "status_topic", "HEARTBEAT_TOPIC"),
    "dispatch": ("Dispatcher", "Requester", "LIBZMQ_DIRECT", "DIRECT_REASON"),
    "lineindex": ("scan", "line_ends", "split_lines", "find_record", "RECORD_FIELDS"),
    "sessionscan": ("scan",),
}

_ON: Final = frozenset({"1", "true", "yes", "on"})
_OFF: Final = frozenset({"", "0", "false", "no", "off"})


def env_flag(name: str) -> bool:
    """Parse a boolean environment variable strictly (a typo must not pick the wrong twins)."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in _ON:
        return True
    if raw in _OFF:
        return False
    raise ValueError(f"{name}={raw!r}: use 1/0, true/false, yes/no or on/off")


def source_of(module: str) -> str:
    """The Cython source of a compiled twin: ``descartes_fast.a._b_c`` -> ``_speedups/a/_b_c.pyx``."""
    package, _, rest = module.partition(".")
    if package != "descartes_fast" or not rest:
        raise ValueError(f"not a module of descartes_fast: {module!r}")
    return "_speedups/" + rest.replace(".", "/") + ".pyx"
