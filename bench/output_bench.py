"""Agent output through the store, against supervisord (issue 12).

    python bench/output_bench.py [--quick] [--json OUT] [--check]

supervisord is the peer a user would pick for durable logs of the processes it runs: it reads
each program's stdout into ``stdout_logfile`` and serves it back over XML-RPC
(``readProcessStdoutLog``). Both run the same writer (a Python program writing 100-byte lines
in blocks of 1 MB), one after the other, each keeping every byte (our ``--log-max-bytes`` and
``--state-max-bytes`` raised, supervisord's ``stdout_logfile_maxbytes = 0``). Measured:

* capture: one agent writing 1 GB (200 MB with --quick), from the spawn until every byte is
  stored (ours: the agent has ended and the store holds it all; supervisord: the program has
  exited and its log file holds it all), in MB/s. Target: ours >= supervisord.
* 100 agents writing 10 MB each at once (2 MB with --quick): total MB/s, both. No target.
* memory per agent: 10 agents writing 20 MB of two-byte lines each; the server's peak resident
  memory minus what it was before, divided by 10, against the bound ``--output-limit`` + 64 KiB.
* session parsing (issue 16): an agent writing claude's stream-json as fast as it can (300-byte
  ``assistant`` text lines, a ``tool_use`` every 50 lines and a ``result`` every 500), captured
  with its events parsed (a backend with ``events = "claude"``) against the same agent with no
  parsing, on one server with a PUB socket as a server has by default (each tool call and turn
  a status update, sent to whoever subscribes: nobody here), each round after the earlier ones'
  output is written back and out of the page cache (see settle), interleaved rounds after a
  pair not counted; the median rates. Target: >= 0.9.
* read-back: a finished agent's 50 MiB (all of it) through ``descartes-fast logs AGENT > file``
  (the whole command, start-up included) against ``readProcessStdoutLog`` of the same output
  from supervisord in the benchmark's own process (no start-up: one call for everything, or
  1 MiB pages, whichever is faster). Both outputs are checked byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import Row, machine, print_targets, settle
from server_bench import OurServer, _port

from descartes_fast.wire.schema import (
    AgentConfig,
    AgentStatus,
    ControlCommand,
    ControlCommandType,
    ListAgentsRequest,
    LogStreamType,
    OutputReadRequest,
    SpawnRequest,
)

MB = 1_000_000
MiB = 1 << 20
LINE = b"x" * 99 + b"\n"
CAP = 1 * MiB  # --output-limit for the memory case
#: readProcessStdoutLog page sizes tried; the fastest is the reference. (One call for all of it is
#: quadratic in supervisord's medusa server, which sends 4 KiB at a time and copies the rest: minutes.)
SUPERVISORD_PAGES = (64 * 1024, 256 * 1024, 1 * MiB)


def writer(blocks: int, line: bytes = LINE, per_block: int = 10_000) -> str:
    """A program writing *blocks* blocks of *per_block* lines *line* to stdout (both sides run it)."""
    return f"import sys\nw = sys.stdout.buffer.write\nb = {line!r} * {per_block}\nfor _ in range({blocks}): w(b)\n"


def _until(done: Callable[[], bool], timeout: float = 600, every: float = 0.01) -> float:
    """Poll *done* until true; the time it became true (perf_counter)."""
    deadline = time.perf_counter() + timeout
    while not done():
        if time.perf_counter() > deadline:
            raise TimeoutError("the benchmark did not finish in time")
        time.sleep(every)
    return time.perf_counter()


class Ours:
    """A descartes-fast-server that keeps everything (a store budget above what is written)."""

    def __init__(self, tmp: Path, backends: str = "", **flags: str) -> None:
        self.server = OurServer(_fresh(tmp), backends=backends,
                                **{"log_max_bytes": "4GiB", "state_max_bytes": "16GiB", **flags})

    def spawn(self, script: str) -> str:
        reply = self.server.call(SpawnRequest("s", AgentConfig(model_backend="python", task=script)))
        assert reply.success, reply.error
        return reply.agent_info.id

    def ended(self, agents: list) -> bool:
        infos = self.server.call(ListAgentsRequest("l")).agents
        terminal = {a.id for a in infos if a.status.is_terminal()}
        return all(a in terminal for a in agents)

    def stored(self, agent) -> int:
        reply = self.server.call(OutputReadRequest("r", agent, LogStreamType.STDOUT, max_bytes=1))
        return reply.end_offset

    def status(self, agent) -> AgentStatus:
        return self.server.call(ControlCommand("c", agent, ControlCommandType.GET_STATUS)).status

    def capture(self, scripts: list[str], each: int) -> float:
        """Seconds from the first spawn until every agent has ended with *each* bytes stored."""
        os.sync()  # start without the dirty pages of an earlier case being written back meanwhile
        started = time.perf_counter()
        agents = [self.spawn(s) for s in scripts]
        done = _until(lambda: self.ended(agents))
        for agent in agents:
            assert self.stored(agent) == each, "not all of the output was stored"
            assert self.status(agent) == AgentStatus.COMPLETED
        return done - started

    def close(self) -> None:
        self.server.close()


class Supervisord:
    """supervisord with *programs* (name -> script), started on demand, logs kept whole."""

    def __init__(self, tmp: Path, programs: dict[str, str]) -> None:
        self.tmp = tmp
        sections = []
        for name, script in programs.items():
            path = tmp / f"{name}.py"
            path.write_text(script)
            sections.append(f"[program:{name}]\ncommand={sys.executable} {path}\nautostart=false\n"
                            f"autorestart=false\nstartsecs=0\nstdout_logfile={tmp / name}.log\n"
                            "stdout_logfile_maxbytes=0\nstdout_logfile_backups=0\nredirect_stderr=false\n")
        sock = tmp / "supervisor.sock"
        conf = tmp / "supervisord.conf"
        conf.write_text(f"[unix_http_server]\nfile={sock}\n[supervisord]\nnodaemon=true\nlogfile={tmp}/supervisord.log\n"
                        f"pidfile={tmp}/supervisord.pid\nloglevel=warn\nminfds=4096\n"
                        "[rpcinterface:supervisor]\n"
                        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
                        + "".join(sections))
        self.proc = subprocess.Popen([sys.executable, "-c", "from supervisor.supervisord import main; main()",
                                      "-c", str(conf)])
        from supervisor.xmlrpc import SupervisorTransport
        self.rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None,
                                                                                                f"unix://{sock}"))
        _until(lambda: sock.exists() and self._up(), timeout=30, every=0.05)

    def _up(self) -> bool:
        try:
            return self.rpc.supervisor.getState()["statename"] == "RUNNING"
        except OSError:
            return False

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def capture(self, names: list[str], each: int) -> float:
        """Seconds from the first start until every program has exited with *each* bytes in its log."""
        os.sync()
        started = time.perf_counter()
        for name in names:
            self.rpc.supervisor.startProcess(name, False)

        def done() -> bool:
            states = {p["name"]: p["statename"] for p in self.rpc.supervisor.getAllProcessInfo()}
            return all(states[n] == "EXITED" and self.log(n).stat().st_size == each for n in names)

        return _until(done) - started

    def read(self, name: str, page: int) -> bytes:
        """The whole stdout log of *name* through readProcessStdoutLog, in pages of *page* bytes."""
        parts, offset = [], 0
        while True:
            text = self.rpc.supervisor.readProcessStdoutLog(name, offset, page)
            if not text:
                return b"".join(parts)
            data = text.encode()
            parts.append(data)
            offset += len(data)

    def close(self) -> None:
        self.rpc.supervisor.shutdown()
        self.proc.wait(60)


def capture_one(tmp: Path, megabytes: int) -> dict:
    script = writer(megabytes)
    ours = Ours(tmp / "ours1")
    try:
        ours_s = ours.capture([script], megabytes * MB)
    finally:
        ours.close()
    sv = Supervisord(_fresh(tmp / "sv1"), {"w": script})
    try:
        sv_s = sv.capture(["w"], megabytes * MB)
    finally:
        sv.close()
    return {"megabytes": megabytes, "ours_mb_s": megabytes / ours_s, "supervisord_mb_s": megabytes / sv_s}


def capture_many(tmp: Path, agents: int, megabytes: int) -> dict:
    script = writer(megabytes)
    ours = Ours(tmp / "ours100")
    try:
        ours_s = ours.capture([script] * agents, megabytes * MB)
    finally:
        ours.close()
    names = [f"w{i}" for i in range(agents)]
    sv = Supervisord(_fresh(tmp / "sv100"), {n: script for n in names})
    try:
        sv_s = sv.capture(names, megabytes * MB)
    finally:
        sv.close()
    total = agents * megabytes
    return {"agents": agents, "megabytes_each": megabytes, "ours_mb_s": total / ours_s,
            "supervisord_mb_s": total / sv_s}


def memory(tmp: Path) -> dict:
    agents, each = 10, 20 * MB
    ours = Ours(tmp / "mem", output_limit=str(CAP), log_max_bytes="128MiB")
    try:
        before = ours.server.rss_kib()
        ids = [ours.spawn(writer(20, b"a\n", 500_000)) for _ in range(agents)]
        peak = before

        def done() -> bool:
            nonlocal peak
            peak = max(peak, ours.server.rss_kib())
            return ours.ended(ids)

        _until(done, every=0.02)
        peak = max(peak, ours.server.rss_kib())
        assert all(ours.stored(a) == each for a in ids)
    finally:
        ours.close()
    return {"agents": agents, "bytes_each": each, "before_kib": before, "peak_kib": peak,
            "per_agent_bytes": (peak - before) * 1024 / agents, "bound_bytes": CAP + 64 * 1024}


def read_back(tmp: Path, rounds: int) -> dict:
    size = 50 * MiB
    script = writer(size // (len(LINE) * 10_000) + 1)
    want_len = (size // (len(LINE) * 10_000) + 1) * len(LINE) * 10_000
    ours = Ours(tmp / "read")
    sv = Supervisord(_fresh(tmp / "svread"), {"w": script})
    try:
        agent = ours.spawn(script)
        _until(lambda: ours.ended([agent]))
        sv.capture(["w"], want_len)
        want = hashlib.sha256(sv.log("w").read_bytes()).hexdigest()
        out = tmp / "logs.out"
        ours_s: list[float] = []
        sv_s: dict[int, list[float]] = {page: [] for page in SUPERVISORD_PAGES}
        # The command as a default Python runs it: bytecode cached after the first run (an installed
        # package has it from the install; PYTHONDONTWRITEBYTECODE would recompile it every round).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        for _ in range(rounds):
            started = time.perf_counter()
            with out.open("wb") as f:
                subprocess.run([sys.executable, "-P", "-m", "descartes_fast", "logs", str(agent), "--endpoint",
                                ours.server.endpoint], stdout=f, check=True, env=env)
            ours_s.append(time.perf_counter() - started)
            assert hashlib.sha256(out.read_bytes()).hexdigest() == want, "descartes-fast logs: not the same bytes"
            for page in sv_s:
                started = time.perf_counter()
                data = sv.read("w", page)
                sv_s[page].append(time.perf_counter() - started)
                assert hashlib.sha256(data).hexdigest() == want, "readProcessStdoutLog: not the same bytes"
    finally:
        sv.close()
        ours.close()
    best_page = min(sv_s, key=lambda p: statistics.median(sv_s[p]))
    mb = want_len / MB
    return {"bytes": want_len, "ours_mb_s": [mb / s for s in ours_s],
            "supervisord_mb_s": [mb / s for s in sv_s[best_page]], "supervisord_page": best_page,
            "supervisord_mb_s_by_page": {str(p): [mb / s for s in v] for p, v in sv_s.items()}}


def _claude_writer(lines: int, blocks: int) -> tuple[str, int]:
    """A program writing *blocks* blocks of *lines* lines of claude's stream-json (assistant text,
    a tool call every 50 lines, a result every 500), and the bytes of one block. Every tool call
    has an id of its own (the block's number and the line's), as a real session's have."""
    def line(event: dict) -> bytes:
        return json.dumps(event, separators=(",", ":")).encode() + b"\n"
    text = line({"type": "assistant", "message": {"id": "msg_01", "type": "message", "role": "assistant",
                                                  "content": [{"type": "text", "text": "t" * 170}]},
                 "session_id": "s-1"})
    tool = line({"type": "assistant", "message": {"content": [{"type": "tool_use", "id": "toolu_%04d", "name": "Bash",
                                                               "input": {"command": "ls"}}]}, "session_id": "s-1"})
    result = line({"type": "result", "subtype": "success", "is_error": False, "session_id": "s-1",
                   "total_cost_usd": 0.01, "usage": {"input_tokens": 100, "output_tokens": 20}})
    size = sum(len(result if i % 500 == 499 else tool if i % 50 == 49 else text) for i in range(lines))
    script = (f"import sys\nw = sys.stdout.buffer.write\nt, u, r = {text!r}, {tool!r}, {result!r}\n"
              f"b = b''.join(r if i % 500 == 499 else u % (i % 10000) if i % 50 == 49 else t for i in range({lines}))\n"
              f"for k in range({blocks}): w(b.replace(b'\"toolu_', b'\"t%05d' % k))\n")
    return script, size


def session_parsing(tmp: Path, megabytes: int, rounds: int) -> dict:
    _, block = _claude_writer(5000, 1)
    blocks = max(1, megabytes * MB // block)
    script, block = _claude_writer(5000, blocks)
    program = f'["{sys.executable}", "-c", "{{task}}"]'
    tables = (f'[backends.claude-parsed]\ncommand = {program}\nstdin = "null"\nevents = "claude"\n'
              f'[backends.claude-plain]\ncommand = {program}\nstdin = "null"\n')
    ours = Ours(tmp / "sessions", backends=tables, pub=f"tcp://127.0.0.1:{_port()}")  # (status updates are sent)
    rates: dict[str, list[float]] = {"parsed": [], "plain": []}
    try:
        for n in range(rounds + 1):  # (the first pair warms up and is not counted: it ran far faster)
            for kind in ("parsed", "plain"):
                settle(ours.server.state)
                started = time.perf_counter()
                reply = ours.server.call(SpawnRequest("s", AgentConfig(model_backend=f"claude-{kind}", task=script)))
                assert reply.success, reply.error
                agent = reply.agent_info.id
                done = _until(lambda: ours.ended([agent]))  # noqa: B023 (called at once)
                assert ours.stored(agent) == blocks * block
                if n:
                    rates[kind].append(blocks * block / MB / (done - started))
        state = ours.server.call(ControlCommand("c", reply.agent_info.id, ControlCommandType.GET_STATUS)).data
        assert state.get("turns") is None  # (the plain one: no session)
    finally:
        ours.close()
    return {"megabytes": blocks * block / MB, "parsed_mb_s": rates["parsed"], "plain_mb_s": rates["plain"]}


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def rows(results: dict) -> list[Row]:
    one, mem, back, sess = results["capture"], results["memory"], results["read_back"], results["sessions"]
    parsed, plain = statistics.median(sess["parsed_mb_s"]), statistics.median(sess["plain_mb_s"])
    ours_read = statistics.median(back["ours_mb_s"])
    sv_read = statistics.median(back["supervisord_mb_s"])
    return [
        Row("output.capture", f"capture of {one['megabytes']:,} MB of 100-byte lines, MB/s", one["ours_mb_s"],
            one["supervisord_mb_s"], "supervisord stdout_logfile", one["ours_mb_s"] / one["supervisord_mb_s"]),
        Row("output.memory_per_agent", "server memory per agent, 20 MB of 2-byte lines, KiB",
            mem["per_agent_bytes"] / 1024, mem["bound_bytes"] / 1024, "--output-limit + 64 KiB",
            mem["per_agent_bytes"] / mem["bound_bytes"]),
        Row("output.logs_read_back", f"descartes-fast logs of {back['bytes'] / MiB:.0f} MiB, MB/s (median)",
            ours_read, sv_read, "supervisord readProcessStdoutLog", ours_read / sv_read),
        Row("output.session_parsing", f"claude stream-json, {sess['megabytes']:.0f} MB, events parsed, MB/s "
            "(median)", parsed, plain, "the same agent, no parsing", parsed / plain),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller outputs (about half a minute)")
    parser.add_argument("--json", metavar="OUT", help="write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if any row misses its target")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as where:
        tmp = Path(where)
        cases: dict[str, Callable[[], dict]] = {
            "capture": lambda: capture_one(tmp, 200 if args.quick else 1000),
            "concurrent": lambda: capture_many(tmp, 100, 2 if args.quick else 10),
            "memory": lambda: memory(tmp),
            "read_back": lambda: read_back(tmp, 3 if args.quick else 5),
            "sessions": lambda: session_parsing(tmp, 100 if args.quick else 300, 3 if args.quick else 5)}
        results: dict[str, dict] = {}
        for name, case in cases.items():
            print(f"output_bench: {name} ...", file=sys.stderr, flush=True)
            results[name] = case()
            print(f"output_bench: {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    table = rows(results)
    print(machine())
    print_targets(table)
    many = results["concurrent"]
    print(f"{many['agents']} agents writing {many['megabytes_each']} MB each at once: "
          f"ours {many['ours_mb_s']:,.0f} MB/s in all, supervisord {many['supervisord_mb_s']:,.0f} MB/s (no target)")
    sess = results["sessions"]
    print("session parsing MB/s, each round: parsed " + ", ".join(f"{v:.0f}" for v in sess["parsed_mb_s"])
          + "; plain " + ", ".join(f"{v:.0f}" for v in sess["plain_mb_s"]))
    back = results["read_back"]
    print("read-back MB/s, each round: ours " + ", ".join(f"{v:.0f}" for v in back["ours_mb_s"])
          + "; supervisord " + "; ".join(f"{page} pages " + ", ".join(f"{v:.0f}" for v in vals)
                                         for page, vals in back["supervisord_mb_s_by_page"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": [r.as_dict() for r in table],
                                               **results}, indent=1))
    return 1 if (args.check and not all(r.ok for r in table)) else 0


if __name__ == "__main__":
    sys.exit(main())
