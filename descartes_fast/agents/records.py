"""What the state directory remembers of every agent, in SQLite: enough to answer for an agent
whose process, whose place in the server's memory and whose server are gone.

One row per agent (its config, owner, pid, status, pause, exit code, reason, start and end),
written when it is spawned and at every change of its state. SQLite in WAL mode keeps the file
readable whatever moment the server dies at.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from descartes_fast.wire.schema import AgentConfig, AgentStatus, PauseMode

__all__ = ["AgentRecord", "AgentRecords"]

_SCHEMA = """
create table if not exists agents (
    id text primary key,
    config text not null,
    owner text,
    started_at integer not null,
    status text not null,
    pause_mode text,
    paused_at integer,
    pid integer,
    exit_code integer,
    reason text,
    ended_at integer
)"""
_COLUMNS = ("id", "config", "owner", "started_at", "status", "pause_mode", "paused_at", "pid", "exit_code",
            "reason", "ended_at")


@dataclass
class AgentRecord:
    """One agent as the state directory knows it."""

    id: uuid.UUID
    config: AgentConfig
    owner: str | None
    started_at: int
    status: AgentStatus
    pause_mode: PauseMode | None = None
    paused_at: int | None = None
    pid: int = 0
    exit_code: int | None = None
    reason: str | None = None
    ended_at: int | None = None  # ns since the epoch

    def _row(self) -> tuple[Any, ...]:
        return (str(self.id), json.dumps(dataclasses.asdict(self.config)), self.owner, self.started_at,
                self.status.value, self.pause_mode.value if self.pause_mode else None, self.paused_at, self.pid,
                self.exit_code, self.reason, self.ended_at)

    @classmethod
    def _from_row(cls, row: tuple[Any, ...]) -> AgentRecord:
        (agent_id, config, owner, started_at, status, pause_mode, paused_at, pid, exit_code, reason,
         ended_at) = row
        return cls(uuid.UUID(agent_id), AgentConfig(**json.loads(config)), owner, started_at, AgentStatus(status),
                   PauseMode(pause_mode) if pause_mode else None, paused_at, pid, exit_code, reason, ended_at)


class AgentRecords:
    """The ``agents.db`` of a state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("pragma journal_mode = wal")
        self._db.execute("pragma synchronous = normal")  # a crash of the server loses nothing; of the machine, little
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def put(self, record: AgentRecord) -> None:
        """Insert or replace *record*."""
        self._db.execute(f"insert or replace into agents ({', '.join(_COLUMNS)}) values "
                         f"({', '.join('?' * len(_COLUMNS))})", record._row())

    def get(self, agent_id: uuid.UUID) -> AgentRecord | None:
        row = self._db.execute(f"select {', '.join(_COLUMNS)} from agents where id = ?", (str(agent_id),)).fetchone()
        return AgentRecord._from_row(row) if row else None

    def delete(self, agent_id: uuid.UUID) -> None:
        self._db.execute("delete from agents where id = ?", (str(agent_id),))

    def ended(self) -> list[AgentRecord]:
        """The agents that have ended, the one that ended first first."""
        rows = self._db.execute(f"select {', '.join(_COLUMNS)} from agents where ended_at is not null "
                                "order by ended_at").fetchall()
        return [AgentRecord._from_row(r) for r in rows]

    def unended(self) -> list[AgentRecord]:
        """The agents that had not ended when the last server stopped, in spawn order."""
        rows = self._db.execute(f"select {', '.join(_COLUMNS)} from agents where ended_at is null "
                                "order by started_at").fetchall()
        return [AgentRecord._from_row(r) for r in rows]

    def ended_ids(self) -> list[uuid.UUID]:
        """The ids of the agents that have ended, the one that ended first first."""
        return [uuid.UUID(r[0]) for r in self._db.execute(
            "select id from agents where ended_at is not null order by ended_at").fetchall()]
