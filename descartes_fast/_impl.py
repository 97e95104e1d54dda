"""Choose the compiled or the pure-Python twins, once, for the whole package.

``DESCARTES_FAST_NO_EXTENSIONS=1`` forces the pure twins; ``DESCARTES_FAST_REQUIRE_EXTENSIONS=1``
makes a missing compiled twin an import error instead of a warning. Both accept only
1/0, true/false, yes/no, on/off (or empty); anything else is an error, so a typo
cannot silently pick the wrong twin. ``setup.py`` reads the same variables.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from types import ModuleType
from typing import Final

_ON: Final = frozenset({"1", "true", "yes", "on"})
_OFF: Final = frozenset({"", "0", "false", "no", "off"})

#: area -> (pure module, compiled module); every pair must expose the same API names
TWINS: Final = {
    "codec": ("descartes_fast._codec_py", "descartes_fast._speedups._codec_c"),
    "frames": ("descartes_fast._frames_py", "descartes_fast._speedups._frames_c"),
    "dispatch": ("descartes_fast._dispatch_py", "descartes_fast._speedups._dispatch_c"),
}
#: the names each twin of an area provides (a parity test checks both)
API: Final = {
    "codec": ("encode", "decode"),
    "frames": ("split_request", "build_reply", "pub_frame", "parse_pub_frame", "log_topic",
               "status_topic", "HEARTBEAT_TOPIC"),
    "dispatch": ("Dispatcher", "Requester", "MAX_FRAMES"),
}


def env_flag(name: str) -> bool:
    """Parse a boolean environment variable strictly."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in _ON:
        return True
    if raw in _OFF:
        return False
    raise ValueError(f"{name}={raw!r}: use 1/0, true/false, yes/no or on/off")


NO_EXTENSIONS: Final = (env_flag("DESCARTES_FAST_NO_EXTENSIONS")
                        or sys.implementation.name != "cpython")
REQUIRE_EXTENSIONS: Final = env_flag("DESCARTES_FAST_REQUIRE_EXTENSIONS")
if NO_EXTENSIONS and REQUIRE_EXTENSIONS:
    raise RuntimeError("DESCARTES_FAST_NO_EXTENSIONS and DESCARTES_FAST_REQUIRE_EXTENSIONS are both set")


def load(area: str, implementation: str) -> ModuleType:
    """The module of one twin: *implementation* is ``"cython"`` or ``"python"``."""
    if implementation not in ("cython", "python"):
        raise ValueError(f"implementation must be 'cython' or 'python', not {implementation!r}")
    pure, compiled = TWINS[area]
    return importlib.import_module(compiled if implementation == "cython" else pure)


def _select() -> str:
    if NO_EXTENSIONS:
        return "python"
    try:
        for area in TWINS:
            load(area, "cython")
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            raise ImportError(f"descartes_fast: compiled extensions required but not loadable: {exc}") from exc
        warnings.warn(f"descartes_fast: compiled extensions not available ({exc}); using the "
                      "pure-Python twins, which are much slower. Reinstall with a C compiler, "
                      "or set DESCARTES_FAST_NO_EXTENSIONS=1 to choose them on purpose.",
                      RuntimeWarning, stacklevel=2)
        return "python"
    return "cython"


#: "cython" or "python": which twins the package uses
IMPLEMENTATION: Final = _select()
HAS_EXTENSIONS: Final = IMPLEMENTATION == "cython"
