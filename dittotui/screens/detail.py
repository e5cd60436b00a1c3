"""One CVM in detail: what it is, and its worker, CPU and latency history."""

from __future__ import annotations

from datetime import datetime

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, Sparkline, Static

from dittotui.history import History
from dittotui.rows import CVMRef
from hostctl.link import HostLink
from hostctl.model import CVM


class DetailScreen(Screen[None]):
    """Facts and plots for the CVM `ref`, refreshed every second."""

    BINDINGS = [("escape,enter", "app.pop_screen", "Back"), ("plus", "scale(1)", "Wake worker"),
                ("minus", "scale(-1)", "Park worker")]

    def __init__(self, ref: CVMRef, link: HostLink, history: History) -> None:
        super().__init__()
        self.ref = ref
        self.link = link
        self.history = history

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
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"{self.ref.key}"
        self.refresh_detail()
        self.set_interval(1.0, self.refresh_detail)

    def services(self) -> list[str]:
        snap = self.link.snapshot
        return [s.name for s in snap.services if s.cvm == self.ref.cvm] if snap else []

    def cvm(self) -> CVM | None:
        snap = self.link.snapshot
        return next((c for c in snap.cvms if c.name == self.ref.cvm), None) if snap else None

    def refresh_detail(self) -> None:
        cvm = self.cvm()
        facts = self.query_one("#facts", Static)
        if cvm is None:
            facts.update(f"{self.ref.key}: not reported by {self.ref.host} ({self.link.state.value})")
            return
        scaled = ""
        if cvm.scaled_at:
            when = datetime.fromtimestamp(cvm.scaled_at).strftime("%H:%M:%S")
            scaled = f"\nlast scaled {when} by {cvm.scaled_by}"
        flags = ", ".join(cvm.policy_flags) or "-"
        facts.update(
            f"[b]{cvm.name}[/b]  on {self.ref.host} ({self.link.state.value})   {cvm.state.value}   uuid {cvm.uuid}\n"
            f"security [b]{cvm.security.value}[/b]  policy {cvm.policy:#x} ({flags})\n"
            f"vCPUs: boot {cvm.boot_vcpus}, online {cvm.online_vcpus}, max {cvm.max_vcpus}   "
            f"workers [b]{cvm.workers_active}/{cvm.workers_max}[/b] via driver '{cvm.driver}'   "
            f"CPU {cvm.cpu_percent:.1f}%{scaled}"
        )
        series = self.history.of(self.ref.key)
        self.query_one("#workers-plot", Sparkline).data = list(series.workers)
        self.query_one("#cpu-plot", Sparkline).data = list(series.cpu)
        for plot in self.query(".latency-plot").results(Sparkline):
            service = (plot.id or "").removeprefix("p99-")
            plot.data = list(self.history.p99.get(f"{self.ref.key}/{service}", ()))

    def action_scale(self, step: int) -> None:
        self.app.scale_cvms([self.ref], step)  # type: ignore[attr-defined]
