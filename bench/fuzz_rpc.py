"""The agent's JSON-RPC server under generated hostile traffic at volume: a real agent process (a demo host, on its
unix socket) gets malformed JSON, wrong types, huge and nested values, unknown methods, invalid ids, batches,
binary junk, very long lines and valid calls with bad params, mixed with valid calls, over parallel pipelined
connections, plus connections cut mid-line. Counted: agent crashes (exit, or a traceback on its stderr), replies
that are not the well-formed JSON-RPC 2.0 answer with the right id, whether a valid `snapshot` is answered at the
end, and scales the audit log shows applied by anything but a valid request. Writes bench/results/fuzz_rpc.md.

    python -m bench.fuzz_rpc --messages 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from hostctl.errors import HostctlError
from hostctl.wire import rpc
from tests.support import rpc_fuzz

OUT = Path(__file__).parent / "results" / "fuzz_rpc.md"


@dataclass
class Outcome:
    """What one run saw."""

    tally: rpc_fuzz.Tally
    cuts: int
    elapsed: float
    final: str  # how the valid snapshot at the end went
    applied: int  # scales applied by valid requests
    wrong: list[str]  # scales applied by anything else
    exit_code: int | None  # the agent's, if it exited during the run
    tracebacks: int  # on its stderr during the run
    at_stop: int  # on its stderr when it was stopped


async def fuzz(messages: int, seed: int, connections: int) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        agent = rpc_fuzz.LoggedAgent(Path(tmp))
        await agent.start()
        try:
            started = time.monotonic()
            tally = await rpc_fuzz.run(agent.socket, rpc_fuzz.Fuzzer(seed).cases(messages), connections=connections)
            cuts = max(1, messages // 1000)
            await rpc_fuzz.cut_connections(agent.socket, cuts, seed)
            elapsed = time.monotonic() - started
            try:
                snapshot = await rpc.call_unix(str(agent.socket), "snapshot", timeout=10)
                final = f"answered ({len(snapshot['cvms'])} CVM, host {snapshot['host']['name']})"
            except (HostctlError, TimeoutError, rpc.RpcError) as e:
                final = f"NOT answered: {e or 'timed out'}"
            applied, wrong = rpc_fuzz.applied_scales(agent.audit.read_text().splitlines())
            assert agent.proc is not None
            exit_code = agent.proc.poll()
            await asyncio.sleep(0.5)  # the agent sees every connection of ours closed before it is stopped
            tracebacks = agent.tracebacks()
        finally:
            agent.stop()
        at_stop = agent.tracebacks() - tracebacks
    return Outcome(tally, cuts, elapsed, final, applied, wrong, exit_code, tracebacks, at_stop)


def report(args: argparse.Namespace, o: Outcome) -> list[str]:
    sent = sum(o.tally.sent.values())
    crashes = (o.exit_code is not None) + o.tracebacks
    lines = [
        "# RPC fuzz at volume",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {platform.machine()}, {os.cpu_count()} cores shared with other work, "
        f"{platform.system()} {platform.release().split('-')[0]}, Python {sys.version.split()[0]}.",
        f"`python -m bench.fuzz_rpc --messages {args.messages} --seed {args.seed} --connections {args.connections}` "
        "writes this file.",
        "",
        "One real agent process (`hostctl demo serve-host`, one CVM `snp`, 1..5 vCPUs) on its unix socket; "
        f"{args.connections} connections at once, each pipelining 64 messages and a sentinel request, every reply "
        "checked (strict JSON, JSON-RPC 2.0, exactly one of result/error, the id and code each message must get, "
        "no reply at all to a notification or a blank line). Generator and checks: `tests/support/rpc_fuzz.py`.",
        "",
        "| category | messages |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {count} |" for name, count in sorted(o.tally.sent.items(), key=lambda kv: -kv[1])]
    lines += [
        f"| connection cut mid-line | {o.cuts} |",
        f"| **total** | **{sent + o.cuts}** |",
        "",
        "| result | value |",
        "|---|---:|",
        f"| time | {o.elapsed:.1f} s ({sent / o.elapsed:,.0f} messages/s) |",
        f"| replies checked | {o.tally.replies} |",
        f"| update notifications seen (subscribed by valid calls) | {o.tally.notifications} |",
        f"| agent crashes (exit: {'none' if o.exit_code is None else o.exit_code}; tracebacks on stderr) | {crashes} |",
        f"| malformed or wrong replies, dropped or silent connections | {len(o.tally.problems)} |",
        f"| valid `snapshot` at the end | {o.final} |",
        f"| scales applied by valid requests (audit log) | {o.applied} |",
        f"| scales applied that should have been refused (audit log) | {len(o.wrong)} |",
        f"| tracebacks on stderr when the agent was stopped (SIGTERM) | {o.at_stop} |",
    ]
    if o.tally.problems or o.wrong:
        lines += ["", "First problems:", ""]
        lines += [f"- `{p}`" for p in (o.tally.problems + o.wrong)[:20]]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz_rpc", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--out", type=Path, default=OUT, help="the results file (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.connections < 1:
        parser.error("--messages and --connections must be at least 1")
    lines = report(args, asyncio.run(fuzz(args.messages, args.seed, args.connections)))
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
