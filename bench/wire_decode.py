"""Decoding one host's update: `json.loads` + `Model.from_dict` against the typed decoder (msgspec), interleaved.

    python -m bench.wire_decode [--rounds 10] [--lines 2000] [--out FILE.md]

The lines are what `bench/fleet_agents.py` sends a subscribed link (the real agent's params, encoded by the real
`rpc.Peer`), in two shapes: a 1,000-host fleet's (10% of 100 CVMs changed per second: 10 CVM records and the host
per update) and the 100-host fleet's of `console_fleet.md` (every CVM's CPU % changes: 100 records per update).
"before" is what the link did up to this change: `rpc._message` (json.loads and the message checks), then
`from_dict` for the host, every CVM, service and event; "after" is `rpc.notification` with the link's decoders
(`hostctl.wire.decode.LINK`). Each round decodes every line once each way, the order alternating (A/B, B/A, ...);
both give equal records (checked first). Writes bench/results/wire_decode.md or --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from bench.fleet_agents import FleetHost
from hostctl.wire import rpc
from hostctl.wire.decode import LINK, Update
from tests.support.wire import from_dicts

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "wire_decode.md"
SHAPES = {"10 CVMs + host (1,000-host fleet, 10% changing)": 0.1, "100 CVMs + host (100-host fleet, all changing)": 1.0}


def lines(count: int, changing: float, seed: int = 1) -> list[bytes]:
    """`count` update lines as the fleet's agents send them: host i's update after its sample."""
    rng = random.Random(seed)
    hosts = [FleetHost(f"host-{i:03d}", 100, random.Random(rng.random())) for i in range(min(count, 100))]
    out = []
    for k in range(count):
        fh = hosts[k % len(hosts)]
        since = fh.version
        fh.sample(changing, 0.1)
        params = fh.update(k + 1, since, [])
        out.append(json.dumps({"jsonrpc": "2.0", "method": "update", "params": params}, separators=(",", ":")).encode())
    return out


def before(line: bytes) -> Update:
    """The link's decoding before the typed decoder: plain JSON, then `from_dict` record by record."""
    return from_dicts(rpc._message(line)["params"])


def after(line: bytes) -> Update:
    decoded = rpc.notification(line, LINK)
    assert decoded is not None
    update: Update = decoded[1]
    return update


def per_line_us(decode: Callable[[bytes], Any], batch: list[bytes]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    for line in batch:
        decode(line)
    return (time.perf_counter() - t0) / len(batch) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--lines", type=int, default=2000, help="update lines per shape")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = []
    for shape, changing in SHAPES.items():
        batch = lines(args.lines, changing)
        assert all(before(line) == after(line) for line in batch), "the decoders disagree"
        cvms = statistics.mean(len(after(line).cvms) for line in batch)
        size = statistics.mean(map(len, batch))
        times: dict[str, list[float]] = {"before": [], "after": []}
        order = []
        for r in range(args.rounds):
            for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
                times[name].append(per_line_us(before if name == "before" else after, batch))
                order.append(name[0].upper())
        b, a = statistics.median(times["before"]), statistics.median(times["after"])
        rows.append(
            f"| {shape} | {size / 1024:.1f} KiB, {cvms:.0f} CVMs | {b:.1f} | {a:.1f} | {a / b:.2f} | {b / a:.1f}× | "
            f"{', '.join(f'{v:.0f}' for v in times['before'])}; {', '.join(f'{v:.0f}' for v in times['after'])} |"
        )
        print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# Decoding one host's update: before and after the typed decoder",
            "",
            f"One run of `python -m bench.wire_decode --rounds {args.rounds} --lines {args.lines}` (Python "
            f"{sys.version.split()[0]}, msgspec {msgspec.__version__}; 2 cores shared with whatever else ran). "
            f"{args.lines} update lines per shape as `bench/fleet_agents.py` sends them; each round decodes every "
            "line once each way, alternating which goes first (A/B, B/A, ...); medians over the rounds of the mean "
            "per line. Before: `rpc._message` (json.loads and the message checks) and `from_dict` per record, as the "
            "link decoded updates up to this change; after: `rpc.notification` with `hostctl.wire.decode.LINK` "
            "(msgspec, straight into the model's dataclasses, every value checked). Both give equal records for "
            "every line (checked before timing). Applying the records to the host's snapshot is not included.",
            "",
            "| update | size | before µs | after µs | after / before | speed-up | rounds (before; after) µs |",
            "|---|---:|---:|---:|---:|---:|---|",
            *rows,
            "",
        ]
    )
    args.out.write_text(text)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
