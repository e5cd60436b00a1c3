"""Table rows from the fleet's links: plain functions, no widgets, so they are cheap to test and to rebuild."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich.text import Text

from hostctl.link import HostLink, LinkState
from hostctl.model import CVM, DomainState
from hostctl.wrk import WrkResult

Row = tuple[Text | str, ...]

STATE_STYLE = {LinkState.FRESH: "green", LinkState.STALE: "bold yellow", LinkState.CONNECTING: "red"}
SECURITY_STYLE = {"sev-snp": "bold magenta", "sev-es": "magenta", "sev": "cyan", "none": "dim"}
BAR_WIDTH = 8


@dataclass(frozen=True)
class CVMRef:
    """Which CVM on which host: the key of a CVM row."""

    host: str
    cvm: str

    @property
    def key(self) -> str:
        return f"{self.host}/{self.cvm}"

    @classmethod
    def parse(cls, key: str) -> CVMRef:
        host, _, cvm = key.partition("/")
        return cls(host, cvm)


def state_text(link: HostLink) -> Text:
    """`live`, `stale 12s` (the age of the last data) or `connecting`."""
    age = link.age
    if link.state is LinkState.FRESH:
        label = "live"
    elif link.state is LinkState.STALE and age is not None:
        label = f"stale {age:.0f}s"
    else:
        label = link.state.value
    return Text(label, style=STATE_STYLE[link.state])


def host_row(link: HostLink) -> Row:
    """Host, state with data age, CPU, memory, SNP, vCPUs used of capacity (or what is wrong)."""
    state = state_text(link)
    snap = link.snapshot
    if snap is None:
        return (link.name, state, "-", "-", "-", Text(link.error[:80], style="red"))
    h = snap.host
    used = sum(c.online_vcpus for c in snap.cvms if c.state is DomainState.RUNNING)
    snp = "-" if h.sev_snp is None else ("yes" if h.sev_snp else "no")
    capacity = Text(f"{used}/{h.cpus}", style="bold red" if used > h.cpus else "")
    detail = Text(link.error[:80], style="yellow") if link.error else capacity
    return (link.name, state, f"{h.cpu_percent:5.1f}", f"{h.memory_mib / 1024:.0f}G", snp, detail)


def workers_bar(cvm: CVM) -> Text:
    """`███░░░░░ 3/8`: active workers of the CVM's maximum."""
    filled = round(BAR_WIDTH * cvm.workers_active / cvm.workers_max) if cvm.workers_max else 0
    bar = Text("█" * filled, style="green") + Text("░" * (BAR_WIDTH - filled), style="dim")
    return bar + Text(f" {cvm.workers_active}/{cvm.workers_max}")


def cvm_row(host: str, cvm: CVM, *, marked: bool, stale: bool, elastic: str) -> Row:
    """Mark, CVM, host, workers, CPU %, security, state, boot vCPUs, policy flags, elastic policy."""
    dim = "dim" if stale else ""
    flags = ",".join(f for f in cvm.policy_flags if f != "reserved-1") if cvm.security.confidential else ""
    return (
        Text("●", style="bold yellow") if marked else " ",
        Text(cvm.name, style=dim or "bold"),
        Text(host, style=dim),
        workers_bar(cvm),
        f"{cvm.cpu_percent:5.1f}",
        Text(cvm.security.value, style=SECURITY_STYLE[cvm.security.value]),
        Text(cvm.state.value, style="green" if cvm.state is DomainState.RUNNING else "yellow"),
        str(cvm.boot_vcpus),
        flags or "-",
        elastic,
    )


def matches(text: str, *fields: str) -> bool:
    """Case-insensitive substring filter over a row's fields (every word must match)."""
    haystack = " ".join(fields).lower()
    return all(word in haystack for word in text.lower().split())


def cvm_rows(links: Iterable[HostLink], *, filter_text: str = "", marks: set[str] = frozenset()) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for link in links:
        if link.snapshot is None:
            continue
        stale = link.state is not LinkState.FRESH
        for cvm in link.snapshot.cvms:
            ref = CVMRef(link.name, cvm.name)
            if filter_text and not matches(filter_text, link.name, cvm.name, cvm.security.value, cvm.state.value):
                continue
            elastic = "-" if "policy" not in link.hello.get("methods", []) else "off"
            rows[ref.key] = cvm_row(link.name, cvm, marked=ref.key in marks, stale=stale, elastic=elastic)
    return rows


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int, ceiling: float) -> Text:
    """The last `width` values as block characters, scaled to `ceiling` or the largest value."""
    recent = list(values)[-width:]
    top = max([ceiling, *recent]) or 1.0
    return Text("".join(SPARKS[min(len(SPARKS) - 1, int(v / top * len(SPARKS)))] for v in recent), style="cyan")


def service_rows(links: Iterable[HostLink], results: dict[str, WrkResult], history: dict[str, Sequence[float]],
                 *, slo_ms: float, filter_text: str = "") -> dict[str, Row]:
    """Service, CVM, probed p50/p99 (10 s), p99 trend, req/s, errors, SLO, last wrk p99, host."""
    rows: dict[str, Row] = {}
    for link in links:
        if link.snapshot is None:
            continue
        for s in link.snapshot.services:
            key = f"{link.name}/{s.cvm}/{s.name}"
            if filter_text and not matches(filter_text, link.name, s.cvm, s.name):
                continue
            live = s.latency.get("10s")
            breach = live is not None and live.count > 0 and live.p99 > slo_ms
            probed: tuple[Text | str, ...] = ("-", "-", "", "-", "-", "")
            if live is not None and live.count:
                probed = (f"{live.p50:.1f}", Text(f"{live.p99:.1f}", style="bold red" if breach else ""),
                          sparkline(history.get(key, ()), 10, slo_ms), f"{live.rps:.1f}",
                          Text(str(live.errors), style="red" if live.errors else ""),
                          Text("!", style="bold red") if breach else Text("ok", style="green"))
            r = results.get(key)
            wrk = Text(f"{r.p(99):.0f}ms", style="red" if r.errors else "") if r is not None else "-"
            rows[key] = (s.name, s.cvm, *probed, wrk, link.name)
    return rows
