"""Every error text of the codec and frame twins, written once, and the texts of replies that
both ends must recognise (a server writes them, a client acts on them).

Both twins build their exception messages with these helpers (the compiled twin calls them
on its error paths only), so the two cannot drift apart in wording. The exception *classes*
are in :mod:`descartes_fast.wire.errors`; the field path (``SpawnRequest.config.task: ...``)
is added by the errors themselves.
"""

from __future__ import annotations

from typing import Any, Final

from descartes_fast.wire.constants import MAX_DEPTH, TYPE_NAMES

# -- both directions --


def expected(what: str, got: str) -> str:
    """A value of the wrong type; *got* is a Python type name (encode) or a MessagePack one (decode)."""
    return f"expected {what}, got {got}"


def expected_type(what: str, type_code: int) -> str:
    """A decoded value of MessagePack type *type_code* (``constants.T_*``) where *what* was expected."""
    return expected(what, TYPE_NAMES[type_code])


def int_range(value: int, what: str) -> str:
    return f"integer {value} out of range for {what}"


def too_deep() -> str:
    return f"containers nested deeper than {MAX_DEPTH} levels"


def shown(raw: Any) -> str:
    """How bytes from the wire appear in a text: as a string literal, bad UTF-8 replaced."""
    return repr(str(raw, "utf-8", "replace"))


# -- encoding --

FIELD_NOT_SET: Final = "field is not set"
STR_NOT_UTF8: Final = "str is not encodable as UTF-8"
MEMORYVIEW_NOT_CONTIGUOUS: Final = "memoryview is not contiguous"
UUID_NO_VALUE: Final = "UUID has no valid 128-bit value"


def not_a_message(type_name: str) -> str:
    return expected("a message", type_name)


def before_epoch(ns: int) -> str:
    return f"timestamp {ns} is before 1970"


def time_range(ns: int) -> str:
    return f"timestamp {ns} out of range"


def not_enum_value(value: str, enum_name: str) -> str:
    return f"{value!r} is not a {enum_name} value"


def json_int_range(value: int) -> str:
    return int_range(value, "a JSON number")


def json_float(value: float) -> str:
    return f"JSON numbers cannot be {value!r}"


# -- decoding --

EMPTY: Final = "empty input"
TRUNCATED: Final = "truncated input"
RESERVED_BYTE: Final = "invalid MessagePack byte 0xc1"
NO_TAG: Final = "missing message type tag"
DUPLICATE_TAG: Final = "duplicate field 'type'"
DUPLICATE_FIELD: Final = "duplicate field"
MISSING_FIELD: Final = "missing field"
BAD_UTF8: Final = "invalid UTF-8 in str"
NOT_CONTIGUOUS: Final = "decode() needs a contiguous buffer"


def not_bytes_like(type_name: str) -> str:
    return f"decode() needs a bytes-like object (bytes, bytearray, memoryview, zmq.Frame), not {type_name}"


def unknown_tag(raw: Any) -> str:
    return f"unknown message type {shown(raw)}"


def unknown_tag_index(index: int) -> str:
    return f"unknown message type index {index}"


def arity(n: int, lo: int, hi: int) -> str:
    want = str(hi) if lo == hi else f"{lo} to {hi}"
    return f"array of {n} elements, expected {want}"


def uuid_bin_length(n: int) -> str:
    return f"UUID bin must be 16 bytes, got {n}"


def bad_uuid_string(text: str) -> str:
    return f"invalid UUID string {text!r}"


def unknown_enum(enum_name: str, raw: Any) -> str:
    return f"unknown {enum_name} value {shown(raw)}"


def enum_map_entries(enum_name: str, count: int) -> str:
    return f"expected {enum_name} as a one-entry map, got {count} entries"


def enum_variant_name(enum_name: str, type_code: int) -> str:
    return expected_type(f"{enum_name} variant name", type_code)


def unit_variant(type_code: int) -> str:
    return expected_type("nil for unit variant", type_code)


def unknown_field(raw: Any) -> str:
    return f"unknown field {shown(raw)}"


def duplicate_named_field(name: str) -> str:
    return f"duplicate field {name!r}"


def missing_named_field(name: str) -> str:
    return f"missing field {name!r}"


def time_secs_nanos_range(secs: int, nanos: int) -> str:
    return f"timestamp of {secs} s + {nanos} ns is out of range"


# -- frames --

NO_PAYLOAD: Final = "no payload after the empty delimiter frame"
TOPIC_NUL: Final = "topic contains a NUL byte"
NO_SEPARATOR: Final = "PUB frame has no topic separator (NUL byte)"


def frame_count(n: int) -> str:
    return f"expected a routing id and a payload, got {n} frame(s)"


def topic_type(type_name: str) -> str:
    return f"topic must be str or bytes, not {type_name}"


def payload_type(type_name: str) -> str:
    return f"payload must be bytes-like, not {type_name}"


# -- replies a server gives in place of one it could not send (docs/protocol.md §6.1) --

#: how an error reply in place of a reply over the message limit begins (clients page on it)
REPLY_TOO_LARGE: Final = "reply too large"


def reply_too_large(size: int, limit: int, how: str) -> str:
    """The error text in place of a reply of *size* bytes; *how* says how to ask for less."""
    return f"{REPLY_TOO_LARGE}: {size:,} bytes encoded, over the {limit:,}-byte message limit; {how}"


def handler_failed(request: str, exc: BaseException) -> str:
    """The error text when the server failed while answering *request* (a bug: it is logged)."""
    return f"internal error while answering {request}: {type(exc).__name__}: {exc}"


#: how the reply to a request over a rate limit begins (clients wait and retry on it)
RATE_LIMITED: Final = "rate limited"


def rate_limited(identity: str, rate: float, wait_ms: int) -> str:
    """The error text for a request of *identity* over *rate* requests per second."""
    return f"{RATE_LIMITED}: client {identity} is over {rate:g} requests per second; retry after {wait_ms} ms"


#: how the reply to a request refused for the bytes its client already holds in the server begins
BUSY: Final = "busy"


def busy(identity: str, held: int, limit: int, wait_ms: int) -> str:
    """The error text for a request of *identity*, whose earlier requests hold *held* bytes."""
    return (f"{BUSY}: client {identity} has {held:,} bytes of requests and replies still in the server, "
            f"at its limit of {limit:,} (--request-buffer); retry after {wait_ms} ms")


def retry_after(text: str) -> float | None:
    """Seconds a :func:`rate_limited` or :func:`busy` text asks to wait; None for any other text."""
    if not text.startswith((RATE_LIMITED + ":", BUSY + ":")):
        return None
    _, sep, rest = text.rpartition("; retry after ")
    ms = rest.removesuffix(" ms")
    return int(ms) / 1000 if sep and ms.isdigit() else 0.01
