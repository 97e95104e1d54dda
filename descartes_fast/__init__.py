"""descartes_fast: run and control fleets of agent processes over ZeroMQ.

Wire-compatible with the Rust Descartes ZMQ subsystem. ``AsyncClient`` and ``Client`` talk
to a server (:mod:`descartes_fast.client`); the codec lives in :mod:`descartes_fast.codec`,
the message classes in :mod:`descartes_fast.schema`, the errors in :mod:`descartes_fast.errors`.
"""

from typing import Any

from descartes_fast._impl import HAS_EXTENSIONS, IMPLEMENTATION
from descartes_fast.schema import MAX_MESSAGE_SIZE, PROTOCOL_VERSION

__version__ = "0.1.0"
__all__ = ["IMPLEMENTATION", "HAS_EXTENSIONS", "MAX_MESSAGE_SIZE", "PROTOCOL_VERSION", "__version__",
           "AsyncClient", "Client", "ZmqRunnerConfig"]

_LAZY = {"AsyncClient", "Client", "ZmqRunnerConfig"}


def __getattr__(name: str) -> Any:
    # The client pulls in pyzmq; importing the package alone should not.
    if name in _LAZY:
        from descartes_fast import client
        return getattr(client, name)
    raise AttributeError(f"module 'descartes_fast' has no attribute {name!r}")
