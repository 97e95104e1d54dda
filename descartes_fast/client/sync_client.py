"""The synchronous client, :class:`Client`: the :class:`~descartes_fast.client.AsyncClient` API for
scripts and non-async code, safe to share between threads. It runs an ``AsyncClient`` on an event
loop in a background thread; subscriptions become plain iterators.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import zmq

from descartes_fast.client.async_client import AsyncClient
from descartes_fast.client.config import ZmqRunnerConfig
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentInfo,
    AgentStatus,
    BatchControlResponse,
    ControlCommandType,
    HealthCheckResponse,
    LogStreamMessage,
    LogStreamType,
    OutputQueryResponse,
    OutputReadResponse,
    StatusUpdate,
    ZmqOutputStream,
)

__all__ = ["Client"]

_T = TypeVar("_T")


class Client:
    """The same API as :class:`AsyncClient`, synchronous. ``with Client(endpoint=...) as c:``."""

    def __init__(self, config: ZmqRunnerConfig | None = None, *, context: zmq.Context | None = None,
                 **overrides: Any) -> None:
        """As :class:`AsyncClient` takes them."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="descartes-fast-client", daemon=True)
        self._thread.start()
        self._async = AsyncClient(config, context=context, **overrides)
        self.config = self._async.config

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _iterate(self, items: AsyncIterator[_T]) -> Iterator[_T]:
        """An async iterator of the client's loop as a plain iterator (closed when left). Where the
        async iterator can hand out several items at once (``batch()``), one hop to the client's
        thread brings them all."""
        batch = getattr(items, "batch", None)

        async def step() -> list[_T]:
            try:
                return await batch() if batch is not None else [await items.__anext__()]
            except StopAsyncIteration:
                return []

        try:
            while True:
                got = self._run(step())
                if not got:
                    return
                yield from got
        finally:  # (when the iterator is dropped after close(), the loop is gone: nothing to close)
            close = getattr(items, "aclose", None)
            if close is not None and self._loop.is_running():
                self._run(close())

    # -- connection --

    def connect(self, endpoint: str | None = None, timeout: float | None = None) -> None:
        """Connect and check that the server answers within *timeout*."""
        self._run(self._async.connect(endpoint, timeout))

    def disconnect(self) -> None:
        """Close the sockets; pending requests fail with NotConnectedError; subscriptions end."""
        self._run(self._async.disconnect())

    def close(self) -> None:
        """Disconnect and stop the background thread."""
        self.disconnect()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def is_connected(self) -> bool:
        """True while the server answers (the last health check or request got a reply)."""
        return self._async.is_connected()

    @property
    def descartes_fast_server(self) -> bool:
        """Whether the server is a descartes_fast one (see :attr:`AsyncClient.descartes_fast_server`)."""
        return self._async.descartes_fast_server

    @property
    def server_metadata(self) -> dict[str, str] | None:
        """The server's metadata from the health check at connect (None before)."""
        return self._async.server_metadata

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the ZmqAgentRunner methods --

    def spawn_remote(self, config: AgentConfig, timeout_secs: float | None = None,
                     metadata: dict[str, str] | None = None) -> AgentInfo:
        """Start an agent (see :meth:`AsyncClient.spawn_remote`)."""
        return self._run(self._async.spawn_remote(config, timeout_secs, metadata))

    def say(self, agent_id: uuid.UUID, text: str | None, end: bool = False) -> str:
        """Send a session agent its next turn (see :meth:`AsyncClient.say`)."""
        return self._run(self._async.say(agent_id, text, end))

    def resize(self, agent_id: uuid.UUID, rows: int, cols: int) -> dict[str, int]:
        """Set the terminal size of a terminal agent (see :meth:`AsyncClient.resize`)."""
        return self._run(self._async.resize(agent_id, rows, cols))

    def list_remote_agents(self, filter_status: AgentStatus | None = None, limit: int | None = None) -> list[AgentInfo]:
        """The server's agents, optionally only those with *filter_status*, at most *limit*."""
        return self._run(self._async.list_remote_agents(filter_status, limit))

    def get_remote_agent(self, agent_id: uuid.UUID) -> AgentInfo | None:
        """The agent's info, or None if the server does not know it."""
        return self._run(self._async.get_remote_agent(agent_id))

    def get_agent_status(self, agent_id: uuid.UUID) -> AgentStatus:
        return self._run(self._async.get_agent_status(agent_id))

    def agent_state(self, agent_id: uuid.UUID, usage: bool = False) -> dict[str, Any]:
        """What ``get_status`` answers (see :meth:`AsyncClient.agent_state`)."""
        return self._run(self._async.agent_state(agent_id, usage))

    def pause_agent(self, agent_id: uuid.UUID, force: bool = False) -> str:
        """Pause; returns the mode the server used (``"cooperative"`` or ``"forced"``)."""
        return self._run(self._async.pause_agent(agent_id, force))

    def resume_agent(self, agent_id: uuid.UUID) -> None:
        self._run(self._async.resume_agent(agent_id))

    def stop_agent(self, agent_id: uuid.UUID) -> bool:
        """Stop the agent; False when it had ended already."""
        return self._run(self._async.stop_agent(agent_id))

    def kill_agent(self, agent_id: uuid.UUID) -> bool:
        """Kill the agent; False when its process had exited already."""
        return self._run(self._async.kill_agent(agent_id))

    def write_agent_stdin(self, agent_id: uuid.UUID, data: bytes | str, eof: bool = False) -> int:
        """Write to the agent's stdin; returns the bytes written."""
        return self._run(self._async.write_agent_stdin(agent_id, data, eof))

    def read_agent_stdout(self, agent_id: uuid.UUID) -> bytes | None:
        """The next unread line of stdout, or None."""
        return self._run(self._async.read_agent_stdout(agent_id))

    def read_agent_stderr(self, agent_id: uuid.UUID) -> bytes | None:
        """The next unread line of stderr, or None."""
        return self._run(self._async.read_agent_stderr(agent_id))

    def health_check(self) -> HealthCheckResponse:
        return self._run(self._async.health_check())

    def send_action_to_agent(self, agent_id: uuid.UUID, action: str, params: Any = None,
                             timeout_secs: float | None = None) -> Any:
        return self._run(self._async.send_action_to_agent(agent_id, action, params, timeout_secs))

    def query_agent_output(self, agent_id: uuid.UUID, stream: ZmqOutputStream = ZmqOutputStream.BOTH,
                           filter: str | None = None, limit: int | None = None,
                           offset: int | None = None) -> OutputQueryResponse:
        return self._run(self._async.query_agent_output(agent_id, stream, filter, limit, offset))

    def batch_control(self, agent_ids: list[uuid.UUID], command_type: ControlCommandType, payload: Any = None,
                      fail_fast: bool = False) -> BatchControlResponse:
        """One command on several agents (see :meth:`AsyncClient.batch_control`)."""
        return self._run(self._async.batch_control(agent_ids, command_type, payload, fail_fast))

    def read_output_lines(self, agent_id: uuid.UUID, stream: ZmqOutputStream = ZmqOutputStream.BOTH,
                          page: int = 1000) -> Iterator[str]:
        """Every line of the agent's retained output (see :meth:`AsyncClient.read_output_lines`)."""
        return self._iterate(self._async.read_output_lines(agent_id, stream, page))

    # -- subscriptions, as plain iterators --

    def subscribe_status_updates(self, agent_id: uuid.UUID | None = None) -> Iterator[StatusUpdate]:
        """Status updates of one agent (or of all, heartbeats included) as they are published."""
        return self._iterate(self._run(self._async.subscribe_status_updates(agent_id)))

    def stream_logs(self, agent_id: uuid.UUID) -> Iterator[LogStreamMessage]:
        """The agent's log chunks as they are published."""
        return self._iterate(self._run(self._async.stream_logs(agent_id)))

    def follow_logs(self, agent_id: uuid.UUID, *, from_line: int | None = None, from_sequence: int | None = None,
                    from_now: bool = False, streams: ZmqOutputStream = ZmqOutputStream.BOTH
                    ) -> Iterator[LogStreamMessage]:
        """The agent's output chunks, stored then live, until it has ended (see
        :meth:`AsyncClient.follow_logs`)."""
        return self._iterate(self._run(self._async.follow_logs(agent_id, from_line=from_line,
                                                               from_sequence=from_sequence, from_now=from_now,
                                                               streams=streams)))

    def stored_output(self, agent_id: uuid.UUID,
                      streams: ZmqOutputStream = ZmqOutputStream.BOTH) -> Iterator[LogStreamMessage]:
        """Every chunk the server stores for the agent now, in the order written."""
        return self._iterate(self._run(self._async.stored_output(agent_id, streams)))

    def read_output(self, agent_id: uuid.UUID, stream: LogStreamType, *, offset: int | None = None,
                    sequence: int | None = None, line: int | None = None,
                    max_bytes: int | None = None) -> OutputReadResponse:
        """One read of the agent's stored output (see :meth:`AsyncClient.read_output`)."""
        return self._run(self._async.read_output(agent_id, stream, offset=offset, sequence=sequence, line=line,
                                                 max_bytes=max_bytes))
