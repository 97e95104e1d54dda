"""The documented import path of :mod:`descartes_fast.wire.errors` (the same module's names)."""

from descartes_fast.wire.errors import *  # noqa: F403
from descartes_fast.wire.errors import __all__  # noqa: F401
