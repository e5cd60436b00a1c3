"""The security-overhead experiment from the console: rounds of the same wrk load against one CVM of each security
type, interleaved; the tables with their intervals when it is done."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Markdown, ProgressBar

from dittotui.messages import ExperimentSaved
from hostctl.client.site import Site
from hostctl.errors import HostctlError
from hostctl.experiments import security_overhead as experiment
from hostctl.experiments.overhead_runs import Plan
from hostctl.load.generators import check_bounds
from hostctl.load.runs import RunLog
from hostctl.wire.model import Snapshot


class ExperimentScreen(ModalScreen[None]):
    """Run, show progress, then the tables with their intervals; saved as Markdown, CSV and SVG next to the run
    history. The plan is `hostctl experiment security-overhead`'s default one."""

    BINDINGS: ClassVar[list[BindingType]] = [("escape", "close", "Close")]

    def __init__(self, site: Site, snapshots: Callable[[], Mapping[str, Snapshot]], runs: RunLog) -> None:
        super().__init__()
        self.site = site
        self.snapshots = snapshots
        self.runs = runs
        self.folder = runs.path.parent / "experiments"
        self.plan = Plan()

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):
            yield Label(
                f"Security overhead: {self.plan.rounds} rounds of {self.plan.describe()} from this machine against "
                f"one CVM of each security type with the same online vCPUs, every type once per round in a shuffled "
                f"order (about {experiment.estimate_s(self.plan) / 60:.0f} min).",
                id="question",
            )
            yield ProgressBar(total=1.0, show_eta=False, id="progress")
            yield Label("", id="step")
            yield Markdown("", id="report")
            with Horizontal(id="buttons"):
                yield Button("Run", variant="warning", id="run")
                yield Button("Close", variant="primary", id="close")

    def on_mount(self) -> None:
        self.query_one("#dialog").styles.width = "96%"  # the tables with their intervals need the room

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "close":
            self.action_close()
        else:
            event.button.disabled = True
            self.run_experiment()

    def action_close(self) -> None:
        self.workers.cancel_all()  # a run in progress stops its wrk; nothing half-done is recorded
        self.dismiss()

    @work(exclusive=True)
    async def run_experiment(self) -> None:
        bar, step = self.query_one("#progress", ProgressBar), self.query_one("#step", Label)

        async def progress(what: str, fraction: float) -> None:
            bar.update(progress=fraction)
            step.update(what)

        try:
            for script, connections in self.plan.blocks():
                check_bounds(self.plan.params(script, connections), self.site.load)
            report = await experiment.security_overhead(
                self.site, self.snapshots, self.plan, progress=progress, history=self.runs
            )
            markdown, *others = await asyncio.to_thread(report.save, self.folder)
        except HostctlError as e:
            step.update(f"[red]{e}[/red]")
            self.query_one("#run", Button).disabled = False
            return
        await self.query_one("#report", Markdown).update(report.markdown())
        step.update(f"saved: {markdown} and {', '.join(p.name for p in others)}")
        self.app.post_message(ExperimentSaved("security-overhead experiment", markdown))
