"""``descartes-fast top``: a live terminal view of every server and agent of a fleet (or of one
server): server state, agents, load and free memory from the heartbeats; each agent's status
(from the status updates), age, CPU, memory and output rate (from ``get_status``, polled each
refresh); the fleet's session totals (turns, tokens, cost). Drawn with ``rich``, which only this
command imports; plain text over ssh, no full-screen mode needed. q or Ctrl-C quits.
"""

from __future__ import annotations

import asyncio
import select
import sys
import termios
import time
import tty
from typing import Any

from descartes_fast.client.errors import ClientError
from descartes_fast.fleet import Fleet, FleetAgent, ServerState, SyncFleet

__all__ = ["top"]

#: the most agents shown (running ones first, then the latest ended)
SHOWN = 200


async def _snapshot(fleet: Fleet) -> tuple[list[Any], list[tuple[FleetAgent, dict[str, Any]]]]:
    """The servers, and the agents shown with their get_status facts (asked in parallel)."""
    agents = fleet.known()
    running = [a for a in agents if not a.info.status.is_terminal()]
    ended = [a for a in agents if a.info.status.is_terminal()]
    shown = (running + ended[::-1])[:SHOWN]

    async def state(agent: FleetAgent) -> dict[str, Any]:
        if not agent.reachable:
            return {}
        try:
            client, agent_id = await fleet.client_of(agent.id)
            return await asyncio.wait_for(client.agent_state(agent_id, usage=True), 2.0)
        except (TimeoutError, ClientError):
            return {}
    states = await asyncio.gather(*(state(a) for a in shown))
    return fleet.servers(), list(zip(shown, states, strict=True))


def _age(ns: int) -> str:
    secs = max(0, int(time.time() - ns / 1e9))
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m" if secs >= 3600 else f"{secs // 60}m{secs % 60:02d}s"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


class _View:
    """What one refresh draws; remembers output sizes to compute rates."""

    def __init__(self) -> None:
        self.last: dict[Any, tuple[float, int]] = {}  # agent id -> (time, output bytes)

    def render(self, servers: list[Any], agents: list[tuple[FleetAgent, dict[str, Any]]]) -> Any:
        from rich.box import SIMPLE_HEAD
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        st = Table(title="servers", title_justify="left", box=SIMPLE_HEAD, pad_edge=False)
        for column in ("SERVER", "STATE", "AGENTS", "LOAD", "MEM FREE", "LABELS", "HEARD"):
            st.add_column(column)
        for v in servers:
            f = v.facts
            load = f"{f['load_1m']:.2f}/{f.get('cpus', '?')}" if isinstance(f.get("load_1m"), (int, float)) else "-"
            colour = {ServerState.UP: "green", ServerState.UNREACHABLE: "red"}.get(v.state, "yellow")
            st.add_row(v.name, Text(v.state.value, style=colour),
                       f"{f.get('active_agents', '-')}/{f.get('max_agents', '-')}", load,
                       _bytes(f.get("memory_available_bytes")),
                       ",".join(f"{k}={val}" for k, val in sorted(v.labels.items())),
                       f"{v.seen_secs_ago:.1f} s ago" if v.seen_secs_ago is not None else "never")
        at = Table(title="agents", title_justify="left", box=SIMPLE_HEAD, pad_edge=False)
        for column in ("SERVER", "ID", "NAME", "STATUS", "AGE", "CPU", "MEM", "OUT/s", "OUTPUT", "SESSION"):
            at.add_column(column, no_wrap=True, overflow="ellipsis")
        now = time.monotonic()
        totals = {"turns": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
        for agent, facts in agents:
            usage = facts.get("usage") or {}
            out = facts.get("output_bytes")
            rate = None
            if isinstance(out, int):
                before = self.last.get(agent.id)
                if before is not None and now > before[0]:
                    rate = (out - before[1]) / (now - before[0])
                self.last[agent.id] = (now, out)
            cpu = usage.get("cpu_secs") if usage else facts.get("cpu_secs")
            memory = usage.get("memory_bytes") if usage else (facts.get("max_rss_kib") or 0) * 1024 or None
            for key in totals:
                if isinstance(facts.get(key), (int, float)):
                    totals[key] += facts[key]
            session = f"{facts.get('turns', 0)} turn(s) ${facts['cost_usd']:.4f}" \
                if facts.get("cost_usd") is not None else (f"{facts['turns']} turn(s)" if facts.get("turns") else "")
            colour = {"running": "green", "thinking": "cyan", "idle": "cyan", "paused": "yellow", "failed": "red",
                      "unreachable": "red"}.get(agent.status, "")
            at.add_row(agent.server, str(agent.id)[:8], agent.info.name, Text(agent.status, style=colour),
                       _age(agent.info.started_at), f"{cpu:.1f} s" if isinstance(cpu, (int, float)) else "-",
                       _bytes(memory), _bytes(rate) if rate is not None else "-", _bytes(out), session)
        up = sum(v.state == ServerState.UP for v in servers)
        active = sum(not a.info.status.is_terminal() and a.reachable for a, _ in agents)
        foot = Text(f"{up}/{len(servers)} server(s) up · {active} agent(s) active · sessions: "
                    f"{totals['turns']} turn(s), {totals['input_tokens']} tokens in, {totals['output_tokens']} out, "
                    f"${totals['cost_usd']:.4f} · {time.strftime('%H:%M:%S')}"
                    " · q quits")
        return Group(st, at, foot)


def top(fleet: SyncFleet, interval: float = 1.0, once: bool = False) -> int:
    """Draw the view every *interval* seconds until q or Ctrl-C (*once*: draw once and return)."""
    from rich.console import Console
    from rich.live import Live

    view = _View()
    console = Console(width=None if sys.stdout.isatty() else 160)  # (piped: lines wide enough for every column)
    if once:
        console.print(view.render(*fleet.run(_snapshot(fleet.fleet))))
        return 0
    keys = sys.stdin.isatty()
    saved = termios.tcgetattr(sys.stdin) if keys else None
    try:
        if keys:
            tty.setcbreak(sys.stdin.fileno())
        with Live(view.render(*fleet.run(_snapshot(fleet.fleet))), console=console, auto_refresh=False) as live:
            while True:
                if keys and select.select([sys.stdin], [], [], interval)[0]:
                    if sys.stdin.read(1) in ("q", "Q"):
                        return 0
                elif not keys:
                    time.sleep(interval)
                live.update(view.render(*fleet.run(_snapshot(fleet.fleet))), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
