"""The commands a user runs: the demo (README command 1), --help, and settings precedence."""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time

import pytest

import descartes_fast
from descartes_fast.cli import build_parser
from descartes_fast.server import settings


def test_demo_runs_the_swarm_on_the_installed_package_and_finishes_quickly(tmp_path) -> None:
    # README command 1 runs in the source tree; every process the demo starts (its server, the
    # server's demo agents) must still import the installed package, never a descartes_fast folder
    # in the working directory (in a source tree that folder has no compiled twins). A decoy
    # package that cannot be imported catches any process that looks there.
    decoy = tmp_path / "descartes_fast"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('imported the descartes_fast in the working directory')\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-P", "-m", "descartes_fast", "demo"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - started < 60
    assert "RuntimeWarning" not in proc.stderr and "working directory" not in proc.stdout + proc.stderr
    out = proc.stdout
    assert f"codec {descartes_fast.IMPLEMENTATION}," in out  # the server runs the twins this package has
    for needle in ("coder paused (cooperative)", "coder resumed", "reviewer killed", "summary",
                   "server stopped (exit status 0)"):
        assert needle in out
    summary = out.split("summary", 1)[1]
    for name, status in (("planner", "completed"), ("reviewer", "terminated"), ("flaky", "failed")):
        assert any(line.split()[:2] == [name, status] for line in summary.splitlines() if line.strip())


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["codec-demo", "--help"], ["serve", "--help"]])
def test_help(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 0
    assert "usage: descartes-fast" in capsys.readouterr().out


def test_server_binary_help() -> None:
    proc = subprocess.run([sys.executable, "-c", "from descartes_fast.cli.serve import server_main; server_main()",
                           "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    for flag in ("--bind", "--pub", "--config", "--server-id", "--max-agents", "--log-level", "DESCARTES_FAST_BIND"):
        assert flag in proc.stdout


def _args(**flags) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    argv = [x for k, v in flags.items() for x in ("--" + k.replace("_", "-"), str(v))]
    return parser.parse_args(argv)


def test_settings_precedence(tmp_path, monkeypatch) -> None:
    for name in ("CONFIG", "MAX_AGENTS", "SERVER_ID", "BIND", "PUB"):
        monkeypatch.delenv(f"DESCARTES_FAST_{name}", raising=False)
    config, level, loop, log_format = settings.resolve(_args())
    assert (config.bind, config.pub, config.max_agents, level, loop, log_format) == (
        "tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556", 100, "INFO", "uvloop", "text")
    path = tmp_path / "s.toml"
    path.write_text('[server]\nmax_agents = 7\nserver_id = "file"\npub = "none"\n'
                    '[backends.x]\ncommand = ["x"]\n')
    monkeypatch.setenv("DESCARTES_FAST_CONFIG", str(path))
    config, *_ = settings.resolve(_args())
    assert (config.max_agents, config.server_id, config.pub) == (7, "file", None)
    assert "x" in config.backends.names()
    monkeypatch.setenv("DESCARTES_FAST_MAX_AGENTS", "8")
    monkeypatch.setenv("DESCARTES_FAST_SERVER_ID", "env")
    config, *_ = settings.resolve(_args())
    assert (config.max_agents, config.server_id) == (8, "env")
    config, *_ = settings.resolve(_args(max_agents=9))
    assert (config.max_agents, config.server_id) == (9, "env")


def test_security_settings_from_file_environment_and_flags(tmp_path, monkeypatch) -> None:
    for name in ("CONFIG", "CURVE_SECRET_KEY", "AUTHORIZED_KEYS", "INSECURE", "RATE_LIMIT"):
        monkeypatch.delenv(f"DESCARTES_FAST_{name}", raising=False)
    config, *_ = settings.resolve(_args())
    assert (config.curve, config.insecure, config.rate_limit, config.request_buffer, config.pub_buffer) == (
        False, False, 100_000.0, 128 << 20, 32 << 20)
    path = tmp_path / "etc" / "s.toml"
    path.parent.mkdir()
    path.write_text('[server]\ncurve_secret_key = "keys/s.key_secret"\nauthorized_keys = "clients"\n'
                    'insecure = true\nrate_limit = 0\n[policy]\nmax_agents_per_client = 2\n')
    config, *_ = settings.resolve(_args(config=path))
    assert config.curve_secret_key == str(tmp_path / "etc" / "keys" / "s.key_secret")  # relative to the file
    assert config.authorized_keys == str(tmp_path / "etc" / "clients")
    assert (config.insecure, config.rate_limit, config.policy.max_agents_per_client) == (True, 0.0, 2)
    monkeypatch.setenv("DESCARTES_FAST_INSECURE", "0")
    monkeypatch.setenv("DESCARTES_FAST_AUTHORIZED_KEYS", "/srv/clients")
    config, *_ = settings.resolve(_args(config=path))
    assert (config.insecure, config.authorized_keys) == (False, "/srv/clients")
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    config, *_ = settings.resolve(parser.parse_args(["--config", str(path), "--insecure"]))
    assert config.insecure


@pytest.mark.parametrize("content,text", [
    ("[server]\ninsecure = 'maybe'\n", "use true or false"),
    ("[server]\nrate_limit = -1\n", "must be 0 or more"),
    ("[policy]\nmemory_mb = -5\n", "[policy] memory_mb must be greater than 0"),
    ("[polcy]\n", "unknown table(s): polcy"),
    ("[server]\nmax_agent = 3\n", "unknown [server] setting"),
    ("[server]\nmax_agents = 0\n", "must be greater than 0"),
    ("[server]\nlog_level = 'loud'\n", "log level"),
    ("[backends.x]\ncommand = []\n", "non-empty list"),
    ("[server\n", "cannot read config file"),
    # a typo in an endpoint used to be reported as "refusing to serve ... without encryption"
    ("[server]\nbind = 'tcp//127.0.0.1:1'\n", "bind='tcp//127.0.0.1:1': not an endpoint: give TRANSPORT://ADDRESS"),
    ("[server]\nbind = 'tcp://127.0.0.1'\n", "not an endpoint"),
    ("[server]\npub = 'ipc://'\n", "pub='ipc://': not an endpoint"),
])
def test_settings_errors(tmp_path, monkeypatch, content, text) -> None:
    monkeypatch.delenv("DESCARTES_FAST_MAX_AGENTS", raising=False)
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(settings.SettingsError, match=re.escape(text)):
        settings.resolve(_args(config=path))


def test_log_format_json_writes_one_object_per_line(tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, "-P", "-m", "descartes_fast", "serve", "--bind", f"ipc://{tmp_path}/r",
                             "--pub", "none", "--state-dir", str(tmp_path / "s"), "--log-format", "json"],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = []
    for line in proc.stderr:  # until it serves (it says where)
        first.append(line)
        if "requests on" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in first + err.splitlines()]  # every line is one object
    assert proc.returncode == 0, err
    assert {"time", "level", "logger", "message", "pid"} <= set(lines[0])
    assert lines[0]["time"].endswith("Z") and lines[-1]["message"] == "stopped"
    assert any(line["logger"] == "descartes_fast.server" and "requests on" in line["message"] for line in lines)
