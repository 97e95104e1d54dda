"""The swarm demo behind ``descartes-fast demo`` (the README's first command).

It starts a real ``descartes-fast serve`` on loopback with the demo backend, spawns a small
swarm of demo agents, shows their output and status changes live (from the PUB socket),
pauses and resumes one, kills one, and prints a summary table. It talks to the server with
plain pyzmq sockets and the codec, so it also shows the protocol at work.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import zmq

from descartes_fast.wire import codec
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentStatus,
    ControlCommand,
    ControlCommandType,
    CustomActionRequest,
    HealthCheckRequest,
    ListAgentsRequest,
    LogStreamMessage,
    OutputQueryRequest,
    SpawnRequest,
    StatusUpdate,
    StatusUpdateType,
    ZmqOutputStream,
)

#: the demo agents take their pace from AGENT_EXTRA_ARGS, which the default spawn policy refuses
DEMO_CONFIG = """[policy]
backends = ["demo"]
allow_extra_args = true
"""

SWARM = [  # name, task, extra demo-agent arguments
    ("planner", "plan the parser refactor", "--steps 6 --interval 0.25"),
    ("coder", "rewrite the tokenizer", "--steps 8 --interval 0.25"),
    ("tester", "add property tests", "--steps 6 --interval 0.3 --stderr"),
    ("reviewer", "review the diff", "--steps 40 --interval 0.25"),
    ("flaky", "run the legacy suite", "--steps 3 --interval 0.3 --exit-code 2"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class _Demo:
    ctx: zmq.Context
    req: zmq.Socket
    sub: zmq.Socket
    names: dict[uuid.UUID, str]
    t0: float

    def call(self, message):
        self.req.send(codec.encode(message))
        return codec.decode(self.req.recv())

    def command(self, agent_id: uuid.UUID, kind: ControlCommandType, payload=None):
        return self.call(ControlCommand(f"demo-{kind}", agent_id, kind, payload))

    def say(self, text: str) -> None:
        print(f"{time.monotonic() - self.t0:6.2f}s  {text}", flush=True)

    def pump(self, seconds: float, statuses: dict[uuid.UUID, AgentStatus]) -> None:
        """Print what the PUB socket brings for *seconds*."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not self.sub.poll(int(left * 1000) + 1):
                continue
            _, payload = self.sub.recv().split(b"\x00", 1)
            message = codec.decode(payload)
            if not isinstance(message, (LogStreamMessage, StatusUpdate)) or message.agent_id not in self.names:
                continue
            name = self.names[message.agent_id]
            if isinstance(message, LogStreamMessage):  # chunks hold whole lines
                for line in message.data.decode("utf-8", "replace").splitlines():
                    self.say(f"{name:>9} {message.stream_type.value}: {_brief(line)}")
            elif message.update_type != StatusUpdateType.HEARTBEAT and message.status is not None:
                statuses[message.agent_id] = message.status
                self.say(f"{name:>9} status -> {message.status} ({message.message})")


def _brief(line: str) -> str:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return line
    if event.get("type") == "progress":
        return f"progress {event['step']}/{event['of']}"
    return " ".join(f"{k}={v}" for k, v in event.items())


def main() -> int:
    """Run the demo; 0 when everything behaved as expected."""
    port, pub_port = _free_port(), _free_port()
    endpoint, pub = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{pub_port}"
    print(f"starting descartes-fast serve on {endpoint} (events on {pub})", flush=True)
    workspace = tempfile.TemporaryDirectory(prefix="descartes-demo-")  # its config and state: gone afterwards
    config = Path(workspace.name) / "demo.toml"
    config.write_text(DEMO_CONFIG)
    # -P: the installed package, even when this runs in a source tree (README command 1)
    server = subprocess.Popen([sys.executable, "-P", "-m", "descartes_fast", "serve", "--bind", endpoint, "--pub", pub,
                               "--config", str(config), "--server-id", "demo-server", "--log-level", "WARNING",
                               "--stop-grace", "1", "--state-dir", str(Path(workspace.name) / "state")],
                              env={**os.environ})
    ctx = zmq.Context()
    try:
        return _run(ctx, endpoint, pub)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(30)
        print(f"server stopped (exit status {code})")
        ctx.destroy(linger=0)
        workspace.cleanup()


def _run(ctx: zmq.Context, endpoint: str, pub: str) -> int:
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.RCVTIMEO, 10_000)
    req.connect(endpoint)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub)
    demo = _Demo(ctx, req, sub, {}, time.monotonic())
    health = demo.call(HealthCheckRequest("demo-health"))
    demo.say(f"server {health.metadata['server_id']} is up: codec {health.metadata['implementation']}, "
             f"protocol {health.protocol_version}")
    time.sleep(0.2)  # let the subscription reach the server before anything happens
    statuses: dict[uuid.UUID, AgentStatus] = {}
    for name, task, extra in SWARM:
        config = AgentConfig(name=name, model_backend="demo", task=task,
                             environment={"AGENT_EXTRA_ARGS": extra})
        reply = demo.call(SpawnRequest(f"spawn-{name}", config))
        if not reply.success:
            demo.say(f"spawn of {name} failed: {reply.error}")
            return 1
        demo.names[reply.agent_info.id] = name
        demo.say(f"{name:>9} spawned as {reply.agent_info.id}")
    ids = {name: agent_id for agent_id, name in demo.names.items()}

    demo.pump(0.8, statuses)
    reply = demo.command(ids["coder"], ControlCommandType.PAUSE)
    demo.say(f"    coder paused ({reply.data['mode']}): it stops making progress")
    demo.pump(1.0, statuses)
    demo.command(ids["coder"], ControlCommandType.RESUME)
    demo.say("    coder resumed")
    demo.pump(0.5, statuses)
    reply = demo.command(ids["reviewer"], ControlCommandType.KILL)
    demo.say(f"    reviewer killed: status {reply.status}")
    deadline = time.monotonic() + 30
    while any(s not in (AgentStatus.COMPLETED, AgentStatus.FAILED, AgentStatus.TERMINATED)
              for s in (statuses.get(i) for i in demo.names)) and time.monotonic() < deadline:
        demo.pump(0.2, statuses)

    print("\nsummary")
    print(f"  {'agent':<9} {'status':<11} {'exit':>4} {'stdout lines':>12} {'stderr lines':>12}  task")
    for info in demo.call(ListAgentsRequest("demo-list")).agents:
        env = demo.call(CustomActionRequest("demo-env", info.id, "get_env")).data["result"]
        lines = {s: demo.call(OutputQueryRequest("demo-q", info.id, s)).total_lines
                 for s in (ZmqOutputStream.STDOUT, ZmqOutputStream.STDERR)}
        print(f"  {info.name:<9} {info.status:<11} {env['exit_code']!s:>4} {lines[ZmqOutputStream.STDOUT]:>12} "
              f"{lines[ZmqOutputStream.STDERR]:>12}  {info.task}")
    expected = {"planner": AgentStatus.COMPLETED, "coder": AgentStatus.COMPLETED, "tester": AgentStatus.COMPLETED,
                "reviewer": AgentStatus.TERMINATED, "flaky": AgentStatus.FAILED}
    return 0 if all(statuses.get(ids[n]) == s for n, s in expected.items()) else 1
