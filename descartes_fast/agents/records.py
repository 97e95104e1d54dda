"""What the state directory remembers of every agent, in SQLite: enough to answer for an agent
whose process, whose place in the server's memory and whose server are gone.

One row per agent (its config, owner, pid, status, pause, exit code, reason, start and end),
put when it is spawned and at every change of its state. On the event loop, every row put in
one turn of the loop is written at its end in one transaction (a transaction costs several
rows' worth; a row put twice meanwhile is written once): a crash of the server loses only that
turn's rows. Reads see every row put. SQLite in WAL mode keeps the file readable whatever
moment the server dies at.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from descartes_fast.wire.schema import AgentConfig, AgentStatus, PauseMode

__all__ = ["AgentRecord", "AgentRecords", "config_json"]

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
    ended_at integer,
    cpu_secs real,
    max_rss_kib integer,
    session text
)"""
#: columns added since the first agents.db: (name, type), added to an older file when it is opened
_ADDED = (("cpu_secs", "real"), ("max_rss_kib", "integer"), ("session", "text"))
_COLUMNS = ("id", "config", "owner", "started_at", "status", "pause_mode", "paused_at", "pid", "exit_code",
            "reason", "ended_at", "cpu_secs", "max_rss_kib", "session")
_PUT = f"insert or replace into agents ({', '.join(_COLUMNS)}) values ({', '.join('?' * len(_COLUMNS))})"
_SELECT = f"select {', '.join(_COLUMNS)} from agents"
#: AgentConfig's fields: its values are JSON already (str, dict, None), no deep copy needed
_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(AgentConfig))


def config_json(config: AgentConfig) -> str:
    """*config* as stored (an agent's never changes: callers may keep it)."""
    return json.dumps({name: getattr(config, name) for name in _CONFIG_FIELDS})


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
    cpu_secs: float | None = None  # CPU time of all its processes, once it has ended
    max_rss_kib: int | None = None  # peak resident memory, once it has ended
    session: dict[str, Any] | None = None  # restarts, and what its session said (agents/sessions.py)
    config_json: str = dataclasses.field(default="", compare=False, repr=False)  # config_json(config), if known

    def _row(self) -> tuple[Any, ...]:
        return (str(self.id), self.config_json or config_json(self.config), self.owner, self.started_at,
                self.status.value, self.pause_mode.value if self.pause_mode else None, self.paused_at, self.pid,
                self.exit_code, self.reason, self.ended_at, self.cpu_secs, self.max_rss_kib,
                json.dumps(self.session) if self.session else None)

    @classmethod
    def _from_row(cls, row: tuple[Any, ...]) -> AgentRecord:
        (agent_id, config, owner, started_at, status, pause_mode, paused_at, pid, exit_code, reason,
         ended_at, cpu_secs, max_rss_kib, session) = row
        return cls(uuid.UUID(agent_id), AgentConfig(**json.loads(config)), owner, started_at, AgentStatus(status),
                   PauseMode(pause_mode) if pause_mode else None, paused_at, pid, exit_code, reason, ended_at,
                   cpu_secs, max_rss_kib, json.loads(session) if session else None)


class AgentRecords:
    """The ``agents.db`` of a state directory (any thread; rows are put on the event loop's)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # readable by its owner only, whatever the umask (configs hold environments); SQLite gives
        # the -wal and -shm files the database's mode
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("pragma journal_mode = wal")
        self._db.execute("pragma synchronous = normal")  # a crash of the server loses nothing; of the machine, little
        self._db.execute(_SCHEMA)
        have = {row[1] for row in self._db.execute("pragma table_info(agents)")}
        for name, kind in _ADDED:  # a state directory of an earlier version
            if name not in have:
                self._db.execute(f"alter table agents add column {name} {kind}")
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[Any, ...]] = {}  # id -> the latest row put, not yet written

    def close(self) -> None:
        self.flush()
        self._db.close()

    def put(self, record: AgentRecord) -> None:
        """Insert or replace *record*: at the end of this turn of the running event loop, with the
        other rows put in it (at once where no loop runs)."""
        row = record._row()
        with self._lock:
            first = not self._pending
            self._pending[row[0]] = row
        if first:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        """Write every row put so far."""
        with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:
        """(Holding _lock.)"""
        if self._pending:
            rows, self._pending = list(self._pending.values()), {}
            self._db.execute("begin")
            self._db.executemany(_PUT, rows)
            self._db.execute("commit")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            self._write_pending()
            return self._db.execute(sql, args).fetchall()

    def get(self, agent_id: uuid.UUID) -> AgentRecord | None:
        rows = self._query(f"{_SELECT} where id = ?", (str(agent_id),))
        return AgentRecord._from_row(rows[0]) if rows else None

    def delete(self, agent_id: uuid.UUID) -> None:
        self._query("delete from agents where id = ?", (str(agent_id),))

    def ended(self) -> list[AgentRecord]:
        """The agents that have ended, the one that ended first first."""
        rows = self._query(f"{_SELECT} where ended_at is not null order by ended_at")
        return [AgentRecord._from_row(r) for r in rows]

    def unended(self) -> list[AgentRecord]:
        """The agents that had not ended when the last server stopped, in spawn order."""
        rows = self._query(f"{_SELECT} where ended_at is null order by started_at")
        return [AgentRecord._from_row(r) for r in rows]

    def ended_ids(self) -> list[uuid.UUID]:
        """The ids of the agents that have ended, the one that ended first first."""
        rows = self._query("select id from agents where ended_at is not null order by ended_at")
        return [uuid.UUID(r[0]) for r in rows]
