"""What a coding agent's JSON lines say: its session, turns, tool calls, tokens and cost.

The ``claude``, ``codex`` and ``gemini`` CLIs write one JSON event per line on stdout
(docs/agent-sessions.md has their formats and where each fact was verified). A
:class:`Session` reads the chunks of whole lines the output store has just stored and turns
the events that matter into :class:`SessionEvent`\\ s (published as status updates) and
running totals (in ``get_status`` and the records). The output itself is never changed: this
only reads it. A line that is not JSON, or of a type the dialect does not know, is counted
(``unparsed_lines``) and otherwise ignored.

Cost: these CLIs write ``{"type":"<event>"`` first on every line, so one scan of a chunk
(:mod:`.sessionscan`, compiled) finds the few lines that matter (a session's start, a turn's
end, a tool call), and only those are decoded. A line written otherwise is decoded to be sure.

Token counts are normalised: ``input_tokens`` counts every input token of a turn, cached or
not, and ``cached_input_tokens`` the part of them read from the provider's cache (OpenAI's
meaning; claude reports the parts separately and they are added up).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import msgspec

from descartes_fast.agents.sessionscan import TYPE_FIRST, heads, scan

__all__ = ["DIALECTS", "Dialect", "Session", "SessionEvent"]

_TOOL_INPUT_MAX: Final = 1024  # a tool call's input is in its event's data if its compact JSON is at most this long


@dataclass(frozen=True)
class SessionEvent:
    """Something the agent said that a program may act on: ``session`` (its id is known),
    ``tool_call``, ``turn_completed``, ``turn_failed``, ``error``."""

    kind: str
    message: str
    data: dict[str, Any]


@dataclass
class Session:
    """One agent's session: what its output has said so far, across all its processes."""

    dialect: Dialect
    session_id: str | None = None
    turns: int = 0                 # turns completed
    failed_turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost_usd: float | None = None  # None: the CLI reports no cost
    tool_calls: int = 0
    unparsed_lines: int = 0
    cost_before: float = 0.0       # the cost of its earlier processes (claude's total is per process)
    run_cost: float = 0.0          # the latest running total of this process
    resumed: bool = False          # this process resumed the session (its first total may carry on)
    seen_usage: tuple[int, int, int] = (0, 0, 0)  # codex: the thread's running totals, last seen
    _cost_told: float = field(default=0.0, repr=False)  # cost_usd at the end of the last turn
    _open_tools: set[str] = field(default_factory=set, repr=False)  # tool ids of this turn (counted once)

    def feed(self, data: bytes) -> list[SessionEvent]:
        """The events in *data*, whole lines as stored (the last one may lack its newline)."""
        starts = scan(data, *self.dialect.scan_table)  # where the lines worth decoding start
        if starts is None:
            return self._lines(data)  # a line of another shape or type: look at each one
        events: list[SessionEvent] = []
        for start in starts:
            end = data.find(b"\n", start)
            events.extend(self._decode(data[start:end if end >= 0 else len(data)]))
        return events

    def _lines(self, data: bytes) -> list[SessionEvent]:
        dialect = self.dialect
        events: list[SessionEvent] = []
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            got = TYPE_FIRST.match(line)
            if got is not None and got.group(1) in dialect.known and got.group(1) not in dialect.wanted \
                    and not any(m in line for m in dialect.markers):
                continue
            events.extend(self._decode(line))
        return events

    def _decode(self, line: bytes) -> list[SessionEvent]:
        """The events of one line (none, and counted, if it is not one of the dialect's)."""
        try:
            event = _loads(line)
        except ValueError:  # (UnicodeDecodeError is one)
            self.unparsed_lines += 1
            return []
        kind = event.get("type") if isinstance(event, dict) else None
        if not isinstance(kind, str) or kind.encode() not in self.dialect.known:
            self.unparsed_lines += 1
            return []
        try:
            return self.dialect.handle(self, kind, event)
        except (AttributeError, TypeError, ValueError, KeyError):  # a known type, but not the shape it has
            self.unparsed_lines += 1
            return []

    def new_process(self) -> None:
        """Another process continues the session (a restart, or the next turn of a CLI that runs
        one process per turn): its running cost total starts at 0."""
        self.cost_before += self.run_cost
        self.run_cost = 0.0
        self.resumed = self.session_id is not None
        self._open_tools.clear()

    def totals(self) -> dict[str, Any]:
        """The per-agent totals as ``get_status`` and ``status --json`` name them."""
        return {"session_id": self.session_id, "turns": self.turns, "failed_turns": self.failed_turns,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cached_input_tokens": self.cached_input_tokens,
                "cost_usd": round(self.cost_usd, 6) if self.cost_usd is not None else None,
                "tool_calls": self.tool_calls, "unparsed_lines": self.unparsed_lines}

    def state(self) -> dict[str, Any]:
        """What the records keep, to rebuild it after a restart of the server (:meth:`restore`)."""
        return {**self.totals(), "cost_before": self.cost_before, "run_cost": self.run_cost,
                "resumed": self.resumed, "seen_usage": list(self.seen_usage)}

    @classmethod
    def restore(cls, dialect: Dialect, state: dict[str, Any]) -> Session:
        names = ("session_id", "turns", "failed_turns", "input_tokens", "output_tokens", "cached_input_tokens",
                 "cost_usd", "tool_calls", "unparsed_lines", "cost_before", "run_cost", "resumed")
        session = cls(dialect, **{n: state[n] for n in names if n in state})
        session._cost_told = session.cost_usd or 0.0
        seen = state.get("seen_usage")
        if isinstance(seen, list) and len(seen) == 3:
            session.seen_usage = (int(seen[0]), int(seen[1]), int(seen[2]))
        return session

    # -- what the dialects call --

    def _usage(self, input_tokens: Any, output_tokens: Any, cached: Any) -> dict[str, int]:
        turn = {"input_tokens": _count(input_tokens), "output_tokens": _count(output_tokens),
                "cached_input_tokens": _count(cached)}
        self.input_tokens += turn["input_tokens"]
        self.output_tokens += turn["output_tokens"]
        self.cached_input_tokens += turn["cached_input_tokens"]
        return turn

    def _started(self, session_id: Any, model: Any = None) -> list[SessionEvent]:
        if not isinstance(session_id, str) or not session_id or session_id == self.session_id:
            return []
        self.session_id = session_id
        data = {"event": "session", "session_id": session_id, "model": model if isinstance(model, str) else None}
        return [SessionEvent("session", f"session {session_id}", data)]

    def _tool(self, name: Any, tool_id: Any, tool_input: Any = None) -> list[SessionEvent]:
        if isinstance(tool_id, str) and tool_id:
            if tool_id in self._open_tools:
                return []
            self._open_tools.add(tool_id)
        self.tool_calls += 1
        name = name if isinstance(name, str) else "?"
        data: dict[str, Any] = {"event": "tool_call", "tool": name, "tool_id": tool_id, "tool_calls": self.tool_calls}
        if tool_input is not None and len(_dumps(tool_input)) <= _TOOL_INPUT_MAX:
            data["input"] = tool_input
        return [SessionEvent("tool_call", f"tool call: {name}", data)]

    def _turn_end(self, ok: bool, usage: dict[str, Any], why: str | None = None) -> list[SessionEvent]:
        if ok:
            self.turns += 1
        else:
            self.failed_turns += 1
        self._open_tools.clear()  # a later turn's tools have ids of their own: the set stays small
        n = self.turns + self.failed_turns
        cost = f", ${self.cost_usd:.4f} in all" if self.cost_usd is not None else ""
        text = (f"turn {n} completed" if ok else f"turn {n} failed: {why or 'error'}") + \
            f" ({usage['input_tokens']} input tokens, {usage['cached_input_tokens']} of them cached, " \
            f"{usage['output_tokens']} output{cost})"
        kind = "turn_completed" if ok else "turn_failed"
        if self.cost_usd is not None:  # what the turn cost (its usage's cost_usd: 0 or more)
            usage = {**usage, "cost_usd": round(max(0.0, self.cost_usd - self._cost_told), 6)}
            self._cost_told = self.cost_usd
        return [SessionEvent(kind, text, {"event": kind, "turn": n, "turn_usage": usage, **self.totals(),
                                          **({"error": why} if not ok else {})})]

    def _cost(self, running_total: Any) -> None:
        """claude's ``total_cost_usd``: the running total of its process. A process that resumed the
        session starts from 0 (Claude Code up to 2.1.276) or from the session's total so far (from
        2.1.277): a first total of at least what the session had cost is taken as carried over."""
        if isinstance(running_total, (int, float)) and not isinstance(running_total, bool):
            total = float(running_total)
            if self.resumed:
                self.resumed = False
                if total >= self.cost_before > 0:
                    self.cost_before = 0.0
            self.run_cost = total
            self.cost_usd = self.cost_before + self.run_cost

    def _running_usage(self, input_tokens: Any, output_tokens: Any, cached: Any) -> dict[str, int]:
        """A turn's usage from running totals of the thread (codex): what they grew by since the
        last; totals that went down are a new count (another thread)."""
        now = (_count(input_tokens), _count(output_tokens), _count(cached))
        before = self.seen_usage if all(n >= b for n, b in zip(now, self.seen_usage)) else (0, 0, 0)
        self.seen_usage = now
        return self._usage(*(n - b for n, b in zip(now, before)))


#: a line's JSON value (msgspec: 4x json.loads on these lines); a line that is not JSON in UTF-8
#: (or has more after its value) raises msgspec.DecodeError, a ValueError
_loads: Final = msgspec.json.Decoder().decode
#: compact JSON in UTF-8
_dumps: Final = msgspec.json.Encoder().encode


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class Dialect:
    """One CLI's event format: the event types it writes (*known*), those whose lines are decoded
    (*wanted*), and byte strings that make a line of another type worth decoding (*markers*)."""

    name: ClassVar[str]
    known: ClassVar[frozenset[bytes]]
    wanted: ClassVar[frozenset[bytes]]
    markers: ClassVar[tuple[bytes, ...]] = ()

    def handle(self, session: Session, kind: str, event: dict[str, Any]) -> list[SessionEvent]:
        raise NotImplementedError

    @functools.cached_property
    def scan_table(self) -> tuple[tuple[bytes, ...], tuple[bytes, ...], tuple[bytes, ...]]:
        """*known*, *wanted* and *markers* as :func:`.sessionscan.scan` takes them (built once)."""
        return heads(self.known), heads(self.wanted), tuple(self.markers)


class Claude(Dialect):
    """``claude -p --output-format stream-json --verbose``: ``system``/``init`` has the session
    id; ``assistant`` messages carry ``tool_use`` blocks; each ``result`` ends a turn, with that
    turn's ``usage`` and ``total_cost_usd``, the running total of the process (see _cost). A
    failure may say ``subtype: "success"`` with ``is_error: true``: ``is_error`` decides."""

    name = "claude"
    known = frozenset({b"system", b"assistant", b"user", b"result", b"stream_event", b"control_request",
                       b"control_response", b"control_cancel_request", b"keep_alive"})
    wanted = frozenset({b"system", b"result"})
    markers = (b'"tool_use"',)

    def handle(self, session: Session, kind: str, event: dict[str, Any]) -> list[SessionEvent]:
        if kind == "system":
            return session._started(event.get("session_id"), event.get("model")) if event.get("subtype") == "init" \
                else []
        if kind == "assistant":
            blocks = (event.get("message") or {}).get("content") or []
            return [e for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"
                    for e in session._tool(b.get("name"), b.get("id"), b.get("input"))]
        if kind == "result":
            usage = event.get("usage") or {}
            turn = session._usage(_count(usage.get("input_tokens")) + _count(usage.get("cache_creation_input_tokens"))
                                  + _count(usage.get("cache_read_input_tokens")),
                                  usage.get("output_tokens"), usage.get("cache_read_input_tokens"))
            session._cost(event.get("total_cost_usd"))
            events = session._started(event.get("session_id"))
            ok = not event.get("is_error") and event.get("subtype", "success") == "success"
            why = None if ok else str(event.get("subtype") or "error")
            if not ok and isinstance(event.get("result"), str):
                why = f"{why}: {event['result'][:200]}"
            return events + session._turn_end(ok, turn, why)
        return []


class Codex(Dialect):
    """``codex exec --json``: ``thread.started`` has the thread id (the session); items of the
    tool kinds are tool calls; ``turn.completed`` ends a turn with the thread's running token
    totals (``usage``), across resumed processes too; ``turn.failed``
    and ``error`` say what went wrong. Codex reports no cost."""

    name = "codex"
    known = frozenset({b"thread.started", b"turn.started", b"turn.completed", b"turn.failed", b"item.started",
                       b"item.updated", b"item.completed", b"error"})
    wanted = frozenset({b"thread.started", b"turn.completed", b"turn.failed", b"error", b"item.started"})
    markers = (b'"command_execution"', b'"mcp_tool_call"', b'"web_search"', b'"file_change"')
    _TOOLS: Final = ("command_execution", "mcp_tool_call", "web_search", "file_change")

    def handle(self, session: Session, kind: str, event: dict[str, Any]) -> list[SessionEvent]:
        if kind == "thread.started":
            return session._started(event.get("thread_id"))
        if kind in ("item.started", "item.completed"):
            item = event.get("item") or {}
            if item.get("type") not in self._TOOLS:
                return []
            name = item.get("command") or item.get("tool") or item.get("query") or item["type"]
            return session._tool(f"{item['type']}: {name}"[:200], item.get("id"))
        if kind == "turn.completed":
            usage = event.get("usage") or {}  # the thread's running totals (docs/agent-sessions.md)
            turn = session._running_usage(usage.get("input_tokens"), usage.get("output_tokens"),
                                          usage.get("cached_input_tokens"))
            return session._turn_end(True, turn)
        if kind in ("turn.failed", "error"):
            error = event.get("error")
            why = str((error or {}).get("message") if isinstance(error, dict) else event.get("message") or "error")
            if kind == "error":
                return [SessionEvent("error", f"error: {why[:200]}", {"event": "error", "error": why})]
            return session._turn_end(False, session._usage(0, 0, 0), why[:200])
        return []


class Gemini(Dialect):
    """``gemini --output-format stream-json``: ``init`` has the session id; ``tool_use`` is a tool
    call; ``result`` ends a turn with its ``stats``; ``error`` says what went wrong. Gemini
    reports no cost."""

    name = "gemini"
    known = frozenset({b"init", b"message", b"tool_use", b"tool_result", b"error", b"result"})
    wanted = frozenset({b"init", b"tool_use", b"error", b"result"})

    def handle(self, session: Session, kind: str, event: dict[str, Any]) -> list[SessionEvent]:
        if kind == "init":
            return session._started(event.get("session_id"), event.get("model"))
        if kind == "tool_use":
            return session._tool(event.get("tool_name"), event.get("tool_id"), event.get("parameters"))
        if kind == "result":
            stats = event.get("stats") or {}
            turn = session._usage(stats.get("input_tokens"), stats.get("output_tokens"), stats.get("cached"))
            ok = event.get("status", "success") == "success"
            error = event.get("error")
            why = None if ok else str((error or {}).get("message") if isinstance(error, dict) else "error")
            return session._turn_end(ok, turn, why)
        if kind == "error":
            why = str(event.get("message") or "error")
            return [SessionEvent("error", f"error: {why[:200]}", {"event": "error", "error": why,
                                                                  "severity": event.get("severity")})]
        return []


#: dialect name (a backend's ``events``) -> its parser
DIALECTS: Final[dict[str, Dialect]] = {d.name: d for d in (Claude(), Codex(), Gemini())}
