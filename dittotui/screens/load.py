"""Run wrk against one of a CVM's services: script, load host, connections and duration within the site's bounds,
with a progress bar, cancel, and the result (kept next to the service and in the run history)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.validation import Integer
from textual.widgets import Button, Input, Label, ProgressBar, Select

from dittotui.messages import WrkRunRecorded
from hostctl.client.site import Site
from hostctl.errors import HostctlError
from hostctl.load import generators as loadgen
from hostctl.load import wrk
from hostctl.load.runs import RunLog
from hostctl.wire.model import Service, Snapshot


class LoadScreen(ModalScreen[None]):
    """Pick a service, script, load host, connections and duration; escape or Cancel stops a run."""

    BINDINGS: ClassVar[list[BindingType]] = [("escape", "close", "Cancel a run / close")]
    DEFAULT_CSS = "LoadScreen #result { width: 100%; }"  # long errors wrap instead of being cut

    def __init__(
        self,
        host: str,
        services: list[Service],
        *,
        site: Site,
        snapshots: Callable[[], Mapping[str, Snapshot]],
        runs: RunLog,
    ) -> None:
        super().__init__()
        self.host = host
        self.services = services  # of one CVM; the first is the dialog's default
        self.site = site
        self.snapshots = snapshots  # each host's last snapshot, for the services its agent reports
        self.runs = runs
        self._load_task: asyncio.Task[None] | None = None

    def compose(self) -> ComposeResult:
        first = self.services[0]
        script = first.name if first.name in wrk.SCRIPTS else "home-timeline"
        hosts = loadgen.load_hosts(self.site)
        bounds = self.site.load
        with Vertical(id="dialog"):
            yield Label(f"wrk load on {self.host}/{first.cvm}", id="question")
            yield Select([(s.name, s.url) for s in self.services], value=first.url, allow_blank=False, id="service")
            with Horizontal(classes="fields"):
                yield Label("script")
                yield Select([(s, s) for s in wrk.SCRIPTS], value=script, allow_blank=False, id="script")
                yield Label("from")
                yield Select([(h, h) for h in hosts], value=hosts[0], allow_blank=False, id="load-host")
            with Horizontal(classes="fields"):
                yield Label("connections")
                yield Input(
                    str(min(16, bounds.max_connections)),
                    id="connections",
                    validators=[Integer(1, bounds.max_connections)],
                )
                yield Label("seconds")
                yield Input(
                    str(min(10, bounds.max_duration_s)), id="duration", validators=[Integer(1, bounds.max_duration_s)]
                )
            yield ProgressBar(total=1, show_eta=False, id="progress")
            yield Label("", id="result")
            with Horizontal(id="buttons"):
                yield Button("Run", variant="warning", id="run")
                yield Button("Cancel", variant="error", id="cancel", disabled=True)
                yield Button("Close", variant="primary", id="close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "close":
            self.cancel_run()
            self.dismiss()
        elif event.button.id == "cancel":
            self.cancel_run()
        elif self._load_task is None:
            self.start()

    def action_close(self) -> None:
        """Escape: stop a running wrk, else close the dialog."""
        if self._load_task is not None:
            self.cancel_run()
        else:
            self.dismiss()

    def cancel_run(self) -> None:
        if self._load_task is not None:
            self._load_task.cancel()

    def start(self) -> None:
        bounds = self.site.load
        inputs = [self.query_one("#connections", Input), self.query_one("#duration", Input)]
        if any(not i.is_valid for i in inputs):
            self.query_one("#result", Label).update(
                f"connections must be 1..{bounds.max_connections} and seconds 1..{bounds.max_duration_s} "
                "(the site's [load] bounds)"
            )
            return
        url = self.query_one("#service", Select).value
        service = next(s for s in self.services if s.url == url)
        connections = int(inputs[0].value)
        params = wrk.Params(
            threads=max(1, min(2, connections, bounds.max_threads)),
            connections=connections,
            duration_s=int(inputs[1].value),
            script=str(self.query_one("#script", Select).value),
        )
        self.run_load(service, params, str(self.query_one("#load-host", Select).value))

    @work(exclusive=True)
    async def run_load(self, service: Service, params: wrk.Params, load_host: str) -> None:
        self._load_task = asyncio.current_task()
        bar = self.query_one("#progress", ProgressBar)
        result_label = self.query_one("#result", Label)
        cancel = self.query_one("#cancel", Button)
        bar.update(total=params.duration_s, progress=0)
        result_label.update(f"running {params.describe()} from {load_host}...")
        cancel.disabled = False

        async def progress(elapsed: float, total: float) -> None:
            bar.update(total=total, progress=elapsed)

        try:
            reported = {host: snapshot.services for host, snapshot in self.snapshots().items()}
            record = await loadgen.run_load(
                self.site,
                loadgen.Targets(self.site, reported),
                service.url,
                params,
                host=loadgen.load_host(self.site, load_host),
                progress=progress,
                history=self.runs,
                why="console",
            )
        except HostctlError as e:
            result_label.update(f"[red]{e}[/red]")
            return
        except asyncio.CancelledError:
            if self.is_attached:
                result_label.update("cancelled: wrk was stopped, nothing recorded")
                bar.update(progress=0)
            raise
        finally:
            self._load_task = None
            if self.is_attached:
                cancel.disabled = True
        self.app.post_message(WrkRunRecorded(record))
        result = record.result
        bar.update(progress=params.duration_s)
        result_label.update(
            f"p50 {result.p(50):.1f} ms  p90 {result.p(90):.1f} ms  p99 {result.p(99):.1f} ms  "
            f"{result.rps:.0f} req/s  {result.errors} errors"
        )
