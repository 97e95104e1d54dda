"""A stand-in for an LLM coding agent, for demos and tests (the ``demo`` backend runs it).

It streams JSON lines of progress on stdout, reads stdin, and honours the cooperative pause
protocol of the reference: the line ``{"type":"pause","action":"pause"}`` pauses it (it
stops working and says so) until ``{"type":"pause","action":"resume"}``. Any other stdin
line is acknowledged as input. It exits 0 when the task is done, or with ``--exit-code``.

    python -m descartes_fast.demo.agent --task "refactor the parser" --steps 5 --interval 0.2
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time


def _say(kind: str, **fields: object) -> None:
    print(json.dumps({"type": kind, **fields}), flush=True)


class _Control:
    """Reads stdin on a thread; pause/resume lines flip a flag, others become input events."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.running.set()
        self.stdin_closed = threading.Event()

    def read_stdin(self) -> None:
        for raw in sys.stdin:
            line = raw.strip()
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                message = None
            if isinstance(message, dict) and message.get("type") == "pause":
                if message.get("action") == "pause":
                    self.running.clear()
                    _say("paused")
                elif message.get("action") == "resume":
                    self.running.set()
                    _say("resumed")
                continue
            _say("input", text=line)
        self.stdin_closed.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m descartes_fast.demo.agent",
                                     description="A demo agent: JSON progress lines, stdin input, "
                                                 "cooperative pause/resume.")
    parser.add_argument("--task", default="demo task", help="what to pretend to work on")
    parser.add_argument("--steps", type=int, default=5, help="progress steps before finishing (default 5)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds per step (default 0.2)")
    parser.add_argument("--exit-code", type=int, default=0, help="status to exit with (default 0)")
    parser.add_argument("--stderr", action="store_true", help="also log each step on stderr")
    args = parser.parse_args(argv)

    control = _Control()
    threading.Thread(target=control.read_stdin, daemon=True).start()
    _say("start", task=args.task, steps=args.steps)
    for step in range(1, args.steps + 1):
        control.running.wait()
        time.sleep(args.interval)
        control.running.wait()
        _say("progress", step=step, of=args.steps, message=f"working on: {args.task}")
        if args.stderr:
            print(f"step {step}/{args.steps}", file=sys.stderr, flush=True)
    _say("done", task=args.task, exit_code=args.exit_code)
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
