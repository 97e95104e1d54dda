"""When an agent that ended is started again: its restart policy (as supervisor's ``autorestart``
and ``startretries``).

``never`` (the default), ``on-failure`` (it exited with a status other than 0, or by a signal)
or ``always`` (any end the user did not ask for: not ``stop``, ``kill`` or the end of a session).
At most ``max_restarts`` times; the n-th restart waits ``backoff_secs * 2**(n-1)`` seconds, at
most ``backoff_max_secs``. An agent that a limit ended (wall clock, memory, CPU) is not restarted.

Set per backend (``restart``, ``max_restarts``, ``restart_backoff`` in its ``[backends.NAME]``
table) and per spawn (the same keys in the spawn request's metadata, which win).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

__all__ = ["KEYS", "MODES", "NO_RESTART", "RestartPolicy"]

Mode = Literal["never", "on-failure", "always"]
MODES: Final = ("never", "on-failure", "always")
#: the keys of a backend table or spawn metadata that set it
KEYS: Final = ("restart", "max_restarts", "restart_backoff")
_MAX_RESTARTS: Final = 1000
_BACKOFF_MAX: Final = 3600.0


@dataclass(frozen=True)
class RestartPolicy:
    mode: Mode = "never"
    max_restarts: int = 3
    backoff_secs: float = 1.0
    backoff_max_secs: float = 60.0

    def delay(self, restart: int) -> float:
        """Seconds to wait before restart number *restart* (1 for the first)."""
        return min(self.backoff_secs * 2.0 ** (restart - 1), self.backoff_max_secs)

    def wants(self, failed: bool, restarts_done: int) -> bool:
        """Whether an agent that ended on its own (*failed* or not) is started again."""
        if restarts_done >= self.max_restarts or self.mode == "never":
            return False
        return failed or self.mode == "always"

    def with_values(self, values: Mapping[str, Any], where: str) -> RestartPolicy:
        """This policy with the ``restart``/``max_restarts``/``restart_backoff`` of *values* (TOML
        values or the strings of spawn metadata); ValueError names *where* and what is wrong."""
        changes: dict[str, Any] = {}
        if "restart" in values:
            mode = values["restart"]
            if mode not in MODES:
                raise ValueError(f"{where}: restart must be one of {', '.join(MODES)}, not {mode!r}")
            changes["mode"] = cast(Mode, mode)
        if "max_restarts" in values:
            changes["max_restarts"] = _number(values["max_restarts"], int, 0, _MAX_RESTARTS, "max_restarts", where)
        if "restart_backoff" in values:
            changes["backoff_secs"] = _number(values["restart_backoff"], float, 0, _BACKOFF_MAX,
                                              "restart_backoff", where)
        return dataclasses.replace(self, **changes) if changes else self

    def as_dict(self) -> dict[str, Any]:
        return {"restart": self.mode, "max_restarts": self.max_restarts, "restart_backoff": self.backoff_secs}


def _number(value: Any, kind: type, low: float, high: float, name: str, where: str) -> Any:
    text = f"{where}: {name} must be {'a whole number' if kind is int else 'a number of seconds'} " \
           f"from {low:g} to {high:g}, not {value!r}"
    if isinstance(value, bool):
        raise ValueError(text)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(text) from None
    if kind is int and isinstance(value, float) and value != number:
        raise ValueError(text)
    if not (low <= number <= high) or (isinstance(number, float) and not math.isfinite(number)):
        raise ValueError(text)
    return number


#: the default: an agent that ended stays ended
NO_RESTART: Final = RestartPolicy()
