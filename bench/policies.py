"""Elastic policies against an oracle and fixed sizes on the demo site: calibrate the CVM (p99 at fixed vCPU counts
across steady rates), then replay two traces (bursty, diurnal) open loop over real HTTP, repeated, for fixed-max and
each policy. Writes bench/results/policies.md with its plots and the calibration (.json, .csv).

    python -m bench.policies [--repeats 3] [--seconds 50] [--traces bursty,diurnal] [--runs fixed-max,concurrency]
                             [--calibration FILE] [--scale 1.0] [--stem policies]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from hostctl.client import site as sites
from hostctl.demo import launcher
from hostctl.experiments import elastic_oracle, elastic_report
from hostctl.experiments.elastic_vs_fixed import on_site
from hostctl.load.trace import TRACES

OUT = Path(__file__).parent / "results"

# One emulated SEV-SNP CVM (boot 1, max 9 vCPUs) serving home-timeline (4 ms x 1.45 SNP overhead, +-20%),
# background traffic off; probes at 5/s feed the slo policy.
CONFIG = """
sample_interval = 1.0
probe_rate = 5.0
jitter = 0.2
[traffic]
base_rps = 0.0
peak_rps = 0.0
[driver]
wake_ms = 40.0
park_ms = 15.0
[[endpoints]]
name = "home-timeline"
path = "/wrk2-api/home-timeline/read"
service_ms = 4.0
[[hosts]]
name = "bench-1"
cpus = 16
  [[hosts.cvms]]
  name = "svc"
  security = "sev-snp"
  boot_vcpus = 1
  max_vcpus = 9
  online_vcpus = 1
"""


async def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", help="comma-separated runs (default: fixed-max, oracle-replay and every policy)")
    p.add_argument("--traces", default="bursty,diurnal", help="comma-separated traces (default bursty,diurnal)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of every run (default 3)")
    p.add_argument("--seconds", type=float, default=50.0, help="each trace squeezed to this long (default 50)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the traces' rates (default 1)")
    p.add_argument("--calibration", type=Path, help="reuse this calibration (.json) instead of measuring one")
    p.add_argument("--stem", default="policies", help="result file names in bench/results (default policies)")
    args = p.parse_args(argv)
    traces = [TRACES[name]().scaled(args.scale).lasting(args.seconds) for name in args.traces.split(",")]
    calibration = None if args.calibration is None else elastic_oracle.load(args.calibration)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-policies-") as tmp:
        runtime = Path(tmp)
        config = runtime / "bench.toml"
        config.write_text(CONFIG)
        print("\n".join(await launcher.up(config, runtime)), file=sys.stderr)
        try:
            site = sites.load(launcher.site_file(runtime))

            async def progress(what: str) -> None:
                print(what, file=sys.stderr, flush=True)

            comparison = await on_site(
                site,
                traces,
                cvm="bench-1/svc",
                runs=args.runs.split(",") if args.runs else None,
                repeats=args.repeats,
                calibration=calibration,
                settle_s=3.0,
                progress=progress,
            )
        finally:
            await launcher.down(runtime)
    comparison.notes.append(
        "Demo site: one agent process (`hostctl demo serve-host`) with the shipped "
        "`hostctl/data/policies`; load from `hostctl.load.trace.replay` in this process; "
        "2-CPU machine shared with other work: load average (1, 5, 15 min) "
        f"{' / '.join(f'{v:.1f}' for v in load_before)} at the start, "
        f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())} at the end."
    )
    if calibration is None:
        comparison.calibration.save(OUT, f"{args.stem}-calibration")
    md = elastic_report.save(
        comparison,
        OUT,
        args.stem,
        header="# Elastic policies against an oracle and fixed sizes (demo site)\n\n"
        f"`{' '.join(['python -m bench.policies', *argv])}`.",
    )
    print(elastic_report.markdown(comparison))
    print(f"saved: {md}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
