"""descartes_fast: run and control fleets of agent processes over ZeroMQ.

Wire-compatible with the Rust Descartes ZMQ subsystem. The data flows through the folders in
this order: :mod:`~descartes_fast.wire` (messages, codec, frames) → :mod:`~descartes_fast.agents`
(processes and their output) → :mod:`~descartes_fast.server` / :mod:`~descartes_fast.client` →
:mod:`~descartes_fast.fleet` → :mod:`~descartes_fast.cli`.

``AsyncClient`` and ``Client`` talk to a server, ``Fleet`` and ``SyncFleet`` to many;
:mod:`descartes_fast.codec`, :mod:`descartes_fast.schema` and :mod:`descartes_fast.errors` are
the codec, the message classes and the errors (the same modules as under ``descartes_fast.wire``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from descartes_fast._impl import HAS_EXTENSIONS, IMPLEMENTATION
from descartes_fast.wire.constants import MAX_MESSAGE_SIZE, PROTOCOL_VERSION
from descartes_fast.wire.errors import DecodeError, EncodeError, FrameError, MessageTooLargeError, ProtocolError
from descartes_fast.wire.schema import AgentConfig, AgentInfo, AgentStatus

if TYPE_CHECKING:
    from descartes_fast.client import (
        AsyncClient,
        Client,
        ClientError,
        NotConnectedError,
        RequestTimeoutError,
        ServerError,
        UnexpectedReplyError,
        ZmqRunnerConfig,
    )
    from descartes_fast.fleet import Fleet, SyncFleet

__version__ = "0.1.0"
__all__ = ["IMPLEMENTATION", "HAS_EXTENSIONS", "MAX_MESSAGE_SIZE", "PROTOCOL_VERSION", "__version__",
           "AgentConfig", "AgentInfo", "AgentStatus", "ProtocolError", "DecodeError", "EncodeError", "FrameError",
           "MessageTooLargeError", "AsyncClient", "Client", "ZmqRunnerConfig", "ClientError", "NotConnectedError",
           "RequestTimeoutError", "ServerError", "UnexpectedReplyError", "Fleet", "SyncFleet"]

_FROM_CLIENT = {"AsyncClient", "Client", "ZmqRunnerConfig", "ClientError", "NotConnectedError",
                "RequestTimeoutError", "ServerError", "UnexpectedReplyError"}
_FROM_FLEET = {"Fleet", "SyncFleet"}


def __getattr__(name: str) -> Any:
    # The client pulls in pyzmq; importing the package alone should not.
    if name in _FROM_CLIENT:
        from descartes_fast import client
        return getattr(client, name)
    if name in _FROM_FLEET:
        from descartes_fast import fleet
        return getattr(fleet, name)
    raise AttributeError(f"module 'descartes_fast' has no attribute {name!r}")
