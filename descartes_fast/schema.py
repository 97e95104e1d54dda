"""The documented import path of :mod:`descartes_fast.wire.schema` (the same module's names)."""

from descartes_fast.wire.schema import *  # noqa: F403
from descartes_fast.wire.schema import __all__  # noqa: F401
