"""Clients of a descartes_fast or Rust Descartes server.

* :class:`AsyncClient` (:mod:`.async_client`): asyncio, many requests in flight;
  :class:`Client` (:mod:`.sync_client`): the same methods, synchronous.
* :class:`ZmqRunnerConfig` (:mod:`.config`): where the server is and how to reach it;
  :mod:`.subscriptions`: status updates and log chunks as iterators; :mod:`.errors`: what they raise.
"""

from descartes_fast.client.async_client import AsyncClient
from descartes_fast.client.config import ZmqRunnerConfig
from descartes_fast.client.errors import (
    ClientError,
    NotConnectedError,
    RequestTimeoutError,
    ServerError,
    UnexpectedReplyError,
)
from descartes_fast.client.subscriptions import Follow, Subscription
from descartes_fast.client.sync_client import Client

__all__ = ["AsyncClient", "Client", "ZmqRunnerConfig", "ClientError", "NotConnectedError", "RequestTimeoutError",
           "ServerError", "UnexpectedReplyError", "Subscription", "Follow"]
