"""How the twins are compared: an outcome is a value or an exception type and text, and the two
twins must give the same outcome for the same input (only ProtocolError may escape bad input)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from descartes_fast.wire.errors import ProtocolError

__all__ = ["outcome", "same_outcome", "same_value", "safe_repr", "show", "assert_parity", "nodes"]


def outcome(fn: Callable[[Any], Any], arg: Any) -> tuple:
    """("ok", value) or ("err", exception type, str(exception))."""
    try:
        return ("ok", fn(arg))
    except Exception as exc:
        return ("err", type(exc), str(exc))


def same_value(a: Any, b: Any) -> bool:
    # == alone would let 1 == 1.0 == True and dict order differences through
    return type(a) is type(b) and a == b and repr(a) == repr(b)


def same_outcome(a: tuple, b: tuple) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "ok":
        return same_value(a[1], b[1])
    return a[1] is b[1] and a[2] == b[2]


def safe_repr(v: Any) -> str:
    """repr() that survives objects whose repr() raises (a corrupted UUID, say)."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        inner = ", ".join(f"{f.name}={safe_repr(getattr(v, f.name, '<unset>'))}"
                          for f in dataclasses.fields(v))
        return f"{type(v).__name__}({inner})"
    try:
        return repr(v)
    except Exception:
        return object.__repr__(v)


def show(o: tuple) -> str:
    if o[0] == "ok":
        return f"ok {o[1]!r}"
    return f"raised {o[1].__module__}.{o[1].__qualname__}: {o[2]}"


def assert_parity(c: tuple, p: tuple, what: str, arg: Any, protocol_only: bool = True) -> None:
    """Both twins gave the same verdict, and only ProtocolError escaped."""
    assert same_outcome(c, p), (
        f"twins differ on {what} of {safe_repr(arg)}:\n  compiled: {show(c)}\n  pure:     {show(p)}")
    if protocol_only:
        for name, o in (("compiled", c), ("pure", p)):
            if o[0] == "err":
                assert issubclass(o[1], ProtocolError), (
                    f"{name} twin let a non-ProtocolError escape on {what} of {safe_repr(arg)}: {show(o)}")


def nodes(tree: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every node of a msgpack tree (the root is ())."""
    out = [path]
    if isinstance(tree, list):
        for i, e in enumerate(tree):
            out += nodes(e, path + (i,))
    elif isinstance(tree, dict):
        for k, e in tree.items():
            out += nodes(e, path + (k,))
    return out
