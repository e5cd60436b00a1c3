"""One CVM in detail: what it is, its elastic policy, and its worker, CPU and latency history with wrk runs marked."""

from __future__ import annotations

import bisect
from datetime import datetime
from typing import ClassVar

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, Sparkline, Static

from dittotui.messages import ScaleRequested
from dittotui.trends import Trends
from hostctl.client.link import HostLink
from hostctl.client.ref import CVMRef
from hostctl.client.render import launch_facts, online_text, sev_lines
from hostctl.load.runs import RunRecord
from hostctl.wire.model import CVM


class DetailScreen(Screen[None]):
    """Facts and plots for the CVM `ref`, refreshed every second."""

    BINDINGS: ClassVar[list[BindingType]] = [
        ("escape,enter", "app.pop_screen", "Back"),
        ("plus", "scale(1)", "Wake worker"),
        ("minus", "scale(-1)", "Park worker"),
    ]

    def __init__(self, ref: CVMRef, link: HostLink, trends: Trends, runs: dict[str, list[RunRecord]]) -> None:
        super().__init__()
        self.ref = ref
        self.link = link
        self.trends = trends
        self.runs = runs  # host/cvm/service -> its wrk runs, oldest first

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="detail"):
            yield Static(id="facts")
            yield Label("Active workers (last 10 min)", classes="plot-title")
            yield Sparkline([], id="workers-plot")
            yield Label("CPU % (last 10 min)", classes="plot-title")
            yield Sparkline([], id="cpu-plot")
            for service in self.services():
                yield Label(f"p99 ms of {service}, probed (last 10 min)", classes="plot-title")
                yield Sparkline([], id=f"p99-{service}", classes="latency-plot")
                yield Static("", id=f"runs-{service}", classes="run-marks")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"{self.ref.key}"
        self.refresh_detail()
        self.set_interval(1.0, self.refresh_detail)

    def services(self) -> list[str]:
        snap = self.link.snapshot
        return [s.name for s in snap.services if s.cvm == self.ref.cvm] if snap else []

    def refresh_detail(self) -> None:
        cvm = self.link.cvm(self.ref.cvm)
        facts = self.query_one("#facts", Static)
        if cvm is None:
            facts.update(f"{self.ref.key}: not reported by {self.ref.host} ({self.link.state.value})")
            return
        scaled = ""
        if cvm.scaled_at:
            when = datetime.fromtimestamp(cvm.scaled_at).strftime("%H:%M:%S")
            scaled = f"\nlast scaled {when} by {cvm.scaled_by}"
        flags = ", ".join(cvm.policy_flags) or "-"
        e = cvm.elastic
        elastic = (
            "no elastic policy on this host"
            if e is None
            else (
                f"elastic policy [b]{e.policy}[/b] {'on' if e.enabled else 'off'}"
                + (f"   last decision {escape(e.decision)}: {escape(e.reason)}" if e.decision else "")
            )
        )
        facts.update(
            f"[b]{cvm.name}[/b]  on {self.ref.host} ({self.link.state.value})   {cvm.state.value}   uuid {cvm.uuid}\n"
            f"security [b]{cvm.security.value}[/b]  policy {cvm.policy:#x} ({flags})\n"
            f"{self.launch_text(cvm)}"
            f"vCPUs: boot {cvm.boot_vcpus}, online {escape(online_text(cvm))}, max {cvm.max_vcpus}   "
            f"workers [b]{'?' if cvm.workers_active is None else cvm.workers_active}/{cvm.workers_max}[/b] "
            f"via driver '{cvm.driver}'   "
            f"CPU {'-' if cvm.cpu_percent is None else f'{cvm.cpu_percent:.1f}%'} of online vCPUs{scaled}\n{elastic}"
        )
        series = self.trends.of(self.ref.key)
        self.query_one("#workers-plot", Sparkline).data = list(series.workers)
        self.query_one("#cpu-plot", Sparkline).data = list(series.cpu)
        for plot in self.query(".latency-plot").results(Sparkline):
            service = (plot.id or "").removeprefix("p99-")
            key = f"{self.ref.key}/{service}"
            plot.data = list(self.trends.p99.get(key, ()))
            marks = self.query_one(f"#runs-{service}", Static)
            marks.update(run_marks(list(self.trends.p99_at.get(key, ())), self.runs.get(key, []), plot.size.width))

    def launch_text(self, cvm: CVM) -> str:
        """Its launch facts (risky ones in red) and its host's SEV facts, as markup lines; empty when not a CVM."""
        if not cvm.security.confidential:
            return ""
        snap = self.link.snapshot
        host = None if snap is None else snap.host
        smt = None if host is None or host.confidential is None else host.confidential.smt
        lines = [
            f"[bold red]{escape(label)} {escape(value)}[/]" if risky else f"{escape(label)} {escape(value)}"
            for label, value, risky in launch_facts(cvm, smt)
        ]
        if host is not None:
            lines += [
                f"[bold red]{escape(line)}[/]" if line.startswith("ES/SNP slots full") else f"host {escape(line)}"
                for line in sev_lines(host)
            ]
        return "".join(f"{line}\n" for line in lines)

    def action_scale(self, step: int) -> None:
        self.app.post_message(ScaleRequested([self.ref], step))


def run_marks(sampled_at: list[float], runs: list[RunRecord], width: int) -> Text:
    """A line under a p99 plot: `▲` where a wrk run started, then the last run's figures."""
    line = [" "] * width
    if sampled_at and width:
        for run in runs:
            if sampled_at[0] <= run.started <= sampled_at[-1]:
                index = bisect.bisect_left(sampled_at, run.started)
                line[min(width - 1, index * width // len(sampled_at))] = "▲"
    text = Text("".join(line), style="bold yellow")
    if runs:
        last = runs[-1]
        when = datetime.fromtimestamp(last.started).strftime("%H:%M:%S")
        text.append(
            f"\nwrk {when} from {last.load_host}: {last.script or 'default'} -c{last.connections} "
            f"{last.duration_s}s → p50 {last.result.p(50):.1f} ms, p99 {last.result.p(99):.1f} ms, "
            f"{last.result.rps:.0f} req/s, {last.result.errors} errors "
            f"({len(runs)} run{'' if len(runs) == 1 else 's'} in the history)",
            style="",
        )
    return text
