"""Choose the compiled or the pure-Python twins, once, for the whole package.

``DESCARTES_FAST_NO_EXTENSIONS=1`` forces the pure twins; ``DESCARTES_FAST_REQUIRE_EXTENSIONS=1``
makes a missing compiled twin an import error instead of a warning. Both accept only
1/0, true/false, yes/no, on/off (or empty); anything else is an error, so a typo
cannot silently pick the wrong twin. ``setup.py`` reads the same variables and the same
twin table (:mod:`descartes_fast._twins`).
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType
from typing import Final

from descartes_fast._twins import API, TWINS, env_flag

__all__ = ["API", "TWINS", "env_flag", "load", "IMPLEMENTATION", "HAS_EXTENSIONS", "NO_EXTENSIONS",
           "REQUIRE_EXTENSIONS"]

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
