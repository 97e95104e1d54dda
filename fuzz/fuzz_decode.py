"""Atheris harness for the MessagePack decoder, both twins.

Usage, from the repository root after ``pip install -e '.[fuzz]'``::

    python fuzz/fuzz_decode.py                                 # until a crash (corpus in a temp dir)
    python fuzz/fuzz_decode.py -max_total_time=3600 corpus/decode
    python fuzz/fuzz_decode.py -runs=1 crash-0123abcd...       # replay one input
    python fuzz/fuzz_decode.py -help=1                         # libFuzzer's flags

Each input is decoded by the pure-Python twin and, when it is built, by the compiled one.
A crash (libFuzzer writes the input to ``crash-<sha1>``, in the current directory or
under ``-artifact_prefix=``) is any of:

* an exception other than :class:`~descartes_fast.wire.errors.ProtocolError` from ``decode``;
* an accepted input whose message does not round-trip: ``encode`` fails, the re-encoded
  bytes decode to a different message, or ``encode(decode(encode(m))) != encode(m)``;
* the twins disagreeing: not the same message, or not the same exception type and text;
* a hang or a leak, as libFuzzer sees them (``-timeout=``, ``-rss_limit_mb=``).

When the first corpus directory is given (or, with none, in a temporary one) it is seeded
with the golden vectors (compact and named forms), and a dictionary of the wire's words
(type tags, field names, enum values, big length headers) is passed unless ``-dict=`` is.
Coverage guidance comes from the pure twin, which atheris instruments; the compiled twin is
not built for libFuzzer and only gives its verdict.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from descartes_fast.wire import layout as L
from descartes_fast.wire.codec import Implementation, get_implementation
from descartes_fast.wire.constants import MAX_DEPTH
from descartes_fast.wire.errors import ProtocolError
from descartes_fast.wire.schema import Message

GOLDEN_PATH = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden-vectors.json"


def twins() -> list[Implementation]:
    """The pure twin, and the compiled one when it is importable."""
    out = [get_implementation("python")]
    try:
        out.insert(0, get_implementation("cython"))
    except ImportError:
        print("fuzz: compiled twin not available; fuzzing the pure twin only", file=sys.stderr)
    return out


TWINS = twins()


def golden_payloads() -> list[bytes]:
    """The golden vectors' bytes, compact and named form (none if the file is missing)."""
    try:
        vectors = json.loads(GOLDEN_PATH.read_text())
    except OSError:
        print(f"fuzz: no golden vectors at {GOLDEN_PATH}", file=sys.stderr)
        return []
    return [bytes.fromhex(v[form]) for v in vectors for form in ("compact_hex", "named_hex")]


def _deep_payload(depth: int) -> bytes:
    """A ControlCommand whose JSON payload nests *depth* arrays (around MAX_DEPTH)."""
    return (b"\x95" + msgpack.packb("control_command") + msgpack.packb("r") + msgpack.packb(bytes(16))
            + msgpack.packb("stop") + b"\x91" * depth + b"\xc0")


def seeds() -> list[bytes]:
    return golden_payloads() + [_deep_payload(MAX_DEPTH - 2), _deep_payload(MAX_DEPTH + 1)]


def _verdict(impl: Implementation, data: bytes) -> tuple:
    try:
        msg = impl.decode(data)
    except ProtocolError as exc:
        return ("err", type(exc), str(exc))
    # any other exception propagates: a crash
    if not isinstance(msg, Message):
        raise TypeError(f"{impl.name}: decode returned {type(msg).__name__}")
    again = impl.encode(msg)
    back = impl.decode(again)
    if type(back) is not type(msg) or back != msg:
        raise AssertionError(f"{impl.name}: round trip changed the message:\n  {msg!r}\n  {back!r}")
    if impl.encode(back) != again:
        raise AssertionError(f"{impl.name}: encode(decode(encode(m))) != encode(m) for {msg!r}")
    return ("ok", msg)


def check(data: bytes) -> None:
    """Raise if the twins do anything but agree on a message that round-trips, or a ProtocolError."""
    verdicts = [_verdict(impl, data) for impl in TWINS]
    if len(verdicts) == 2:
        c, p = verdicts
        same = (c[0] == p[0] and (type(c[1]) is type(p[1]) and c[1] == p[1] and repr(c[1]) == repr(p[1])
                                  if c[0] == "ok" else c[1] is p[1] and c[2] == p[2]))
        if not same:
            raise AssertionError(f"twins differ on {data.hex()}:\n  compiled: {c}\n  pure:     {p}")


# -- libFuzzer plumbing (shared with fuzz_frames.py) ----------------------------------------


def dictionary_tokens() -> list[bytes]:
    """The wire's words, msgpack-encoded, and headers that declare big lengths."""
    words = {"type", "secs_since_epoch", "nanos_since_epoch"}
    words |= {s.tag for s in L.MESSAGES} | {f.name for s in L.STRUCTS for f in s.fields}
    words |= {e.value for cls in L.ENUMS for e in cls}
    tokens = [msgpack.packb(w) for w in sorted(words)]
    tokens += [b"\xc4\x10", b"\xdc\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xde\xff\xff",
               b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
               b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff", b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00"]
    return tokens


def _dict_line(token: bytes) -> str:
    body = "".join(chr(b) if 0x20 <= b < 0x7f and b not in b'"\\' else f"\\x{b:02x}" for b in token)
    return f'"{body}"\n'


def prepare_argv(argv: list[str], name: str, seed_inputs: list[bytes]) -> list[str]:
    """libFuzzer's argv with a seeded corpus directory and a dictionary added where missing."""
    argv = list(argv)
    positional = [a for a in argv[1:] if not a.startswith("-")]
    if any(os.path.isfile(a) for a in positional):
        return argv  # replaying inputs: leave everything as given
    if not positional:
        corpus = tempfile.mkdtemp(prefix=f"descartes-{name}-")
        print(f"fuzz: corpus in {corpus} (pass a directory to keep it)", file=sys.stderr)
        argv.append(corpus)
        positional = [corpus]
    first = Path(positional[0])
    first.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seed_inputs):
        seed = first / f"seed-{i:03d}"
        if not seed.exists():
            seed.write_bytes(data)
    if not any(a.startswith("-dict=") for a in argv):
        fd, path = tempfile.mkstemp(prefix=f"descartes-{name}-", suffix=".dict")
        with os.fdopen(fd, "w") as out:
            out.writelines(_dict_line(t) for t in dictionary_tokens())
        argv.insert(1, f"-dict={path}")
    return argv


def run(name: str, check_fn: Callable[[bytes], Any], seed_inputs: list[bytes]) -> None:
    import atheris  # only here: the test suite imports check() without atheris installed

    for data in seed_inputs:  # fail fast (and readably) if a seed already crashes
        check_fn(data)
    atheris.instrument_all()
    atheris.Setup(prepare_argv(sys.argv, name, seed_inputs), check_fn)
    atheris.Fuzz()


if __name__ == "__main__":
    run("decode", check, seeds())
