"""bench/targets.toml and the PASS / regression logic of `python -m bench` (no timing here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_every_target_is_well_formed() -> None:
    report = _load("report")
    ids = [f"{g}.{n}" for g, names in report.TARGETS.items() for n in names]
    assert len(ids) == 25 and len(set(ids)) == 25
    for names in report.TARGETS.values():
        for spec in names.values():
            assert spec["op"] in (">=", "<=") and spec["ratio"] > 0 and spec["what"]
            assert spec["issue"] in (2, 3, 4, 12, 13, 14, 16, 17)
    # every target is measured by a script python -m bench runs
    main = (BENCH / "__main__.py").read_text()
    scripts = {"codec": "codec_ratios.py", "server": "server_bench.py", "client": "client_bench.py",
               "output": "output_bench.py", "live": "live_bench.py", "abuse": "abuse_bench.py"}
    for group in report.TARGETS:
        source = (BENCH / scripts[group]).read_text()
        assert f'"{scripts[group]}"' in main
        assert f'Row("{group}.' in source or f'Row(f"{group}.' in source


def test_rows_judge_against_the_file() -> None:
    report = _load("report")
    assert report.Row("server.throughput", "x", 150, 100, "ref", 1.5).ok       # >= 1.5, met exactly
    assert not report.Row("server.throughput", "x", 149, 100, "ref", 1.49).ok
    assert report.Row("client.p50", "x", 13, 10, "ref", 1.3).ok                 # <= 1.3
    assert not report.Row("client.p50", "x", 14, 10, "ref", 1.4).ok
    assert report.Row("codec.spawn_encode", "x", 1, 1, "ref", 0.9).target == "<= 1.0"


def test_regressions_are_judged_in_the_target_direction() -> None:
    runner = _load("__main__")
    assert runner._better("server.throughput", 1.4, 2.0) < -runner.REGRESSION    # higher is better: slower
    assert runner._better("client.p50", 1.2, 1.0) < -runner.REGRESSION           # lower is better: slower
    assert runner._better("client.p50", 0.9, 1.0) > runner.REGRESSION


def test_c_echo_says_why_it_was_not_built(tmp_path, monkeypatch) -> None:
    server_bench = _load("server_bench")
    monkeypatch.setattr(server_bench.shutil, "which", lambda name: None)
    assert server_bench.c_echo(tmp_path) == (None, "no C compiler")
    monkeypatch.setattr(server_bench.shutil, "which", lambda name: "/bin/false")  # a "compiler" that fails
    proc, why = server_bench.c_echo(tmp_path)
    assert proc is None and "apt-get install libzmq3-dev" in why
