"""Run every target benchmark and report them together: ``python -m bench`` (from the repository root).

    python -m bench [--quick] [--json OUT] [--compare OLD.json] [--plot OUT.png]

It runs ``codec_ratios.py``, ``server_bench.py``, ``client_bench.py``, ``pubsub_bench.py``, ``output_bench.py``,
``live_bench.py`` and ``abuse_bench.py``
(each in its own process, one after the other), checks each measured ratio against ``bench/targets.toml``,
prints one table of measured value, reference, ratio, target and PASS/FAIL, and writes
everything as JSON (default ``bench-results.json``). ``--compare OLD.json`` shows, for every
target, how the ratio moved since that earlier run and marks what got slower. About six
minutes by default (output_bench's gigabyte and supervisord are most of it), two with ``--quick``.
Exit status 1 if a target fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import TARGETS, Row, machine, print_targets  # noqa: E402

#: script -> extra arguments for --quick
SCRIPTS = {"codec_ratios.py": ["--rounds", "5"], "server_bench.py": ["--quick"], "client_bench.py": ["--quick"],
           "pubsub_bench.py": ["--quick"], "output_bench.py": ["--quick"], "live_bench.py": ["--quick"],
           "abuse_bench.py": ["--quick"]}
#: a ratio this much worse than in the compared run counts as a regression
REGRESSION = 0.05


def run_all(quick: bool) -> tuple[list[Row], dict, float]:
    rows: list[Row] = []
    details: dict = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for script, quick_args in SCRIPTS.items():
            out = Path(tmp) / (script + ".json")
            print(f"running {script}{' --quick' if quick else ''} ...", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, str(HERE / script), "--json", str(out),
                                   *(quick_args if quick else [])], stdout=subprocess.DEVNULL)
            if proc.returncode != 0 or not out.exists():
                raise SystemExit(f"bench: {script} failed (exit status {proc.returncode})")
            details[script] = json.loads(out.read_text())
            for data in details[script]["rows"]:
                rows.append(Row(data["id"], data["case"], data["measured"], data["reference"],
                                data["reference_is"], data["ratio"]))
    return rows, details, time.perf_counter() - started


def plot(results: dict, path: str) -> None:
    """Throughput and latency against the references, from a results JSON, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    server = results["details"]["server_bench.py"]
    client = results["details"]["client_bench.py"]
    fig, (thr, lat) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels, ours, refs = [], [], []
    for s in (s for s in server["sweep"] if "in_flight" in s):
        labels.append(f"server\n{s['transport']} x{s['in_flight']}")
        ours.append(s["ours"])
        refs.append(s["reference"])
    labels.append("client\ntcp x64")
    ours.append(client["throughput"]["ours"][len(client["throughput"]["ours"]) // 2])
    refs.append(client["throughput"]["zmq.asyncio"][len(client["throughput"]["zmq.asyncio"]) // 2])
    x = range(len(labels))
    thr.bar([i - 0.2 for i in x], ours, 0.4, label="descartes_fast")
    thr.bar([i + 0.2 for i in x], refs, 0.4, label="reference: sync pyzmq+msgspec server / zmq.asyncio client")
    thr.set_xticks(list(x), labels, fontsize=8)
    thr.set_ylabel("requests per second (get_status)")
    thr.set_title("Throughput by requests in flight")
    thr.legend(fontsize=7)
    quantiles = ["50", "99", "99.9"]
    lat_ours = [server["latency_us"]["ours"][q] for q in quantiles]
    lat_echo = [server["latency_us"]["echo"][q] for q in quantiles]
    x = range(len(quantiles))
    lat.bar([i - 0.2 for i in x], lat_ours, 0.4, label="descartes_fast server (get_status)")
    lat.bar([i + 0.2 for i in x], lat_echo, 0.4, label="reference: sync pyzmq echo")
    lat.set_xticks(list(x), [f"p{q}" for q in quantiles])
    lat.set_ylabel("round trip, µs (one request in flight, tcp)")
    lat.set_title("Latency")
    lat.legend(fontsize=7)
    fig.suptitle(results["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _better(target_id: str, new: float, old: float) -> float:
    """How much better the new ratio is (negative: worse), relative to the old one."""
    group, name = target_id.split(".", 1)
    change = (new - old) / old if old else 0.0
    return change if TARGETS[group][name]["op"] == ">=" else -change


def compare(rows: list[Row], old_path: str) -> None:
    old = {r["id"]: r for r in json.loads(Path(old_path).read_text())["rows"]}
    print(f"\ncompared with {old_path}:")
    for row in rows:
        before = old.get(row.id)
        if before is None:
            print(f"  {row.id:<22} new target")
            continue
        delta = _better(row.id, row.ratio, before["ratio"])
        mark = "SLOWER" if delta < -REGRESSION else ("faster" if delta > REGRESSION else "same")
        print(f"  {row.id:<22} ratio {before['ratio']:.2f} -> {row.ratio:.2f}  ({delta:+.0%}, {mark})")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (under a minute)")
    parser.add_argument("--json", default="bench-results.json", metavar="OUT",
                        help="where to write the results (default: bench-results.json)")
    parser.add_argument("--compare", metavar="OLD.json", help="show what changed since this earlier run")
    parser.add_argument("--plot", metavar="OUT.png", help="also draw throughput and latency against the references")
    args = parser.parse_args()
    rows, details, wall = run_all(args.quick)
    print(machine())
    print(f"{len(rows)} targets from bench/targets.toml, measured in {wall:.0f} s"
          f"{' (quick)' if args.quick else ''}; every reference measured in the same run\n")
    print_targets(rows)
    results = {"machine": machine(), "quick": args.quick, "wall_s": wall, "rows": [r.as_dict() for r in rows],
               "details": details}
    Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    for r in details["pubsub_bench.py"]["fanout"]:
        o, ref = r["ours"], r["reference"]
        print(f"PUB fan-out to {r['subscribers']} subscriber(s): {o['mb_per_s']:,.1f} MB/s "
              f"({o['msgs_per_s']:,.0f} msg/s, "
              f"gaps {o['gaps']}) vs plain pyzmq publisher {ref['mb_per_s']:,.1f} MB/s (information, no target)")
    print(f"\nwritten: {args.json}")
    if args.plot:
        plot(json.loads(Path(args.json).read_text()), args.plot)
        print(f"plotted: {args.plot}")
    if args.compare:
        compare(rows, args.compare)
    missing = {f"{g}.{n}" for g, names in TARGETS.items() for n in names} - {r.id for r in rows}
    if missing:
        print(f"not measured: {', '.join(sorted(missing))}")
    return 0 if all(r.ok for r in rows) and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
