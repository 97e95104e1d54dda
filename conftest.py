"""Shared by tests/ and bench/: the implementation fixture that runs everything for both twins.

The compiled twin's parameter is marked ``c_extension``; ``--no-c-extensions``
deselects it (for a pure-Python install). Otherwise a compiled twin that cannot be
imported is a test ERROR, never a silent skip.
"""

from __future__ import annotations

import argparse

import pytest

from descartes_fast.codec import Implementation, get_implementation


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--c-extensions", action=argparse.BooleanOptionalAction, default=True,
                     help="also test the compiled twin (default: yes)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--c-extensions"):
        return
    keep = [i for i in items if i.get_closest_marker("c_extension") is None]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


@pytest.fixture(scope="session",
                params=[pytest.param("cython", marks=pytest.mark.c_extension), "python"],
                ids=["c", "py"])
def impl(request: pytest.FixtureRequest) -> Implementation:
    """One twin (codec and frame helpers); every test using it runs for both."""
    return get_implementation(request.param)


@pytest.fixture(scope="session")
def both() -> tuple[Implementation, Implementation]:
    """(compiled, pure), for differential tests."""
    return get_implementation("cython"), get_implementation("python")
