"""The security-overhead experiment: the same wrk load against comparable CVMs of each security type, one run
after the other, and the table the MEC study reports (p50, p90, p99 per type and the increase over plain).

Comparable means running, serving the same service, with the same number of online vCPUs: the count shared by the
most security types is used, and a type with no CVM of that count is left out and said so.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hostctl.client.site import Site
from hostctl.errors import HostctlError
from hostctl.load import wrk
from hostctl.load.generators import LoadHost, LocalLoadHost, Target, Targets, run_load
from hostctl.load.runs import RunLog
from hostctl.load.wrk import Params, WrkResult
from hostctl.wire.model import DomainState, Snapshot
from hostctl.wire.security import SecurityType

ORDER = (SecurityType.NONE, SecurityType.SEV, SecurityType.SEV_ES, SecurityType.SEV_SNP)
LABEL = {
    SecurityType.NONE: "plain",
    SecurityType.SEV: "SEV",
    SecurityType.SEV_ES: "SEV-ES",
    SecurityType.SEV_SNP: "SEV-SNP",
}
PERCENTILES = (50, 90, 99)
WHY = "experiment security-overhead"

Progress = Callable[[str, float], Awaitable[None]]
"""An async callback given (what runs now, fraction of the whole experiment done 0..1)."""


@dataclass(frozen=True)
class Choice:
    """The CVM measured for one security type."""

    security: SecurityType
    vcpus: int
    target: Target


@dataclass
class Row:
    choice: Choice
    result: WrkResult


@dataclass
class Report:
    """The experiment's outcome: one row per security type measured, and notes on what was left out."""

    params: Params
    load_host: str
    service: str
    started: float
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def increase(self, row: Row, percentile: int) -> float | None:
        """Percent increase of `row`'s latency at `percentile` over plain's; None without a plain row."""
        plain = next((r for r in self.rows if r.choice.security is SecurityType.NONE), None)
        if plain is None or plain.result.p(percentile) <= 0:
            return None
        return (row.result.p(percentile) / plain.result.p(percentile) - 1) * 100

    def table(self) -> list[list[str]]:
        """Header and one line per row, as text cells."""
        header = [
            "security",
            "CVM",
            "vCPUs",
            "requests",
            "req/s",
            "errors",
            *(f"p{q} ms" for q in PERCENTILES),
            *(f"p{q} vs plain" for q in PERCENTILES),
        ]
        lines = [header]
        for row in self.rows:
            increases = [self.increase(row, q) for q in PERCENTILES]
            target = row.choice.target
            lines.append(
                [
                    LABEL[row.choice.security],
                    f"{target.host}/{target.cvm}",
                    str(row.choice.vcpus),
                    str(row.result.requests),
                    f"{row.result.rps:.1f}",
                    str(row.result.errors),
                    *(f"{row.result.p(q):.2f}" for q in PERCENTILES),
                    *("n/a" if i is None else f"{i:+.1f}%" for i in increases),
                ]
            )
        return lines

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started))
        return (
            f"`{self.params.describe()}` against service {self.service}, from {self.load_host}, "
            f"runs one after the other, started {when}."
        )

    def markdown(self) -> str:
        header, *rows = self.table()
        lines = [
            "# Security overhead: HTTP latency per security type",
            "",
            self.describe(),
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        if self.notes:
            lines += ["", "Notes:", *(f"- {n}" for n in self.notes)]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        header, *rows = self.table()
        writer.writerow([*header, "wrk", "load host", "started"])
        for r in rows:
            writer.writerow([*r, self.params.describe(), self.load_host, f"{self.started:.0f}"])
        return out.getvalue()

    def save(self, folder: Path) -> tuple[Path, Path]:
        """Write the Markdown and CSV tables into `folder`, named with the start time; their paths."""
        stem = "security-overhead-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started))
        paths = folder / f"{stem}.md", folder / f"{stem}.csv"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            paths[0].write_text(self.markdown(), encoding="utf-8")
            paths[1].write_text(self.csv(), encoding="utf-8")
        except OSError as e:
            raise HostctlError(f"cannot save the experiment in {folder}: {e.strerror}") from None
        return paths


def service_for(script: str | None) -> str:
    """The service an experiment with `script` targets: the script's own endpoint, or home-timeline."""
    return script if script in wrk.SCRIPTS and script != "mixed" else "home-timeline"


def choose(snapshots: Mapping[str, Snapshot], targets: Targets, service: str) -> tuple[list[Choice], list[str]]:
    """One comparable running CVM per security type serving `service`, and notes on the types left out."""
    by_cvm = {(t.host, t.cvm): t for t in targets if t.service == service}
    found: dict[SecurityType, list[Choice]] = {}
    for host, snapshot in sorted(snapshots.items()):
        for cvm in snapshot.cvms:
            target = by_cvm.get((host, cvm.name))
            if cvm.state is DomainState.RUNNING and cvm.online_vcpus is not None and target is not None:
                found.setdefault(cvm.security, []).append(Choice(cvm.security, cvm.online_vcpus, target))
    if not found:
        raise HostctlError(f"no running CVM serves {service!r} in the site inventory; nothing ran")
    counts = {c.vcpus for choices in found.values() for c in choices}

    def coverage(vcpus: int) -> tuple[int, bool, int]:
        types = {s for s, choices in found.items() if any(c.vcpus == vcpus for c in choices)}
        return len(types), SecurityType.NONE in types, -vcpus

    vcpus = max(counts, key=coverage)
    chosen, notes = [], []
    for security in ORDER:
        same = [c for c in found.get(security, []) if c.vcpus == vcpus]
        if same:
            chosen.append(same[0])
        elif security in found:
            others = ", ".join(f"{c.target.host}/{c.target.cvm} has {c.vcpus}" for c in found[security])
            notes.append(f"{LABEL[security]} left out: no running CVM with {vcpus} online vCPUs ({others})")
        else:
            notes.append(f"{LABEL[security]} left out: no running CVM of this type serves {service!r}")
    return chosen, notes


async def security_overhead(
    site: Site,
    snapshots: Callable[[], Mapping[str, Snapshot]],
    params: Params,
    *,
    host: LoadHost | None = None,
    progress: Progress | None = None,
    history: RunLog | None = None,
    settle_s: float = 1.0,
) -> Report:
    """Run the experiment: `snapshots()` gives each host's current snapshot (read before and after each run)."""
    service = service_for(params.script)
    current = snapshots()
    targets = Targets(site, {name: s.services for name, s in current.items()})
    chosen, notes = choose(current, targets, service)
    host = host or LocalLoadHost()
    missing = [f"host {h.name} not reached; its CVMs were not considered" for h in site.hosts if h.name not in current]
    report = Report(params, host.name, service, time.time(), notes=missing + notes)
    for i, choice in enumerate(chosen):
        label = f"{LABEL[choice.security]}: {choice.target.key} ({i + 1}/{len(chosen)})"

        async def step(elapsed: float, total: float, i: int = i, label: str = label) -> None:
            if progress is not None:
                await progress(label, (i + elapsed / total) / len(chosen))

        if i:
            await asyncio.sleep(settle_s)  # let the previous run's queues drain
        record = await run_load(
            site,
            targets,
            choice.target.url,
            params,
            host=host,
            progress=step,
            history=history,
            why=WHY,
            labels={"security": choice.security.value},
        )
        report.rows.append(Row(choice, record.result))
        if (now := _online(snapshots(), choice.target)) not in (None, choice.vcpus):
            report.notes.append(
                f"{choice.target.host}/{choice.target.cvm}: online vCPUs changed from "
                f"{choice.vcpus} to {now} during its run; its row is not comparable"
            )
    if progress is not None:
        await progress("done", 1.0)
    return report


def _online(snapshots: Mapping[str, Snapshot], target: Target) -> int | None:
    snapshot = snapshots.get(target.host)
    cvm = next((c for c in snapshot.cvms if c.name == target.cvm), None) if snapshot else None
    return cvm.online_vcpus if cvm else None
