"""Which twin the package uses, how the environment chooses it, and what the build lists."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import descartes_fast
from descartes_fast import _impl

ROOT = Path(__file__).resolve().parents[1]


def run(code: str, *, clean: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run *code* in a fresh interpreter; *clean* drops the caller's DESCARTES_FAST_* flags."""
    environ = {k: v for k, v in os.environ.items() if not (clean and k.startswith("DESCARTES_FAST_"))}
    environ.update(env)
    return subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code],
                          capture_output=True, text=True, env=environ, cwd=ROOT)


@pytest.mark.c_extension
def test_compiled_twin_really_loaded() -> None:
    if os.environ.get("DESCARTES_FAST_NO_EXTENSIONS", "").strip().lower() in ("1", "true", "yes", "on"):
        pytest.skip("pure build requested")
    assert descartes_fast.IMPLEMENTATION == "cython"
    from descartes_fast import codec
    from descartes_fast.wire import frames
    assert codec.encode.__module__ == "descartes_fast.wire._codec_c"
    assert frames.split_request.__module__ == "descartes_fast.wire._frames_c"


_BUILT = pytest.mark.c_extension  # these expect the compiled twin to be installed


@pytest.mark.parametrize("value,expected", [
    ("1", "python"), ("yes", "python"), pytest.param("0", "cython", marks=_BUILT),
    pytest.param("", "cython", marks=_BUILT), pytest.param("off", "cython", marks=_BUILT)])
def test_no_extensions_flag(value, expected) -> None:
    proc = run("import descartes_fast as d; print(d.IMPLEMENTATION)", DESCARTES_FAST_NO_EXTENSIONS=value)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_flags_are_parsed_strictly() -> None:
    proc = run("import descartes_fast", DESCARTES_FAST_NO_EXTENSIONS="maybe")
    assert proc.returncode != 0 and "use 1/0, true/false" in proc.stderr
    proc = run("import descartes_fast", DESCARTES_FAST_NO_EXTENSIONS="1", DESCARTES_FAST_REQUIRE_EXTENSIONS="1")
    assert proc.returncode != 0 and "both set" in proc.stderr


def _setup_namespace(upto: str) -> dict:
    """Run setup.py up to *upto* (its helpers and tables, without calling setup())."""
    namespace: dict = {"__file__": str(ROOT / "setup.py")}
    source = (ROOT / "setup.py").read_text()
    exec(compile(source.split(upto)[0], "setup.py", "exec"), namespace)
    return namespace


def test_setup_parses_flags_like_the_package(monkeypatch) -> None:
    flag = _setup_namespace("NO_EXT =")["_flag"]
    for value in ("1", "TRUE", " yes ", "on", "0", "", "False", "no", "off"):
        monkeypatch.setenv("X_FLAG", value)
        assert flag("X_FLAG") == _impl.env_flag("X_FLAG"), value


def test_build_lists_every_compiled_twin() -> None:
    speedups = _setup_namespace("def _banner")["SPEEDUPS"]
    assert set(speedups) == {compiled for _, compiled in _impl.TWINS.values()}
    for source_path in speedups.values():
        assert (ROOT / source_path).is_file()


#: API names whose values describe the twin itself (the compiled dispatcher may call libzmq directly)
_FACTS = {"LIBZMQ_DIRECT", "DIRECT_REASON"}


@pytest.mark.c_extension
@pytest.mark.parametrize("area", sorted(_impl.TWINS))
def test_twins_expose_the_same_api(area) -> None:
    pure, compiled = _impl.load(area, "python"), _impl.load(area, "cython")
    def params(fn) -> list[str]:
        return list(inspect.signature(fn).parameters)

    for name in _impl.API[area]:
        a, b = getattr(pure, name), getattr(compiled, name)
        if isinstance(a, type):  # a class: the same public methods with the same parameters
            methods = [m for m in vars(a) if not m.startswith("_") and callable(getattr(a, m))]
            assert methods, name
            for m in methods:
                assert params(getattr(a, m)) == params(getattr(b, m)), f"{name}.{m}"
        elif callable(a):
            assert params(a) == params(b), name
        elif name in _FACTS:
            assert type(a) is type(b), name  # what each twin says about itself
        else:
            assert a == b, name
    assert set(pure.__all__) == set(compiled.__all__) == set(_impl.API[area])


def test_get_implementation_rejects_unknown_names() -> None:
    from descartes_fast.wire.codec import get_implementation
    with pytest.raises(ValueError):
        get_implementation("rust")


def test_import_is_light() -> None:
    proc = run("import sys, descartes_fast, descartes_fast.wire.codec; "
               "print(sorted(m for m in ('zmq.asyncio', 'uvloop', 'asyncio') if m in sys.modules))",
               clean=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    proc = run("import sys, descartes_fast; descartes_fast.AsyncClient; "
               "print(sorted(m for m in ('zmq.asyncio', 'uvloop') if m in sys.modules))", clean=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"  # the client does not need zmq.asyncio or uvloop either


def _git(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode not in (0, 1) or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    return proc


def test_no_generated_c_in_git() -> None:
    tracked = _git("ls-files", "*.c", "*.so", "*.html").stdout.split()
    generated = [f for f in tracked if f.endswith(".c") and (ROOT / f).with_suffix(".pyx").exists()]
    assert not generated and not [f for f in tracked if not f.endswith(".c")]


def test_hand_written_c_is_committed_and_not_ignored() -> None:
    # bench/c/zmq_echo.c was once ignored by a '*.c' rule, so a clone could not build the C echo reference
    assert "bench/c/zmq_echo.c" in _git("ls-files", "bench/c").stdout.split()
    assert _git("check-ignore", "-q", "bench/c/zmq_echo.c").returncode == 1  # 1: not ignored
    assert _git("check-ignore", "-q", "_speedups/wire/_codec_c.c").returncode == 0  # Cython's output is


def test_no_tracked_file_reaches_outside_the_repository() -> None:
    # tests/golden.py once read its vectors from a folder beside the clone, which a user's clone
    # does not have: every path a tracked file names stays inside the repository
    hits = _git("grep", "-n", "-I", "-E", r"(^|[\"' (=])\.\./\.\./|(^|[\"' (=])\.\./[A-Za-z]").stdout.splitlines()
    allowed = ("tests/test_security.py:",  # a key name the CLI must refuse
               "tests/test_cgroups.py:",  # an agent id the cgroups must refuse
               ".ci/run:")  # from inside the unpacked sdist, back to the build folder
    assert [h for h in hits if not h.startswith(allowed)] == []
    vectors = ROOT / "tests" / "data" / "golden-vectors.json"
    assert vectors.is_file() and "tests/data/golden-vectors.json" in _git("ls-files", "tests/data").stdout.split()


@pytest.mark.c_extension
@pytest.mark.parametrize("module", ["descartes_fast.wire._codec_c", "descartes_fast.wire._dispatch_c"])
def test_a_compiled_twin_with_stale_constants_refuses_to_load(module) -> None:
    # the compiled twins get their constants from descartes_fast/wire/constants.py at build time;
    # an edit of that file without a rebuild must fail loudly, not run with the old numbers
    # (with the pure twins selected, importing the package does not load the compiled ones first)
    proc = run(f"import descartes_fast.wire.constants as c; c.MAX_FRAMES = 17; c.K_MAP = 99; import {module}",
               DESCARTES_FAST_NO_EXTENSIONS="1")
    assert proc.returncode != 0
    assert "compiled with other values of K_MAP" in proc.stderr and "rebuild it" in proc.stderr
