"""descartes_fast: run and control fleets of agent processes over ZeroMQ.

Wire-compatible with the Rust Descartes ZMQ subsystem. The codec lives in
:mod:`descartes_fast.codec`, the message classes in :mod:`descartes_fast.schema`,
the errors in :mod:`descartes_fast.errors`.
"""

from descartes_fast._impl import HAS_EXTENSIONS, IMPLEMENTATION
from descartes_fast.schema import MAX_MESSAGE_SIZE, PROTOCOL_VERSION

__version__ = "0.1.0"
__all__ = ["IMPLEMENTATION", "HAS_EXTENSIONS", "MAX_MESSAGE_SIZE", "PROTOCOL_VERSION", "__version__"]
