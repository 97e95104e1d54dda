"""The rmp-serde golden vectors (``tests/data/golden-vectors.json``: bytes rmp-serde produced) as message objects."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from descartes_fast.wire import layout as L

VECTORS_PATH = Path(__file__).resolve().parents[1] / "data" / "golden-vectors.json"


def _convert(value: Any, t: L.TypeSpec) -> Any:
    if value is None:
        return None
    k = t.kind
    if k == L.K_UUID:
        return uuid.UUID(value)
    if k == L.K_TIME:
        return value["secs_since_epoch"] * 1_000_000_000 + value["nanos_since_epoch"]
    if k == L.K_ENUM:
        return t.ref(value)
    if k == L.K_STRUCT:
        return from_json(L.BY_CLASS[t.ref], value)
    if k == L.K_BYTES:
        return bytes(value)
    if k == L.K_LIST:
        return [_convert(v, t.elem) for v in value]
    if k == L.K_MAP:
        return {key: _convert(v, t.elem) for key, v in value.items()}
    return value


def from_json(spec: L.StructSpec, value: dict[str, Any]) -> Any:
    """Build a schema object from the serde_json view of it used in the vectors."""
    return spec.cls(**{f.name: _convert(value[f.name], f.type) for f in spec.fields})


def load() -> list[dict[str, Any]]:
    """Each vector with its message object added under ``"message"``."""
    vectors = json.loads(VECTORS_PATH.read_text())
    for v in vectors:
        v["message"] = from_json(L.BY_TAG[v["tag"]], v["value"])
    return vectors
