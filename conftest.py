"""Shared by tests/ and bench/: the one list of implementations every twin-dependent test runs for.

``implementation`` is ``"cython"`` or ``"python"``; the compiled one is marked ``c_extension``,
and ``--no-c-extensions`` deselects it (for a pure-Python install). Otherwise a compiled twin
that cannot be imported is a test ERROR, never a silent skip; a server started for ``"cython"``
must run on the compiled twins (``tests/support/server.py`` checks its health metadata).
"""

from __future__ import annotations

import argparse

import pytest

from descartes_fast.wire.codec import Implementation, get_implementation

#: every test that depends on the twins runs once per entry
IMPLEMENTATIONS = [pytest.param("cython", marks=pytest.mark.c_extension, id="c"), pytest.param("python", id="py")]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--c-extensions", action=argparse.BooleanOptionalAction, default=True,
                     help="also test the compiled twin (default: yes)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--c-extensions"):
        return
    keep = [i for i in items if i.get_closest_marker("c_extension") is None]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


@pytest.fixture(scope="session", params=IMPLEMENTATIONS)
def implementation(request: pytest.FixtureRequest) -> str:
    """``"cython"`` or ``"python"``: every test using it runs for both twins."""
    return request.param


@pytest.fixture(scope="session")
def main_implementation(request: pytest.FixtureRequest) -> str:
    """The twins a test that is not about twins runs on: compiled, unless ``--no-c-extensions``."""
    return "cython" if request.config.getoption("--c-extensions") else "python"


@pytest.fixture(scope="session")
def impl(implementation: str) -> Implementation:
    """One twin (codec and frame helpers)."""
    return get_implementation(implementation)


@pytest.fixture(scope="session")
def both() -> tuple[Implementation, Implementation]:
    """(compiled, pure), for differential tests."""
    return get_implementation("cython"), get_implementation("python")
