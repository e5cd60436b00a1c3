"""The security-overhead experiment's report: Markdown tables with their intervals, a summary CSV (one line per
script, connection count, security type and percentile), every run as CSV, and the SVG figures."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from hostctl.errors import HostctlError
from hostctl.experiments import bootstrap
from hostctl.experiments.bootstrap import Interval
from hostctl.experiments.overhead_plot import bars_svg, sweep_svg
from hostctl.experiments.overhead_runs import LABEL, PERCENTILES, Measurement, Plan
from hostctl.experiments.overhead_stats import Analysis, Line, analyse
from hostctl.wire.security import SecurityType

NOT_DISTINGUISHABLE = "not distinguishable"


@dataclass
class Report:
    """The experiment's outcome: every run, and notes on what was left out or excluded."""

    plan: Plan
    load_host: str
    started: float
    measurements: list[Measurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    resamples: int = bootstrap.RESAMPLES

    @cached_property
    def analysis(self) -> Analysis:
        return analyse(self.measurements, self.plan.blocks(), resamples=self.resamples)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started))
        counted = sum(not m.excluded for m in self.measurements)
        vcpus = sorted({m.choice.vcpus for m in self.measurements})
        return (
            f"{self.plan.rounds} rounds; in each, every security type runs once per script and connection count, "
            f"in a shuffled order (seed {self.plan.seed}). {self.plan.describe()}; from {self.load_host}; "
            f"{', '.join(map(str, vcpus)) or 'no'} online vCPUs per CVM. Started {when}; "
            f"{counted} of {len(self.measurements)} runs counted.\n\n"
            f"Each cell is the median over rounds with its 95% percentile bootstrap interval ({self.resamples} "
            f"resamples of the rounds, seeded: the same runs give the same intervals); the increase over plain "
            f"resamples the rounds in pairs (a round holds every type). "
            f'"{NOT_DISTINGUISHABLE}": the increase\'s interval includes 0.'
        )

    def markdown(self) -> str:
        lines = ["# Security overhead: HTTP latency per security type", "", self.describe(), ""]
        lines += self.increase_table()
        for block in self.analysis.blocks:
            lines += [
                "",
                f"## Latency (ms): {block.title}",
                "",
                "| security | CVM | vCPUs | rounds | req/s | errors | "
                + " | ".join(f"p{q}" for q in PERCENTILES)
                + " |",
                "|---|---|---:|---:|---:|---:|" + "---:|" * len(PERCENTILES),
            ]
            lines += [
                f"| {line.label} | {line.choice.cvm} | {line.choice.vcpus} | {len(line.rounds)} | {line.rps:.1f} | "
                f"{line.errors} | " + " | ".join(_latency(line.latency[q], line) for q in PERCENTILES) + " |"
                for line in block.lines
            ]
        if self.analysis.warnings:
            lines += ["", "## Warnings", "", *(f"- {w}" for w in self.analysis.warnings)]
        if self.notes:
            lines += ["", "## Notes", "", *(f"- {n}" for n in self.notes)]
        return "\n".join(lines) + "\n"

    def increase_table(self) -> list[str]:
        """The summary: per script and connection count, each type's increase over plain with its interval."""
        lines = [
            "## Increase over plain",
            "",
            "| script | connections | security | " + " | ".join(f"p{q}" for q in PERCENTILES) + " |",
            "|---|---:|---|" + "---:|" * len(PERCENTILES),
        ]
        for block in self.analysis.blocks:
            for line in (ln for ln in block.lines if ln.choice.security is not SecurityType.NONE):
                cells = [_increase(line.increase[q], line) for q in PERCENTILES]
                lines.append(f"| {block.script} | {block.connections} | {line.label} | " + " | ".join(cells) + " |")
        return lines

    def csv(self) -> str:
        """One line per script, connection count, security type and percentile."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(
            [
                "script", "connections", "security", "cvm", "vcpus", "rounds", "percentile",
                "median_ms", "low_ms", "high_ms", "increase_pct", "increase_low_pct", "increase_high_pct",
                "distinguishable", "rps", "requests", "errors", "threads", "duration_s", "load_host", "seed", "started",
            ]
        )  # fmt: skip
        for block in self.analysis.blocks:
            for line in block.lines:
                for q in PERCENTILES:
                    lat, inc = line.latency[q], line.increase[q]
                    distinguishable = "" if inc is None else "no" if inc.includes(0) else "yes"
                    writer.writerow(
                        [
                            block.script, block.connections, line.label, line.choice.cvm, line.choice.vcpus,
                            len(line.rounds), q, *_numbers(lat), *_numbers(inc), distinguishable,
                            f"{line.rps:.1f}", line.requests, line.errors, self.plan.threads,
                            self.plan.duration_s, self.load_host, self.plan.seed, f"{self.started:.0f}",
                        ]
                    )  # fmt: skip
        return out.getvalue()

    def runs_csv(self) -> str:
        """Every run in the order it ran, excluded ones with why."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(
            ["round", "order", "script", "connections", "security", "cvm", "vcpus", "started", "requests", "rps",
             "errors", *(f"p{q}_ms" for q in PERCENTILES), "excluded"]
        )  # fmt: skip
        for m in self.measurements:
            writer.writerow(
                [m.round, m.order, m.script, m.connections, LABEL[m.choice.security], m.choice.cvm, m.choice.vcpus,
                 f"{m.started:.3f}", m.result.requests, f"{m.result.rps:.1f}", m.result.errors,
                 *(f"{m.result.p(q):.3f}" for q in PERCENTILES), m.excluded]
            )  # fmt: skip
        return out.getvalue()

    def figures(self) -> dict[str, str]:
        """The SVG figures by file suffix: the bars, and the sweep when more than one connection count ran."""
        title = f"Security overhead: median latency over {self.plan.rounds} rounds"
        figures = {".svg": bars_svg(self.analysis, title)} if self.analysis.blocks else {}
        if len({b.connections for b in self.analysis.blocks}) > 1:
            figures["-sweep.svg"] = sweep_svg(self.analysis, "Latency against offered concurrency")
        return figures

    def save(self, folder: Path, stem: str | None = None) -> list[Path]:
        """Write the Markdown, the CSVs and the figures into `folder`, their names starting with `stem` (default:
        security-overhead- and the start time); their paths, the Markdown first."""
        stem = stem or "security-overhead-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started))
        files = {".md": self.markdown(), ".csv": self.csv(), "-runs.csv": self.runs_csv(), **self.figures()}
        paths = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for suffix, text in files.items():
                paths.append(folder / f"{stem}{suffix}")
                paths[-1].write_text(text, encoding="utf-8")
        except OSError as e:
            raise HostctlError(f"cannot save the experiment in {folder}: {e.strerror}") from None
        return paths


def _latency(interval: Interval | None, line: Line) -> str:
    if interval is None:
        return f"unknown ({len(line.rounds)} round: no interval)"
    return f"{interval.estimate:.2f} [{interval.low:.2f}, {interval.high:.2f}]"


def _increase(interval: Interval | None, line: Line) -> str:
    if interval is None:
        return f"unknown ({line.why_no_increase})"
    cell = f"{interval.estimate:+.1f}% [{interval.low:+.1f}, {interval.high:+.1f}]"
    return f"{cell} {NOT_DISTINGUISHABLE}" if interval.includes(0) else cell


def _numbers(interval: Interval | None) -> list[str]:
    if interval is None:
        return ["", "", ""]
    return [f"{interval.estimate:.3f}", f"{interval.low:.3f}", f"{interval.high:.3f}"]
