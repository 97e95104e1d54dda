"""The Prometheus endpoint (``--metrics HOST:PORT``, descartes_fast/server/metrics.py): the real
server binary on both twins, scraped over HTTP and parsed with prometheus_client's own parser;
the session metrics through a Metrics instance; bad addresses; no prometheus_client without it."""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import Counter
from typing import Any

import msgpack
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families
from support.server import Server, server_env
from support.waiting import until

from descartes_fast.server import settings
from descartes_fast.server.config import ServerConfig
from descartes_fast.server.metrics import Metrics
from descartes_fast.wire import codec
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentStatus,
    CommandResponse,
    ControlCommand,
    ControlCommandType,
    ErrorResponse,
    HealthCheckRequest,
    ListAgentsRequest,
    SpawnRequest,
    SpawnResponse,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample at *url*, by (name, labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_the_server_counts_requests_agents_and_spawns(implementation, tmp_path) -> None:
    server = Server(tmp_path, implementation, "--metrics", "127.0.0.1:0", log_level="INFO")
    try:
        found: list[str] = []
        until(lambda: found.extend(re.findall(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", server.log())) or found,
              seen=server.log)
        url = found[0]
        sent: Counter[tuple[str, str]] = Counter({("health_check_request", "ok"): 1})  # the harness's "ready"

        def call(message: Any, result: str, raw: bytes | None = None, tag: str = "") -> Any:
            sent[(tag or message.TAG, result)] += 1
            return server.call(message, raw)

        spawned = call(SpawnRequest("s", AgentConfig(name="t", model_backend="sh",
                                                     task="printf 'hello\\n'; printf 'oops\\n' >&2")), "ok")
        assert isinstance(spawned, SpawnResponse) and spawned.success, spawned
        agent = spawned.agent_info.id
        status = None
        while status != AgentStatus.COMPLETED:  # (counted: every get_status is a request)
            reply = call(ControlCommand("c", agent, ControlCommandType.GET_STATUS), "ok")
            assert isinstance(reply, CommandResponse) and reply.success, reply
            status = reply.status
        reply = call(ControlCommand("c", uuid.uuid4(), ControlCommandType.GET_STATUS), "error")
        assert isinstance(reply, CommandResponse) and not reply.success
        reply = call(SpawnRequest("s2", AgentConfig(name="x", model_backend="no-such-backend")), "error")
        assert isinstance(reply, SpawnResponse) and not reply.success
        reply = call(ListAgentsRequest("l"), "ok")  # a tracked reply (sent by the server, not the dispatcher)
        # refused: a spawn_request whose body does not decode, and bytes that are no message at all
        reply = call(None, "refused", raw=msgpack.packb(["spawn_request", "bad", 5]), tag="spawn_request")
        assert isinstance(reply, SpawnResponse) and not reply.success and "invalid request" in (reply.error or "")
        reply = call(None, "refused", raw=b"\xc1", tag="unknown")
        assert isinstance(reply, ErrorResponse)

        def settled() -> Samples:
            got = scrape(url)
            written = [value(got, "descartes_fast_output_bytes_total", stream=s) for s in ("stdout", "stderr")]
            return got if written == [len("hello\n"), len("oops\n")] else {}
        samples: Samples = {}
        until(lambda: samples.update(settled()) or samples, seen=lambda: scrape(url))

        counted = {(dict(labels)["type"], dict(labels)["result"]): v for (name, labels), v in samples.items()
                   if name == "descartes_fast_requests_total" and v}
        assert counted == dict(sent)
        for kind in ("control_command", "spawn_request", "health_check_request", "list_agents_request"):
            timed = sum(n for (t, result), n in sent.items() if t == kind and result != "refused")
            assert value(samples, "descartes_fast_request_seconds_count", type=kind) == timed, kind
            assert value(samples, "descartes_fast_request_seconds_bucket", type=kind, le="+Inf") == timed
            assert value(samples, "descartes_fast_request_seconds_bucket", type=kind, le="10.0") == timed
            assert 0 < value(samples, "descartes_fast_request_seconds_sum", type=kind) < 10
        assert value(samples, "descartes_fast_request_seconds_count", type="unknown") == 0  # refused: not timed
        assert {s.value: value(samples, "descartes_fast_agents", status=s.value) for s in AgentStatus} == {
            s.value: 1.0 if s is AgentStatus.COMPLETED else 0.0 for s in AgentStatus}
        assert value(samples, "descartes_fast_spawns_total") == 1
        assert value(samples, "descartes_fast_spawn_failures_total") == 1  # the unknown backend
        assert value(samples, "descartes_fast_output_bytes_total", stream="stdout") == len("hello\n")
        assert value(samples, "descartes_fast_requests_received_total") == sum(sent.values())
        assert value(samples, "descartes_fast_decode_errors_total") == 2
        assert value(samples, "descartes_fast_refusals_total", reason="rate_limited") == 0
        assert value(samples, "descartes_fast_max_agents") == 40
        assert value(samples, "descartes_fast_server_info", server_id="test-server", version=_version(),
                     implementation=implementation,
                     libzmq_direct="yes" if implementation == "cython" else "no") == 1
        # the health metadata counts the same
        health = server.call(HealthCheckRequest("h"))
        assert health.metadata["requests"] == str(sum(sent.values()) + 1)
        assert health.metadata["spawned"] == "1" and health.metadata["decode_errors"] == "2"
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(url.removesuffix("/metrics") + "/other", timeout=10)
        assert error.value.code == 404
    finally:
        assert server.close() == 0


def _version() -> str:
    import descartes_fast
    return descartes_fast.__version__


def test_session_metrics_through_the_endpoint() -> None:
    metrics = Metrics()
    url = metrics.serve("127.0.0.1", 0)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url)
        metrics.restarted("claude")
        metrics.restarted("claude")
        metrics.restarted("codex")
        metrics.session_usage("claude", 100, 20, 50, 0.25)
        metrics.session_usage("claude", 1, 2, 0, 0.5)
        with pytest.raises(ValueError, match="deltas of 0 or more"):
            metrics.session_usage("claude", 5, -1, 0, 1.0)  # nothing of it is added
        metrics.request("control_command", "ok", 0.0002)
        metrics.refused("spawn_request")
        samples = scrape(url)
        assert value(samples, "descartes_fast_restarts_total", backend="claude") == 2
        assert value(samples, "descartes_fast_restarts_total", backend="codex") == 1
        tokens = {dict(labels)["kind"]: v for (name, labels), v in samples.items()
                  if name == "descartes_fast_tokens_total" and dict(labels)["backend"] == "claude"}
        assert tokens == {"input": 101, "output": 22, "cached_input": 50}
        assert value(samples, "descartes_fast_cost_usd_total", backend="claude") == pytest.approx(0.75)
        assert value(samples, "descartes_fast_requests_total", type="control_command", result="ok") == 1
        assert value(samples, "descartes_fast_requests_total", type="spawn_request", result="refused") == 1
        assert value(samples, "descartes_fast_request_seconds_bucket", type="control_command", le="0.0001") == 0
        assert value(samples, "descartes_fast_request_seconds_bucket", type="control_command", le="0.00025") == 1
        assert value(samples, "descartes_fast_request_seconds_bucket", type="control_command", le="5e-05") == 0
        assert not any(name.startswith("descartes_fast_agents") for name, _ in samples)  # no server watched
        assert not any(name.startswith("python_") or name.startswith("process_") for name, _ in samples)
    finally:
        metrics.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    metrics = Metrics()
    try:
        url = metrics.serve("::1", 0)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        assert re.fullmatch(r"http://\[::1\]:\d+/metrics", url)
        metrics.restarted("gemini")
        assert value(scrape(url), "descartes_fast_restarts_total", backend="gemini") == 1
    finally:
        metrics.close()


def _resolve(*argv: str) -> ServerConfig:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return settings.resolve(parser.parse_args(list(argv)))[0]


def test_metrics_setting_from_file_environment_and_flag(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DESCARTES_FAST_METRICS", raising=False)
    monkeypatch.delenv("DESCARTES_FAST_CONFIG", raising=False)
    assert _resolve().metrics is None
    path = tmp_path / "s.toml"
    path.write_text('[server]\nmetrics = "127.0.0.1:9100"\n')
    assert _resolve("--config", str(path)).metrics == "127.0.0.1:9100"
    monkeypatch.setenv("DESCARTES_FAST_METRICS", "[::1]:9200")
    assert _resolve("--config", str(path)).metrics == "[::1]:9200"
    assert _resolve("--config", str(path), "--metrics", "none").metrics is None
    path.write_text('[server]\nmetrics = 9100\n')
    with pytest.raises(settings.SettingsError, match=re.escape("[server] metrics=9100: give HOST:PORT")):
        _resolve("--config", str(path))


def _serve(tmp_path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "descartes_fast", "serve", "--bind", f"ipc://{tmp_path}/r",
                           "--pub", "none", "--state-dir", str(tmp_path / "state"), *flags],
                          env=server_env("python"), capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("address,text", [
    ("9100", "give HOST:PORT, such as 127.0.0.1:9100"),
    ("::1:9100", "an IPv6 address goes in brackets, as in [::1]:9100"),
    ("127.0.0.1:65536", "give HOST:PORT"),
    ("[::1]9100", "give HOST:PORT"),
])
def test_a_bad_address_is_a_settings_error(tmp_path, address, text) -> None:
    proc = _serve(tmp_path, "--metrics", address)
    assert proc.returncode == 2, proc.stderr
    assert f"error: --metrics='{address}': {text}" in proc.stderr


def test_a_busy_port_is_a_startup_error(tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _serve(tmp_path, "--metrics", f"127.0.0.1:{port}")
    assert proc.returncode == 1, proc.stderr
    assert f"error: cannot serve metrics on 127.0.0.1:{port}: Address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("flags,imported", [((), False), (("--metrics", "127.0.0.1:0"), True)])
def test_prometheus_client_is_imported_only_with_metrics(tmp_path, flags, imported) -> None:
    log = tmp_path / "importtime.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "-P", "-m", "descartes_fast", "serve",
                                 "--bind", f"ipc://{tmp_path}/r", "--pub", "none", "--state-dir",
                                 str(tmp_path / "state"), *flags], env=server_env("python"), stderr=stderr)
    ctx = zmq.Context()
    try:
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.setsockopt(zmq.RCVTIMEO, 15000)
        req.connect(f"ipc://{tmp_path}/r")
        req.send(codec.encode(HealthCheckRequest("up")))  # serving: everything it imports at start is imported
        assert codec.decode(req.recv()).healthy
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        ctx.destroy(linger=0)
    modules = re.findall(r"^import time:.*\|\s*(\S+)$", log.read_text(), flags=re.M)
    assert "descartes_fast.server.agent_server" in modules  # (the log is what it seems)
    assert ("prometheus_client" in modules) is imported
    assert ("descartes_fast.server.metrics" in modules) is imported
