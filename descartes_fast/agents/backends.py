"""Backends: how an ``AgentConfig`` becomes a command line (docs/protocol.md §7.6).

Built in:

* ``claude`` / ``claude-code-cli``: the reference's argument order, plus ``--verbose`` right
  after ``--output-format stream-json`` (today's CLI refuses stream-json without it);
* ``opencode``, ``codex``, ``gemini``: today's headless modes;
* ``<program>-cli`` (any other name containing ``cli``): ``<program> <task>``, only where the
  spawn policy allows it (``allow_program_cli``; off by default: it runs any program on PATH);
* ``claude-session``, ``codex-session``, ``gemini-session``: sessions that live across turns
  (docs/agent-sessions.md): claude's turns go to its stdin as stream-json lines; codex and
  gemini run one process per turn, each resuming the session of the one before;
* ``demo``: the demo agent shipped in this package (no LLM CLI needed).

The LLM CLIs get ``stdin = "close"`` (they wait for EOF on a piped stdin) and no cooperative
pause (they do not read the pause line; a pause is carried out as SIGSTOP). A config file can
define more backends, or override a built-in one, as TOML::

    [backends.mytool]
    command = ["mytool", "--task", "{task}", ["--model", "{model}"]]  # a nested list is kept
                                                                     # only if all its placeholders are set
    env = { MYTOOL_LOG = "info" }
    cwd = "/srv/work"
    stdin = "pipe"               # pipe (default) | close | null | pty (a terminal: see below)
    cooperative_pause = false    # true if the program honours the JSON pause/resume lines
    extra_args = true            # honour AGENT_EXTRA_ARGS from the request's environment
                                 # (if the [policy] table's allow_extra_args is true too)
    events = "claude"            # parse its stdout as claude | codex | gemini JSON events
    restart = "on-failure"       # never (default) | on-failure | always (agents/restarts.py)
    max_restarts = 3
    restart_backoff = 1.0        # seconds before the first restart, doubled for each next one

``stdin = "pty"`` runs the program under a pseudo-terminal of its own (for interactive CLIs
that want one): its stdin, stdout and stderr are the terminal (``isatty`` is true), its output
is stored as the terminal gives it (one stream, stdout, with the terminal's ``\r\n`` and escape
sequences), what is written to its stdin arrives as if typed (the terminal echoes it unless
the program turns echo off; ending stdin types the end-of-file character, Ctrl-D), and the
``resize`` action changes its size (``rows``/``cols`` here set the first one: 24 x 80 unless
set; a spawn's metadata ``rows``/``cols`` override them).

A built-in session backend takes ``program`` (the CLI's command, e.g. ``["/opt/bin/claude"]``),
``env``, ``cwd``, ``events``, ``restart``, ``max_restarts`` and ``restart_backoff``.

Placeholders: ``{task}``, ``{model}``, ``{system_prompt}``, ``{context}``, ``{name}``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from descartes_fast.agents.restarts import KEYS as RESTART_KEYS
from descartes_fast.agents.restarts import NO_RESTART, RestartPolicy
from descartes_fast.agents.sessions import DIALECTS
from descartes_fast.wire.schema import AgentConfig

__all__ = [
    "TOOL_LEVELS",
    "Backend",
    "BackendError",
    "BackendRegistry",
    "Launch",
    "ProgramCliDisabled",
    "SessionBackend",
    "StdinMode",
    "Turns",
    "PTY_SIZE",
    "terminal_size",
]

StdinMode = Literal["pipe", "close", "null", "pty"]
#: how a session's next turn reaches it: a line on the stdin of the same process, or a new process
Turns = Literal["stdin", "process"]
_STDIN_MODES: Final = ("pipe", "close", "null", "pty")
#: a terminal's rows and columns when nothing sets them; the largest a terminal may have
PTY_SIZE: Final = (24, 80)
PTY_MAX: Final = 65535
_PLACEHOLDER: Final = re.compile(r"\{(task|model|system_prompt|context|name)\}")

#: docs/protocol.md §7.6: tool_level -> --allowedTools list (lower-cased, '-' and '_' removed)
TOOL_LEVELS: Final = {
    "minimal": "Read,Write,Edit,Bash,Glob,Grep",
    "orchestrator": "Read,Write,Edit,Bash,Glob,Grep,Task,WebFetch,WebSearch",
    "full": "Read,Write,Edit,Bash,Glob,Grep,Task,WebFetch,WebSearch",
    "readonly": "Read,Bash,Glob,Grep",
    "read": "Read,Bash,Glob,Grep",
    "researcher": "Read,Bash,Glob,Grep,WebFetch,WebSearch",
    "research": "Read,Bash,Glob,Grep,WebFetch,WebSearch",
    "planner": "Read,Write,Bash,Glob,Grep",
    "plan": "Read,Write,Bash,Glob,Grep",
    "lispdeveloper": "Read,Bash,Glob,Grep",
    "lisp": "Read,Bash,Glob,Grep",
}


class BackendError(ValueError):
    """A backend that does not exist, or a config file that does not make sense."""


class ProgramCliDisabled(BackendError):
    """A ``<program>-cli`` name that only the disabled fallback rule would run."""


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one agent process."""

    argv: list[str]
    env: dict[str, str]          # added to (and overriding) the server's environment
    cwd: str | None
    stdin: StdinMode
    cooperative_pause: bool
    events: str | None = None       # the dialect of its JSON events (agents/sessions.py), if any
    turns: Turns | None = None      # a session backend's way of taking turns
    restart: RestartPolicy = NO_RESTART
    size: tuple[int, int] = PTY_SIZE  # rows, columns of its terminal (``stdin`` ``pty``)


@dataclass(frozen=True)
class Backend:
    """A command template (see the module docstring)."""

    name: str
    command: tuple[Any, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    stdin: StdinMode = "pipe"
    cooperative_pause: bool = False
    extra_args: bool = True
    events: str | None = None
    restart: RestartPolicy = NO_RESTART
    size: tuple[int, int] = PTY_SIZE

    def build(self, config: AgentConfig, session_id: str | None = None, prompt: str | None = None) -> Launch:
        """The launch for *config*: placeholders filled, AGENT_EXTRA_ARGS and AGENT_CONTEXT applied.
        (*session_id* and *prompt*: a session backend's session to resume and turn to take.)"""
        values = {"task": config.task, "model": config.model, "system_prompt": config.system_prompt,
                  "context": config.context, "name": config.name}
        argv: list[str] = []
        for item in self.command:
            group = item if isinstance(item, (list, tuple)) else [item]
            names = [m for part in group for m in _PLACEHOLDER.findall(part)]
            if any(values[n] is None for n in names):
                if isinstance(item, (list, tuple)):
                    continue  # an optional group whose value is not set
                raise BackendError(f"backend {self.name!r} needs {', '.join(n for n in names if values[n] is None)}"
                                   " but the spawn request does not set it")
            argv.extend(_PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), part) for part in group)
        return self._finish(config, argv)

    def _finish(self, config: AgentConfig, argv: list[str]) -> Launch:
        env = dict(self.env)
        env.update({k: v for k, v in config.environment.items() if k != "AGENT_EXTRA_ARGS"})
        if self.extra_args and config.environment.get("AGENT_EXTRA_ARGS"):
            argv = argv + config.environment["AGENT_EXTRA_ARGS"].split()
        if config.context is not None:
            env["AGENT_CONTEXT"] = config.context
        return Launch(argv, env, self.cwd, self.stdin, self.cooperative_pause, self.events, None, self.restart,
                      self.size)


class _Claude(Backend):
    """``claude -p <task> --output-format stream-json --verbose [--model] [--allowedTools] ...``."""

    def build(self, config: AgentConfig, session_id: str | None = None, prompt: str | None = None) -> Launch:
        argv = ["claude", "-p", config.task, "--output-format", "stream-json", "--verbose"]
        return self._finish(config, argv + _claude_options(config))


def _claude_options(config: AgentConfig) -> list[str]:
    argv = []
    if config.model:
        argv += ["--model", config.model]
    tools = TOOL_LEVELS.get((config.tool_level or "").lower().replace("-", "").replace("_", ""))
    if tools:
        argv += ["--allowedTools", tools]
    if config.system_prompt is not None:
        argv += ["--append-system-prompt", config.system_prompt]
    if config.agents:
        argv += ["--agents", json.dumps(config.agents)]
    return argv


@dataclass(frozen=True)
class SessionBackend(Backend):
    """``claude-session`` (one process; each turn a stream-json user line on its stdin, which
    stays open), ``codex-session`` and ``gemini-session`` (one process per turn, each resuming
    the session by its id). ``command`` is the CLI's program (``program`` in a config file)."""

    def build(self, config: AgentConfig, session_id: str | None = None, prompt: str | None = None) -> Launch:
        program = list(self.command)
        if self.events == "claude":
            argv = program + ["-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose",
                              "--replay-user-messages"] + _claude_options(config)
            if session_id:
                argv += ["--resume", session_id]
            launch = self._finish(config, argv)
            return dataclasses.replace(launch, stdin="pipe", turns="stdin")
        text = config.task if prompt is None else prompt
        if self.events == "codex":
            model = ["--model", config.model] if config.model else []
            argv = program + ["exec", "--json"] + model + (["resume", session_id, text] if session_id else [text])
        else:
            argv = program + ["-p", text, "--output-format", "stream-json"]
            argv += ["--model", config.model] if config.model else []
            argv += ["--resume", session_id] if session_id else []
        return dataclasses.replace(self._finish(config, argv), stdin="close", turns="process")


def user_turn(text: str) -> bytes:
    """A user turn as claude's ``--input-format stream-json`` reads it: one NDJSON line."""
    return json.dumps({"type": "user", "message": {"role": "user", "content": text}},
                      separators=(",", ":")).encode() + b"\n"


def _builtins() -> dict[str, Backend]:
    llm = {"stdin": "close", "cooperative_pause": False}
    # -P: never the source tree in the working directory, always the installed package
    demo = (sys.executable, "-P", "-m", "descartes_fast.demo.agent", "--task", "{task}")
    return {
        "claude": _Claude("claude", (), **llm),  # type: ignore[arg-type]
        "claude-code-cli": _Claude("claude-code-cli", (), **llm),  # type: ignore[arg-type]
        "opencode": Backend("opencode", ("opencode", "run", "--format", "json", "{task}",
                                         ("--model", "{model}")), **llm),  # type: ignore[arg-type]
        "codex": Backend("codex", ("codex", "exec", "--json", "{task}", ("--model", "{model}")), **llm),  # type: ignore[arg-type]
        "gemini": Backend("gemini", ("gemini", "-p", "{task}", "--output-format", "stream-json",
                                     ("--model", "{model}")), **llm),  # type: ignore[arg-type]
        "claude-session": SessionBackend("claude-session", ("claude",), events="claude", **llm),  # type: ignore[arg-type]
        "codex-session": SessionBackend("codex-session", ("codex",), events="codex", **llm),  # type: ignore[arg-type]
        "gemini-session": SessionBackend("gemini-session", ("gemini",), events="gemini", **llm),  # type: ignore[arg-type]
        "demo": Backend("demo", demo, stdin="pipe", cooperative_pause=True),
    }


class BackendRegistry:
    """Built-in backends, overridden or extended by ``[backends.NAME]`` tables."""

    def __init__(self, backends: dict[str, Backend] | None = None) -> None:
        self._backends = _builtins()
        self._backends.update(backends or {})

    @classmethod
    def from_toml(cls, path: str | Path) -> BackendRegistry:
        """Read the ``[backends]`` tables of a TOML config file."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BackendError(f"cannot read backends from {path}: {exc}") from exc
        return cls.from_tables(data.get("backends", {}), source=str(path))

    @classmethod
    def from_tables(cls, tables: dict[str, Any], source: str = "config") -> BackendRegistry:
        builtins = _builtins()
        return cls({name: _parse(name, table, source, builtins.get(name)) for name, table in tables.items()})

    def names(self) -> list[str]:
        return sorted(self._backends)

    def __contains__(self, name: object) -> bool:
        return name in self._backends

    def resolve(self, name: str, allow_program_cli: bool = False) -> Backend:
        """The backend for ``AgentConfig.model_backend`` (the reference's rules and error text).

        The reference's fallback (a name containing ``cli`` runs ``<program> <task>``) applies
        only with *allow_program_cli*; otherwise such a name raises ProgramCliDisabled.
        """
        if name in self._backends:
            return self._backends[name]
        if "cli" in name:
            program = name.split("-", 1)[0]
            if not allow_program_cli:
                raise ProgramCliDisabled(
                    f"backend '{name}' is not configured, and running '<program>-cli' backends as "
                    f"'<program> <task>' (here: '{program}') is disabled; the server's operator can "
                    "enable it with allow_program_cli = true in the [policy] table, or define "
                    f"[backends.{name}]")
            return Backend(name, (program, "{task}"), stdin="close", cooperative_pause=False)
        raise BackendError(f"Unsupported model backend for process spawning: {name}. Use API mode instead.")


_SESSION_KEYS: Final = frozenset({"program", "env", "cwd", "events", *RESTART_KEYS})


def _parse(name: str, table: Any, source: str, builtin: Backend | None) -> Backend:
    where = f"{source}: [backends.{name}]"
    if not isinstance(table, dict):
        raise BackendError(f"{where} must be a table")
    if isinstance(builtin, SessionBackend):
        return _parse_session(builtin, table, where)
    unknown = set(table) - {"command", "env", "cwd", "stdin", "cooperative_pause", "extra_args", "events",
                            "rows", "cols", *RESTART_KEYS}
    if unknown:
        raise BackendError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    command = table.get("command")
    if not isinstance(command, list) or not command or not isinstance(command[0], str):
        raise BackendError(f"{where}: command must be a non-empty list starting with the program")
    for item in command:
        parts = item if isinstance(item, list) else [item]
        if not parts or not all(isinstance(p, str) for p in parts):
            raise BackendError(f"{where}: command items must be strings or lists of strings")
    env, cwd, events, restart = _common(table, where, Backend.restart)
    stdin = table.get("stdin", "pipe")
    if stdin not in _STDIN_MODES:
        raise BackendError(f"{where}: stdin must be one of {', '.join(_STDIN_MODES)}")
    if stdin != "pty" and ("rows" in table or "cols" in table):
        raise BackendError(f"{where}: rows and cols are the size of a terminal: only with stdin = \"pty\"")
    try:
        size = terminal_size(table.get("rows", PTY_SIZE[0]), table.get("cols", PTY_SIZE[1]))
    except ValueError as exc:
        raise BackendError(f"{where}: {exc}") from None
    flags = {k: table.get(k, d) for k, d in (("cooperative_pause", False), ("extra_args", True))}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise BackendError(f"{where}: {key} must be true or false")
    return Backend(name, tuple(tuple(i) if isinstance(i, list) else i for i in command), env,
                   cwd, stdin, events=events, restart=restart, size=size, **flags)


def terminal_size(rows: Any, cols: Any) -> tuple[int, int]:
    """(rows, cols) of a terminal, checked: ValueError naming what is wrong."""
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= PTY_MAX:
            raise ValueError(f"{name} must be a whole number from 1 to {PTY_MAX}, not {value!r}")
    return int(rows), int(cols)


def _parse_session(builtin: SessionBackend, table: dict[str, Any], where: str) -> SessionBackend:
    """A built-in session backend, with what its table changes."""
    unknown = set(table) - _SESSION_KEYS
    if unknown:
        raise BackendError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (a session backend takes "
                           f"{', '.join(sorted(_SESSION_KEYS))})")
    program = table.get("program", list(builtin.command))
    if not isinstance(program, list) or not program or not all(isinstance(p, str) and p for p in program):
        raise BackendError(f"{where}: program must be a non-empty list of strings (the CLI's command)")
    env, cwd, events, restart = _common(table, where, builtin.restart)
    return dataclasses.replace(builtin, command=tuple(program), env=env, cwd=cwd or builtin.cwd,
                               events=events or builtin.events, restart=restart)


def _common(table: dict[str, Any], where: str,
            restart: RestartPolicy) -> tuple[dict[str, str], str | None, str | None, RestartPolicy]:
    """env, cwd, events and the restart policy of a backend table."""
    env = table.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise BackendError(f"{where}: env must be a table of strings")
    cwd = table.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise BackendError(f"{where}: cwd must be a string")
    events = table.get("events")
    if events is not None and events not in DIALECTS:
        raise BackendError(f"{where}: events must be one of {', '.join(DIALECTS)}")
    try:
        restart = restart.with_values(table, where)
    except ValueError as exc:
        raise BackendError(str(exc)) from None
    return dict(env), cwd, events, restart
