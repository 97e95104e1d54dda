"""Many servers driven as one, on ZeroMQ and CURVE alone: each server stays the only source of
truth for its agents, and the fleet is derived from them (no broker, no central database).

* :class:`Fleet` (:mod:`.fleet`, asyncio) and :class:`SyncFleet` (:mod:`.sync_fleet`);
* :mod:`.servers`: the fleet file, ``DESCARTES_FAST_SERVERS``, DNS names;
* :mod:`.placement`: which server a spawn goes to.
"""

from descartes_fast.fleet.fleet import (
    AgentNotFoundError,
    AmbiguousAgentError,
    Fleet,
    FleetAgent,
    FleetChunk,
    FleetError,
    FleetEvent,
    NoServerError,
    ServerState,
    ServerView,
)
from descartes_fast.fleet.servers import DnsSpec, FleetFileError, FleetSpec, ServerSpec
from descartes_fast.fleet.sync_fleet import SyncFleet

__all__ = ["Fleet", "SyncFleet", "FleetAgent", "FleetChunk", "FleetEvent", "FleetError", "NoServerError",
           "AgentNotFoundError", "AmbiguousAgentError", "ServerState", "ServerView", "ServerSpec", "DnsSpec",
           "FleetSpec", "FleetFileError"]
