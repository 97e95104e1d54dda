"""The documented import path of :mod:`descartes_fast.wire.codec` (the same module's names)."""

from descartes_fast.wire.codec import *  # noqa: F403
from descartes_fast.wire.codec import __all__  # noqa: F401
