"""Agents under a pseudo-terminal (``stdin = "pty"``) against the real server binary, on both
twins: the program sees a terminal (its controlling one) of the size asked for, ``resize``
reaches it as SIGWINCH, input arrives as typed, a prompt without a newline is not held back,
ending stdin is Ctrl-D, and the terminal outlives a server killed with SIGKILL."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest
from support.server import Server
from support.waiting import until

from descartes_fast.agents.backends import BackendError, BackendRegistry
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentStatus,
    ControlCommandType,
    LogStreamType,
    OutputReadRequest,
    SpawnRequest,
)

C = ControlCommandType

#: says what it sees as JSON lines, then on each SIGWINCH its new size; echoes a line it reads;
#: prompts without a newline; reads to the end of input and says what it got
PROGRAM = r"""
import json, os, signal, sys
def say(**kw):
    sys.stdout.write(json.dumps(kw) + "\n"); sys.stdout.flush()
size = os.get_terminal_size(0)
say(tty=[os.isatty(0), os.isatty(1), os.isatty(2)], rows=size.lines, cols=size.columns,
    controlling=os.tcgetpgrp(0) == os.getpgrp(), leader=os.getsid(0) == os.getpid())
signal.signal(signal.SIGWINCH, lambda *_: say(winch=list(os.get_terminal_size(0))[::-1]))
sys.stderr.write("to stderr\n"); sys.stderr.flush()
say(line=sys.stdin.readline())
sys.stdout.write("name? "); sys.stdout.flush()
say(rest=sys.stdin.read())
"""


def tables(tmp_path: Path) -> str:
    (tmp_path / "term.py").write_text(PROGRAM)
    return (f'[backends.term]\ncommand = [{json.dumps(sys.executable)}, {json.dumps(str(tmp_path / "term.py"))}]\n'
            'stdin = "pty"\nrows = 30\ncols = 100\n')


def output(server: Server, agent: uuid.UUID, stream: LogStreamType = LogStreamType.STDOUT) -> bytes:
    reply = server.call(OutputReadRequest("r", agent, stream, offset=0, max_bytes=1 << 20))
    assert reply.success, reply.error
    return bytes(reply.data)


def said(server: Server, agent: uuid.UUID) -> list[dict]:
    """The JSON lines the program wrote (the terminal ends them with \\r\\n)."""
    return [json.loads(line[line.index(b"{"):]) for line in output(server, agent).split(b"\r\n") if b"{" in line]


def custom(server: Server, agent: uuid.UUID, action: str, params: object):
    return server.control(agent, C.CUSTOM_ACTION, {"action": action, "params": params})


def write(server: Server, agent: uuid.UUID, data: bytes, eof: bool = False) -> None:
    reply = server.control(agent, C.WRITE_STDIN, {"data": data.decode(), "eof": eof})
    assert reply.success, reply.error


def spawn(server: Server, **metadata: str) -> uuid.UUID:
    reply = server.call(SpawnRequest("s", AgentConfig(name="t", model_backend="term", task=""), metadata=metadata))
    assert reply.success, reply.error
    return reply.agent_info.id


def test_a_terminal_agent_sees_its_terminal_resize_and_typed_input(implementation, tmp_path) -> None:
    server = Server(tmp_path, implementation, config_tables=tables(tmp_path))
    try:
        agent = spawn(server)
        until(lambda: said(server, agent))
        first = said(server, agent)[0]
        assert first == {"tty": [True, True, True], "rows": 30, "cols": 100, "controlling": True, "leader": True}
        assert server.control(agent, C.GET_STATUS).data["terminal"] == {"rows": 30, "cols": 100}
        reply = custom(server, agent, "resize", {"rows": 50, "cols": 132})
        assert reply.success and reply.data["result"] == {"rows": 50, "cols": 132}, reply
        until(lambda: {"winch": [50, 132]} in said(server, agent))
        assert server.control(agent, C.GET_STATUS).data["terminal"] == {"rows": 50, "cols": 132}
        write(server, agent, b"hello\n")
        until(lambda: b"name? " in output(server, agent))  # a prompt: no newline, not held back
        out = output(server, agent)
        assert b"to stderr\r\n" in out and b"hello\r\n" in out  # stderr is the terminal; input is echoed
        assert output(server, agent, LogStreamType.STDERR) == b""
        assert {"line": "hello\n"} in said(server, agent)
        write(server, agent, b"Ada", eof=True)  # an unfinished line, then the end: Ctrl-D twice
        assert server.wait_status(agent, {AgentStatus.COMPLETED, AgentStatus.FAILED}) == AgentStatus.COMPLETED
        assert said(server, agent)[-1] == {"rest": "Ada"}
        assert "terminal" not in server.control(agent, C.GET_STATUS).data  # (closed with its end)
    finally:
        assert server.close() == 0


def test_a_spawn_sets_the_size_and_bad_sizes_are_refused(main_implementation, tmp_path) -> None:
    server = Server(tmp_path, main_implementation, config_tables=tables(tmp_path))
    try:
        agent = spawn(server, rows="12", cols="40")
        until(lambda: said(server, agent))
        assert said(server, agent)[0]["rows"] == 12 and said(server, agent)[0]["cols"] == 40
        for params, text in (({"rows": 0, "cols": 80}, "rows must be a whole number from 1 to 65535, not 0"),
                             ({"rows": 24, "cols": 70000}, "cols must be a whole number from 1 to 65535"),
                             ({"rows": "x", "cols": 80}, "rows must be a whole number"),
                             ({"rows": 24}, "resize wants params {'rows': int, 'cols': int}")):
            reply = custom(server, agent, "resize", params)
            assert not reply.success and text in reply.error, (params, reply.error)
        reply = server.call(SpawnRequest("s", AgentConfig(name="t", model_backend="term", task=""),
                                         metadata={"rows": "0"}))
        assert not reply.success and "rows must be a whole number from 1 to 65535" in reply.error
        reply = server.call(SpawnRequest("s", AgentConfig(name="t", model_backend="demo", task="x"),
                                         metadata={"cols": "90"}))
        assert not reply.success and "backend 'demo' runs under none" in reply.error, reply.error
        plain = server.spawn("demo", "x")
        reply = custom(server, plain, "resize", {"rows": 10, "cols": 10})
        assert not reply.success and "runs under no terminal" in reply.error, reply.error
        assert "terminal" not in server.control(plain, C.GET_STATUS).data
        server.control(agent, C.KILL)
        server.wait_status(agent, {AgentStatus.TERMINATED, AgentStatus.FAILED})
        until(lambda: "terminal" not in server.control(agent, C.GET_STATUS).data)  # (once its processes are gone)
        reply = custom(server, agent, "resize", {"rows": 10, "cols": 10})
        assert not reply.success and "closed" in reply.error, reply.error
    finally:
        assert server.close() == 0


def test_a_config_may_size_only_a_terminal(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[backends.x]\ncommand = ["x"]\nrows = 10\n')
    with pytest.raises(BackendError, match="rows and cols are the size of a terminal"):
        BackendRegistry.from_toml(path)
    path.write_text('[backends.x]\ncommand = ["x"]\nstdin = "pty"\ncols = true\n')
    with pytest.raises(BackendError, match="cols must be a whole number from 1 to 65535, not True"):
        BackendRegistry.from_toml(path)


def test_the_terminal_outlives_a_server_killed_with_sigkill(main_implementation, tmp_path) -> None:
    first = Server(tmp_path, main_implementation, config_tables=tables(tmp_path))
    agent = spawn(first)
    until(lambda: said(first, agent))
    first.kill9()
    again = Server(tmp_path, main_implementation, config_tables=tables(tmp_path))
    try:
        assert again.control(agent, C.GET_STATUS).data["terminal"] == {"rows": 30, "cols": 100}
        assert custom(again, agent, "resize", {"rows": 33, "cols": 99}).success
        until(lambda: {"winch": [33, 99]} in said(again, agent))
        write(again, agent, b"after\n")
        until(lambda: {"line": "after\n"} in said(again, agent))
        write(again, agent, b"", eof=True)
        assert again.wait_status(agent, {AgentStatus.COMPLETED, AgentStatus.FAILED}) == AgentStatus.COMPLETED
        assert said(again, agent)[-1] == {"rest": ""}
    finally:
        assert again.close() == 0
