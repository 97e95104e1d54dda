""":class:`SyncFleet`: the :class:`~descartes_fast.fleet.Fleet` for synchronous code (its own
event loop in a thread, as :class:`~descartes_fast.client.Client` does for one server)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from descartes_fast.client.config import ZmqRunnerConfig
from descartes_fast.fleet.fleet import Fleet, FleetAgent, FleetChunk, FleetEvent, ServerView
from descartes_fast.fleet.servers import FleetSpec, ServerSpec
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentStatus,
    BatchAgentResult,
    ControlCommandType,
    HealthCheckResponse,
)

__all__ = ["SyncFleet"]

_T = TypeVar("_T")


class SyncFleet:
    """The fleet's calls, blocking. ``with SyncFleet.from_file(path) as fleet: fleet.agents()``;
    :attr:`fleet` is the :class:`Fleet` on the loop thread (:meth:`run` runs any of its coroutines)."""

    def __init__(self, spec: FleetSpec | Iterable[ServerSpec], config: ZmqRunnerConfig | None = None,
                 **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="descartes-fast-fleet", daemon=True)
        self._thread.start()
        self.fleet = Fleet(spec, config, **kw)

    @classmethod
    def from_file(cls, path: str | Path, config: ZmqRunnerConfig | None = None, **kw: Any) -> SyncFleet:
        from descartes_fast.fleet.servers import load
        return cls(load(path), config, **kw)

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run a coroutine of :attr:`fleet` on its loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self, timeout: float | None = None) -> None:
        self.run(self.fleet.start(timeout))

    def close(self) -> None:
        if self._loop.is_running():
            self.run(self.fleet.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncFleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def servers(self) -> list[ServerView]:
        return self.run(_now(self.fleet.servers))

    def agents(self, status: AgentStatus | None = None) -> list[FleetAgent]:
        return self.run(self.fleet.agents(status))

    def spawn(self, config: AgentConfig, *, server: str | None = None, labels: Mapping[str, str] | None = None,
              timeout_secs: float | None = None, metadata: dict[str, str] | None = None) -> FleetAgent:
        return self.run(self.fleet.spawn(config, server=server, labels=labels, timeout_secs=timeout_secs,
                                         metadata=metadata))

    def status(self, ref: str | uuid.UUID) -> dict[str, Any]:
        return self.run(self.fleet.status(ref))

    def health(self) -> dict[str, HealthCheckResponse | Exception]:
        return self.run(self.fleet.health())

    def batch(self, refs: Iterable[str | uuid.UUID], command: ControlCommandType, payload: Any = None,
              fail_fast: bool = False) -> list[tuple[str, BatchAgentResult]]:
        return self.run(self.fleet.batch(list(refs), command, payload, fail_fast))

    def locate(self, ref: str | uuid.UUID) -> tuple[uuid.UUID, str]:
        """(agent id, server name) of the agent *ref* names (id, unique prefix or unique name)."""
        _client, agent_id, server = self.run(self.fleet.locate(ref))
        return agent_id, server

    def events(self) -> Iterator[FleetEvent]:
        return self._iterate(self.fleet.events())

    def follow(self, refs: Iterable[str | uuid.UUID] | None = None, *, from_now: bool = False) -> Iterator[FleetChunk]:
        return self._iterate(self.fleet.follow(None if refs is None else list(refs), from_now=from_now))

    def _iterate(self, items: AsyncIterator[_T]) -> Iterator[_T]:
        """An async iterator of the fleet's loop as a plain one (closed when left)."""
        async def step() -> tuple[bool, _T | None]:
            try:
                return True, await items.__anext__()
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self.run(step())
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            close = getattr(items, "aclose", None)
            if close is not None and self._loop.is_running():
                self.run(close())

    def wait(self, refs: Iterable[str | uuid.UUID], timeout: float | None = None) -> dict[str, dict[str, Any]]:
        return self.run(self.fleet.wait(list(refs), timeout))


async def _now(call: Any) -> Any:
    return call()
