"""The agent server (``descartes-fast-server``): sockets, requests, events, lifecycle.

* :mod:`~descartes_fast.server.config` and :mod:`~descartes_fast.server.settings`: its settings, and where
  they come from (flags, environment, config file);
* :mod:`~descartes_fast.server.security` and :mod:`~descartes_fast.server.admission`: who may connect
  (CURVE allowlist, the loopback rule) and who may send a request now (allowlist again, rate limits);
* :mod:`~descartes_fast.server.control`: what each request does to the supervisor, and its reply;
* :mod:`~descartes_fast.server.events`: the PUB socket; :mod:`~descartes_fast.server.agent_server`: the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from descartes_fast.server.agent_server import AgentServer
    from descartes_fast.server.config import ServerConfig

__all__ = ["AgentServer", "ServerConfig"]


def __getattr__(name: str) -> Any:
    # importing a submodule (settings, for the CLI's flags) should not start pyzmq and the supervisor
    if name == "AgentServer":
        from descartes_fast.server.agent_server import AgentServer
        return AgentServer
    if name == "ServerConfig":
        from descartes_fast.server.config import ServerConfig
        return ServerConfig
    raise AttributeError(f"module 'descartes_fast.server' has no attribute {name!r}")
