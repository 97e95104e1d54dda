"""Byte-exact compatibility with rmp-serde: every golden vector, both twins, both directions."""

from __future__ import annotations

import uuid

import pytest
from support.golden import load

from descartes_fast.wire.schema import (
    AgentConfig,
    AgentInfo,
    AgentStatus,
    AttachInfo,
    BatchAgentResult,
    BatchControlResponse,
    CommandResponse,
    ControlCommand,
    ControlCommandType,
    HealthCheckRequest,
    HealthCheckResponse,
    LogStreamMessage,
    LogStreamType,
    OutputQueryRequest,
    PauseMode,
    SpawnRequest,
    SpawnResponse,
    StatusUpdate,
    StatusUpdateType,
    ZmqOutputStream,
)

VECTORS = load()
AGENT = uuid.UUID("6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b")
T = 1_700_000_000 * 10**9 + 5  # 1700000000 s + 5 ns

# docs/protocol.md §2.6: produced by rmp_serde::to_vec on the Rust types
REFERENCE = [
    (HealthCheckRequest("test-123"),
     "92b46865616c74685f636865636b5f72657175657374a8746573742d313233"),
    (ControlCommand("req-1", AGENT, ControlCommandType.PAUSE, None),
     "95af636f6e74726f6c5f636f6d6d616e64a57265712d31c4106f1c2a3b4d5e4f608a7b9c0d1e2f3a4ba57061757365c0"),
    (CommandResponse("req-1", AGENT, True, AgentStatus.PAUSED, {"mode": "cooperative", "paused": True}, None),
     "97b0636f6d6d616e645f726573706f6e7365a57265712d31c4106f1c2a3b4d5e4f608a7b9c0d1e2f3a4bc3a670617573656482a46d6f6465ab636f6f7065726174697665a6706175736564c3c0"),
    (SpawnRequest("r", AgentConfig(name="a", model_backend="claude", task="t"), 30, None),
     "95ad737061776e5f72657175657374a17299a161a6636c61756465a174c0c080c0c0c01ec0"),
    (LogStreamMessage(AGENT, LogStreamType.STDOUT, b"hi\n", T, 0),
     "96aa6c6f675f73747265616dc4106f1c2a3b4d5e4f608a7b9c0d1e2f3a4ba67374646f75749368690a92ce6553f1000500"),
    (StatusUpdate(AGENT, StatusUpdateType.STATUS_CHANGED, AgentStatus.RUNNING, None, None, timestamp=T),
     "97ad7374617475735f757064617465c4106f1c2a3b4d5e4f608a7b9c0d1e2f3a4bae7374617475735f6368616e676564a772756e6e696e67c0c092ce6553f10005"),
    (SpawnResponse("r", True, AgentInfo(AGENT, "a", AgentStatus.RUNNING, "claude", T, "t", T, PauseMode.FORCED,
                                        AttachInfo("ipc:///x", "k", -1)), None, "s"),
     "96ae737061776e5f726573706f6e7365a172c399c4106f1c2a3b4d5e4f608a7b9c0d1e2f3a4ba161a772756e6e696e67a6636c6175646592ce6553f10005a17492ce6553f10005a6666f7263656493a86970633a2f2f2f78a16bffc0a173"),
    (BatchControlResponse("b", False, [BatchAgentResult(AGENT, False, None, "e")], 0, 1),
     "96b662617463685f636f6e74726f6c5f726573706f6e7365a162c29194c4106f1c2a3b4d5e4f608a7b9c0d1e2f3a4bc2c0a1650001"),
    (OutputQueryRequest("o", AGENT, ZmqOutputStream.BOTH, None, 300, None),
     "97b46f75747075745f71756572795f72657175657374a16fc4106f1c2a3b4d5e4f608a7b9c0d1e2f3a4ba4626f7468c0cd012cc0"),
    (HealthCheckResponse("h", True, "1.0.0", 70000, 0, None),
     "97b56865616c74685f636865636b5f726573706f6e7365a168c3a5312e302e30ce0001117000c0"),
]
PUB_TOPIC_HEX = "36663163326133622d346435652d346636302d386137622d39633064316532663361346200"


def test_vectors_cover_every_rust_message_type() -> None:
    from descartes_fast.wire.schema import RUST_MESSAGE_TYPES
    assert {v["tag"] for v in VECTORS} == {cls.TAG for cls in RUST_MESSAGE_TYPES}
    assert len(RUST_MESSAGE_TYPES) == 15


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_golden_vector(impl, vector) -> None:
    message = vector["message"]
    assert impl.encode(message).hex() == vector["compact_hex"]
    for form in ("compact_hex", "named_hex"):
        decoded = impl.decode(bytes.fromhex(vector[form]))
        assert decoded == message
        assert type(decoded) is type(message)
        assert impl.encode(decoded).hex() == vector["compact_hex"]


@pytest.mark.parametrize("message,hex_", REFERENCE, ids=[type(m).__name__ for m, _ in REFERENCE])
def test_reference_encoding(impl, message, hex_) -> None:
    assert impl.encode(message).hex() == hex_
    assert impl.decode(bytes.fromhex(hex_)) == message


def test_pub_frame_layout(impl) -> None:
    message, hex_ = REFERENCE[4]
    frame = impl.pub_frame(str(AGENT), impl.encode(message))
    assert frame.hex() == PUB_TOPIC_HEX + hex_
    topic, payload = impl.parse_pub_frame(frame)
    assert topic == str(AGENT).encode()
    assert impl.decode(payload) == message


def test_timestamps_round_trip_to_the_nanosecond(impl) -> None:
    for ns in (0, 1, 999_999_999, 1_000_000_000, T, 1_763_000_000_123_456_789,
               (2**63 - 1) * 10**9 + 999_999_999):
        message = StatusUpdate(AGENT, StatusUpdateType.HEARTBEAT, timestamp=ns)
        assert impl.decode(impl.encode(message)).timestamp == ns
