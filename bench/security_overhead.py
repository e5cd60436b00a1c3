"""The security-overhead experiment on the demo site (hostctl/data/demo.toml, as `hostctl demo up` starts it: background
traffic and probes on) with the command's defaults, then a connections sweep of the mixed script.

Writes bench/results/security_overhead.{md,csv,svg} and -runs.csv, and security_overhead_sweep.* the same way plus
security_overhead_sweep-sweep.svg. `--quick` runs 2 rounds of 1 s runs (a smoke test of the bench itself).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from hostctl.client.link import Fleet
from hostctl.client.site import load
from hostctl.demo import config, launcher
from hostctl.experiments import security_overhead as experiment
from hostctl.experiments.overhead_report import Report
from hostctl.experiments.overhead_runs import LABEL, ORDER, Plan

RESULTS = Path(__file__).parent / "results"
SEED = 15  # the shuffles' seed: a re-run runs in the same order
SWEEP = (1, 4, 16, 64)


SHOWN: list[str] = [""]


async def progress(what: str, fraction: float) -> None:
    if what != SHOWN[-1]:
        SHOWN.append(what)
        print(f"[{fraction:4.0%}] {what}", flush=True)


async def run(plans: dict[str, Plan]) -> dict[str, Report]:
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Path(tmp)
        await launcher.up(config.DEFAULT_CONFIG, runtime)
        fleet = Fleet(load(launcher.site_file(runtime)))
        fleet.start()
        try:
            await fleet.ready()
            for name, plan in plans.items():
                reports[name] = await experiment.security_overhead(
                    fleet.site,
                    lambda: {n: link.snapshot for n, link in fleet.links.items() if link.snapshot},
                    plan,
                    progress=progress,
                )
        finally:
            await fleet.stop()
            await launcher.down(runtime)
    return reports


def write(name: str, report: Report, what: str) -> None:
    demo = config.load()
    configured = ", ".join(f"{LABEL[s]} {demo.overhead.of(s):.2f}×" for s in ORDER)
    body = report.markdown().split("\n", 2)[2]  # the report without its title
    text = (
        f"# Demo site: the security-overhead experiment, {what}\n\n"
        f"`python -m bench.security_overhead`: `hostctl experiment security-overhead` as a library call on the demo "
        f"site as `hostctl demo up` starts it (background traffic with its daily rhythm and probes on; configured "
        f"service-time multipliers {configured}), on a 2-CPU machine that also runs wrk and other work.\n\n{body}"
    )
    md, *_ = report.save(RESULTS, stem=name)
    md.write_text(text, encoding="utf-8")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s runs")
    rounds, duration = (2, 1) if parser.parse_args().quick else (Plan.rounds, Plan.duration_s)
    plans = {
        "security_overhead": Plan(rounds=rounds, duration_s=duration, seed=SEED),
        "security_overhead_sweep": Plan(
            scripts=("mixed",), connections=SWEEP, rounds=rounds, duration_s=duration, seed=SEED
        ),
    }
    reports = asyncio.run(run(plans))
    write("security_overhead", reports["security_overhead"], "every script, the command's defaults")
    write("security_overhead_sweep", reports["security_overhead_sweep"], f"connections {','.join(map(str, SWEEP))}")


if __name__ == "__main__":
    main()
