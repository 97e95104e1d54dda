"""Codec benchmarks: our two twins against msgpack and msgspec on the same content.

Every message+operation is one pytest-benchmark group, so one table compares:

* ``*_descartes_fast[c-...]`` / ``[py-...]``: ``impl.encode(msg)`` / ``impl.decode(wire)``
  with the compiled and the pure twin (``impl`` fixture from the root conftest);
* ``*_msgpack_list``: ``msgpack.packb`` of the compact list form / ``msgpack.unpackb`` of the
  compact bytes (untyped: lists, bytes, str; no UUID, enum or timestamp objects);
* ``*_msgpack_dict``: the same for the named (map) form, ``rmp_serde::to_vec_named`` layout;
* ``*_msgspec_array_like``: a reused ``msgspec.msgpack.Encoder`` on a ``Struct(array_like=True)``
  / a ``msgspec.msgpack.Decoder`` of the tagged union of the reference Structs (typed).

Correctness is checked once per test before timing: our bytes equal the wire bytes,
msgspec's array_like bytes equal the compiled encoder's bytes (exactly, for every message),
and every decoder returns the expected content.

Run: ``pytest bench --benchmark-only --benchmark-group-by=group`` (see bench/README.md).
"""

from __future__ import annotations

import msgpack
import pytest
from messages import CASE_IDS, CASES, msgspec_decoder, msgspec_encoder

from descartes_fast.wire.codec import get_implementation

MSGSPEC_ENC = msgspec_encoder()
MSGSPEC_DEC = msgspec_decoder()  # tagged union of every reference Struct

case_param = pytest.mark.parametrize("case_id", CASE_IDS)


@pytest.fixture(scope="session")
def reference_bytes(request: pytest.FixtureRequest) -> dict[str, bytes]:
    """The compiled encoder's bytes per case (the wire bytes if run with --no-c-extensions)."""
    if not request.config.getoption("--c-extensions"):
        return {k: c.compact for k, c in CASES.items()}
    compiled = get_implementation("cython")
    return {k: compiled.encode(c.msg) for k, c in CASES.items()}


# -- encode ---------------------------------------------------------------------------


@case_param
def test_encode_descartes_fast(benchmark, impl, case_id):
    case = CASES[case_id]
    benchmark.group = f"encode {case_id}"
    assert impl.encode(case.msg) == case.compact
    benchmark(impl.encode, case.msg)


@case_param
def test_encode_msgpack_list(benchmark, case_id):
    case = CASES[case_id]
    benchmark.group = f"encode {case_id}"
    assert msgpack.packb(case.list_form) == case.compact
    benchmark(msgpack.packb, case.list_form)


@case_param
def test_encode_msgpack_dict(benchmark, case_id):
    case = CASES[case_id]
    benchmark.group = f"encode {case_id}"
    assert msgpack.packb(case.dict_form) == case.named
    benchmark(msgpack.packb, case.dict_form)


@case_param
def test_encode_msgspec_array_like(benchmark, case_id, reference_bytes):
    case = CASES[case_id]
    benchmark.group = f"encode {case_id}"
    # Exact equality holds for every case: UUIDs via uuid_format="bytes" (bin8),
    # timestamps as tuple[int, int], LogStream data as list[int], floats are float64 on
    # both sides, and dict/JSON key order is insertion order on both sides.
    assert MSGSPEC_ENC.encode(case.struct) == reference_bytes[case_id]
    benchmark(MSGSPEC_ENC.encode, case.struct)


# -- decode ---------------------------------------------------------------------------


@case_param
def test_decode_descartes_fast(benchmark, impl, case_id):
    case = CASES[case_id]
    benchmark.group = f"decode {case_id}"
    assert impl.decode(case.compact) == case.msg
    benchmark(impl.decode, case.compact)


@case_param
def test_decode_msgpack_list(benchmark, case_id):
    case = CASES[case_id]
    benchmark.group = f"decode {case_id}"
    assert msgpack.unpackb(case.compact) == case.list_form
    benchmark(msgpack.unpackb, case.compact)


@case_param
def test_decode_msgpack_dict(benchmark, case_id):
    case = CASES[case_id]
    benchmark.group = f"decode {case_id}"
    assert msgpack.unpackb(case.named) == case.dict_form
    benchmark(msgpack.unpackb, case.named)


@case_param
def test_decode_msgspec_array_like(benchmark, case_id):
    case = CASES[case_id]
    benchmark.group = f"decode {case_id}"
    assert MSGSPEC_DEC.decode(case.compact) == case.struct
    benchmark(MSGSPEC_DEC.decode, case.compact)
