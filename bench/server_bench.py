"""The server's targets (issue 3), each against a reference measured in the same run.

    python bench/server_bench.py [--quick] [--json OUT]

Every server runs in its own process; one client process (this one) drives them all with
the same code, on loopback TCP:

* get_status throughput, 64 requests in flight on one DEALER: descartes-fast-server against a
  reference server written here (plain synchronous pyzmq ROUTER + msgspec Structs that decode
  the same request and encode the same reply). Target: ours >= 1.5x the reference.
* round-trip p50 with one request in flight: descartes-fast-server's get_status against a
  plain pyzmq ROUTER echo of the same bytes. Target: ours <= 1.3x the echo.
* spawn rate: /bin/true through a config backend, 64 spawn requests in flight, uvloop.
  Target: >= 1,000 spawns/s.
* 1,000 live agents (``sleep``) on one server: all spawned without error, and the server's
  memory per live agent (RSS growth / 1,000).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import Row, machine, print_targets

from descartes_fast.wire import codec
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentStatus,
    ControlCommand,
    ControlCommandType,
    HealthCheckRequest,
    ListAgentsRequest,
    SpawnRequest,
)

HERE = Path(__file__).resolve()


# -- reference servers (run as child processes of this script) -----------------------------

def _reference_codec():
    """The reference servers' work: msgspec Structs for the request and the reply.

    Returns ``handle(payload) -> reply bytes``: decode get_status, build the reply, encode it.
    """
    import msgspec

    class Command(msgspec.Struct, array_like=True, tag="control_command", tag_field="type"):
        request_id: str
        agent_id: bytes
        command_type: str
        payload: dict | None = None

    class Response(msgspec.Struct, array_like=True, tag="command_response", tag_field="type"):
        request_id: str
        agent_id: bytes
        success: bool
        status: str | None
        data: dict | None
        error: str | None

    decode, encode = msgspec.msgpack.Decoder(Command).decode, msgspec.msgpack.Encoder().encode

    def handle(payload: bytes) -> bytes:
        cmd = decode(payload)
        return encode(Response(cmd.request_id, cmd.agent_id, True, "running", {"status": "Running"}, None))
    return handle


def reference_server(endpoint: str) -> None:
    """Plain synchronous pyzmq + msgspec: decode get_status, build and encode the reply."""
    handle = _reference_codec()
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(endpoint)
    while True:
        frames = sock.recv_multipart()
        frames[-1] = handle(frames[-1])
        sock.send_multipart(frames)


def asyncio_server(endpoint: str) -> None:
    """The same work as reference_server, written the usual async way: zmq.asyncio on uvloop."""
    import uvloop
    import zmq.asyncio

    handle = _reference_codec()

    async def serve() -> None:
        sock = zmq.asyncio.Context().socket(zmq.ROUTER)
        sock.bind(endpoint)
        while True:
            frames = await sock.recv_multipart()
            frames[-1] = handle(frames[-1])
            await sock.send_multipart(frames)

    uvloop.run(serve())


def echo_server(endpoint: str) -> None:
    """Plain synchronous pyzmq ROUTER that sends every request back."""
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(endpoint)
    while True:
        sock.send_multipart(sock.recv_multipart())


# -- the client -------------------------------------------------------------------------

def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def throughput(endpoint: str, payload: bytes, total: int, window: int) -> float:
    """Requests per second with *window* requests in flight on one DEALER.

    The DEALER sends single frames (no empty delimiter; both servers answer in the same
    shape): a multipart send and receive per request cost this client more than the servers
    under test spend (it topped out at ~83k/s against a bare echo), so it would measure itself.
    """
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    send, recv = sock.send, sock.recv
    for _ in range(window):  # warm-up round
        send(payload)
    for _ in range(window):
        recv()
    started = time.perf_counter()
    sent = received = 0
    while sent < window:
        send(payload)
        sent += 1
    while received < total:
        recv()
        received += 1
        if sent < total:
            send(payload)
            sent += 1
    elapsed = time.perf_counter() - started
    sock.close()
    return total / elapsed


def latencies(endpoint: str, payload: bytes, count: int) -> list[float]:
    """Round-trip times in µs, one request in flight."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    for _ in range(200):
        sock.send(payload)
        sock.recv()
    out = []
    for _ in range(count):
        t = time.perf_counter()
        sock.send(payload)
        sock.recv()
        out.append((time.perf_counter() - t) * 1e6)
    sock.close()
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 10) - 1]


class OurServer:
    def __init__(self, tmp: Path, endpoint: str | None = None, pub: str = "none", backends: str = "",
                 state: Path | None = None, **flags: str) -> None:
        """*backends*: more ``[backends.NAME]`` tables for the config file; *state*: the state
        directory (default: a new one)."""
        config = tmp / "bench.toml"
        config.write_text('[backends.true]\ncommand = ["/bin/true"]\nstdin = "null"\n'
                          '[backends.sleep]\ncommand = ["sleep", "600"]\nstdin = "null"\n'
                          f'[backends.python]\ncommand = ["{sys.executable}", "-c", "{{task}}"]\nstdin = "null"\n'
                          + backends)
        self.endpoint, self.pub = endpoint or f"tcp://127.0.0.1:{_port()}", pub
        args = [sys.executable, "-P", "-m", "descartes_fast", "serve", "--bind", self.endpoint, "--pub", pub,
                "--config", str(config), "--log-level", "WARNING", "--max-agents", "5000", "--stop-grace", "1",
                "--state-dir", str(state or tmp / f"state-{_port()}")]
        self.state = Path(args[-1])
        for k, v in flags.items():
            args += ["--" + k.replace("_", "-"), v]
        self.proc = subprocess.Popen(args)
        self.req = zmq.Context.instance().socket(zmq.REQ)
        self.req.setsockopt(zmq.LINGER, 0)
        self.req.setsockopt(zmq.RCVTIMEO, 60_000)
        self.req.connect(self.endpoint)
        assert self.call(HealthCheckRequest("up")).healthy

    def call(self, message):
        self.req.send(codec.encode(message))
        return codec.decode(self.req.recv())

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def close(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.req.close()
        return code


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def popen_loop(n: int) -> dict:
    """The floor of spawning: a bare loop that starts *n* /bin/true with subprocess.Popen, then waits."""
    started = time.perf_counter()
    procs = [subprocess.Popen(["/bin/true"], stdin=subprocess.DEVNULL) for _ in range(n)]
    for proc in procs:
        proc.wait()
    return {"n": n, "rate": n / (time.perf_counter() - started)}


def restart_after_kill9(server: OurServer, tmp: Path, agents: list[uuid.UUID]) -> tuple[OurServer, float]:
    """``kill -9`` of *server*, then a new server on its state directory: the seconds from its
    start until every agent is listed running again and the last one answers get_status."""
    server.proc.kill()
    server.proc.wait()
    server.req.close()
    started = time.monotonic()
    again = OurServer(tmp, server.endpoint, state=server.state)
    listed = again.call(ListAgentsRequest("l"))
    status = again.call(ControlCommand("s", agents[-1], ControlCommandType.GET_STATUS))
    took = time.monotonic() - started
    running = sum(a.status == AgentStatus.RUNNING for a in listed.agents)
    if running != len(agents) or not status.success:
        raise SystemExit(f"restart: {running} of {len(agents)} agents running again; get_status: {status.error}")
    return again, took


def _child(role: str, endpoint: str | None = None) -> subprocess.Popen:
    """A reference server in its own process, given time to bind."""
    endpoint = endpoint or f"tcp://127.0.0.1:{_port()}"
    proc = subprocess.Popen([sys.executable, str(HERE), "--role", role, endpoint])
    proc.endpoint = endpoint  # type: ignore[attr-defined]
    time.sleep(0.5)
    return proc


def c_echo(tmp: Path) -> tuple[subprocess.Popen | None, str]:
    """Build and start bench/c/zmq_echo.c; (None, why) when it cannot be built here."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler"
    binary = tmp / "zmq_echo"
    build = subprocess.run([compiler, "-O2", "-o", str(binary), str(HERE.parent / "c" / "zmq_echo.c"), "-lzmq"],
                           capture_output=True, text=True)
    if build.returncode != 0:
        return None, "cannot build bench/c/zmq_echo.c (needs zmq.h and libzmq: apt-get install libzmq3-dev)"
    endpoint = f"tcp://127.0.0.1:{_port()}"
    proc = subprocess.Popen([str(binary), endpoint])
    proc.endpoint = endpoint  # type: ignore[attr-defined]
    time.sleep(0.3)
    return proc, "built with " + compiler


def sweep(tmp: Path, n: int) -> list[dict]:
    """Throughput of ours and of the reference server at 1, 4 and 64 in flight, over TCP and IPC."""
    out = []
    for transport in ("tcp", "ipc"):
        ours = OurServer(tmp, f"ipc://{tmp}/ours" if transport == "ipc" else None)
        ref = _child("ref", f"ipc://{tmp}/ref" if transport == "ipc" else None)
        try:
            agent = ours.call(SpawnRequest("a", AgentConfig(model_backend="sleep"))).agent_info.id
            request = codec.encode(ControlCommand("req-0001", agent, ControlCommandType.GET_STATUS))
            for window in (1, 4, 64):
                count = n // 8 if window == 1 else n // 2
                out.append({"transport": transport, "in_flight": window,
                            "ours": throughput(ours.endpoint, request, count, window),
                            "reference": throughput(ref.endpoint, request, count, window)})
            lat_ours, lat_ref = latencies(ours.endpoint, request, n // 10), latencies(ref.endpoint, request, n // 10)
            out.append({"transport": transport, "latency_us": {
                "ours": {q: pct(lat_ours, q) for q in (50, 99, 99.9)},
                "reference": {q: pct(lat_ref, q) for q in (50, 99, 99.9)}}})
        finally:
            ours.close()
            ref.kill()
            ref.wait()
    return out


def spawn_rate(server: OurServer, total: int, window: int) -> tuple[float, int]:
    """Spawns/s of /bin/true with *window* spawn requests in flight; and how many failed."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    payload = codec.encode(SpawnRequest("s", AgentConfig(model_backend="true")))
    failed = sent = received = 0
    started = time.perf_counter()
    while sent < min(window, total):
        sock.send_multipart([b"", payload])
        sent += 1
    while received < total:
        failed += not codec.decode(sock.recv_multipart()[-1]).success
        received += 1
        if sent < total:
            sock.send_multipart([b"", payload])
            sent += 1
    rate = total / (time.perf_counter() - started)
    sock.close()
    return rate, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (under a minute)")
    parser.add_argument("--json", metavar="OUT", help="write the results here")
    parser.add_argument("--role", nargs=2, metavar=("ROLE", "ENDPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        {"ref": reference_server, "aio": asyncio_server, "echo": echo_server}[args.role[0]](args.role[1])
        return 0

    n_thr, n_lat, n_spawn, reps = (20_000, 3_000, 500, 1) if args.quick else (100_000, 20_000, 2_000, 3)
    results: dict[str, dict] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ours = OurServer(Path(tmp))
        ref, echo = _child("ref"), _child("echo")
        try:
            agent = ours.call(SpawnRequest("a", AgentConfig(model_backend="sleep"))).agent_info.id
            request = codec.encode(ControlCommand("req-0001", agent, ControlCommandType.GET_STATUS))
            thr_ours, thr_ref, lat_ours, lat_echo = [], [], [], []
            for _ in range(reps):  # interleaved repeats
                thr_ours.append(throughput(ours.endpoint, request, n_thr, 64))
                thr_ref.append(throughput(ref.endpoint, request, n_thr, 64))
                lat_ours += latencies(ours.endpoint, request, n_lat)
                lat_echo += latencies(echo.endpoint, request, n_lat)
            # default settings, rate limit included: a refusal is a cheap reply, so none may be counted
            limited = ours.call(HealthCheckRequest("limited")).metadata["rate_limited"]
            assert limited == "0", f"our server rate-limited {limited} benchmark requests: the numbers would lie"
            t_ours, t_ref = statistics.median(thr_ours), statistics.median(thr_ref)
            rows.append(Row("server.throughput", "get_status throughput, 64 in flight (req/s)", t_ours, t_ref,
                            "pyzmq+msgspec sync server", t_ours / t_ref))
            p50, p50_echo = pct(lat_ours, 50), pct(lat_echo, 50)
            rows.append(Row("server.p50", "get_status round trip p50 (µs)", p50, p50_echo, "pyzmq sync echo",
                            p50 / p50_echo))
            results["latency_us"] = {"ours": {q: pct(lat_ours, q) for q in (50, 99, 99.9)},
                                     "echo": {q: pct(lat_echo, q) for q in (50, 99, 99.9)}}
            results["throughput"] = {"ours": thr_ours, "reference": thr_ref}

            rate, failed = spawn_rate(ours, n_spawn, 64)
            rows.append(Row("server.spawn_rate", "spawn rate, /bin/true (spawns/s)", rate, 1000.0, "the floor",
                            rate / 1000 if failed == 0 else 0.0))
            results["spawn"] = {"rate": rate, "failed": failed}
        finally:
            ours.close()
            for child in (ref, echo):
                child.kill()
                child.wait()

        aio = _child("aio")
        try:
            agent_id = uuid.UUID(int=1)  # the reference servers answer any agent
            req = codec.encode(ControlCommand("req-0001", agent_id, ControlCommandType.GET_STATUS))
            results["asyncio_server"] = {"throughput_64": throughput(aio.endpoint, req, n_thr // 2, 64),
                                         "p50_us": pct(latencies(aio.endpoint, req, n_lat), 50)}
        finally:
            aio.kill()
            aio.wait()
        results["sweep"] = sweep(Path(tmp), n_thr)
        echo_c, how = c_echo(Path(tmp))
        results["c_echo"] = {"status": how}
        if echo_c is not None:
            try:
                results["c_echo"].update(throughput_64=throughput(echo_c.endpoint, request, n_thr, 64),
                                         p50_us=pct(latencies(echo_c.endpoint, request, n_lat), 50))
            finally:
                echo_c.kill()
                echo_c.wait()
        results["popen_loop"] = popen_loop(200)
        live = OurServer(Path(tmp))
        try:
            before = live.rss_kib()
            keeper_pid = int(live.call(HealthCheckRequest("h")).metadata["keeper_pid"])
            keeper_before = _rss_kib(keeper_pid)
            ids = [live.call(SpawnRequest(f"l{i}", AgentConfig(model_backend="sleep"))) for i in range(1000)]
            errors = sum(not r.success for r in ids)
            health = live.call(HealthCheckRequest("h"))
            after, keeper_after = live.rss_kib(), _rss_kib(keeper_pid)
            per_agent = (after - before) / 1000
            rows.append(Row("server.live_agents", f"1,000 live agents, {per_agent:.1f} KiB each (active)",
                            float(health.active_agents), 1000.0, "agents spawned",
                            health.active_agents / 1000 if errors == 0 else 0.0))
            both = (after + keeper_after - before - keeper_before) / 1000
            rows.append(Row("server.keeper_memory", f"server + keeper memory per live agent ({both:.1f} KiB)",
                            both, 1024.0, "1 MiB", 1024.0 / max(both, 1e-3)))
            results["live_agents"] = {"errors": errors, "active": health.active_agents,
                                      "rss_before_kib": before, "rss_after_kib": after,
                                      "keeper_rss_before_kib": keeper_before, "keeper_rss_after_kib": keeper_after}
            live, took = restart_after_kill9(live, Path(tmp), [r.agent_info.id for r in ids if r.success])
            rows.append(Row("server.restart_1000", f"kill -9, then a new server re-adopts 1,000 agents ({took:.2f} s)",
                            took, 2.0, "2 s", 2.0 / took))
            results["restart"] = {"seconds": took}
        finally:
            started = time.monotonic()
            code = live.close()
            results["live_agents"]["shutdown_s"] = time.monotonic() - started
            results["live_agents"]["exit_status"] = code

    print(machine())
    print_targets(rows)
    lat = results["latency_us"]
    print(f"latency µs (ours / echo): p50 {lat['ours'][50]:.1f} / {lat['echo'][50]:.1f}, "
          f"p99 {lat['ours'][99]:.1f} / {lat['echo'][99]:.1f}, p99.9 {lat['ours'][99.9]:.1f} / {lat['echo'][99.9]:.1f}")
    print("throughput by depth and transport (req/s, ours / pyzmq+msgspec reference): " + "; ".join(
        f"{s['transport']} {s['in_flight']}: {s['ours']:,.0f} / {s['reference']:,.0f}"
        for s in results["sweep"] if "in_flight" in s))
    print("latency by transport (µs p50/p99/p99.9, ours; pyzmq+msgspec reference): " + "; ".join(
        f"{s['transport']} " + "/".join(f"{s['latency_us']['ours'][q]:.0f}" for q in (50, 99, 99.9)) + "; "
        + "/".join(f"{s['latency_us']['reference'][q]:.0f}" for q in (50, 99, 99.9))
        for s in results["sweep"] if "latency_us" in s))
    aio = results["asyncio_server"]
    print(f"zmq.asyncio + uvloop reference server (same work as the sync one): {aio['throughput_64']:,.0f} req/s "
          f"with 64 in flight, p50 {aio['p50_us']:.1f} µs")
    ce = results["c_echo"]
    if "throughput_64" in ce:
        print(f"C libzmq echo (no work, {ce['status']}): {ce['throughput_64']:,.0f} req/s with 64 in flight, "
              f"p50 {ce['p50_us']:.1f} µs: the physical limit of this client and machine")
    else:
        print(f"C libzmq echo: not measured ({ce['status']})")
    la = results["live_agents"]
    print(f"spawn: ours {results['spawn']['rate']:,.0f}/s; a bare Popen loop of {results['popen_loop']['n']} "
          f"{results['popen_loop']['rate']:,.0f}/s")
    print(f"keeper RSS {la['keeper_rss_before_kib']:,} -> {la['keeper_rss_after_kib']:,} KiB with 1,000 agents; "
          f"restart after kill -9 re-adopted them in {results['restart']['seconds']:.2f} s")
    print(f"1,000 live agents: RSS {la['rss_before_kib']:,} -> {la['rss_after_kib']:,} KiB; "
          f"shutdown took {la['shutdown_s']:.1f} s, exit status {la['exit_status']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": [r.as_dict() for r in rows],
                                               **results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
