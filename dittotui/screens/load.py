"""Run wrk against one of a CVM's services from this machine, with a progress bar and the result."""

from __future__ import annotations

import asyncio

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.validation import Integer
from textual.widgets import Button, Input, Label, ProgressBar, Select

from hostctl import wrk
from hostctl.errors import HostctlError
from hostctl.model import Service

MAX_CONNECTIONS = 256
MAX_DURATION = 300


class LoadScreen(ModalScreen[None]):
    """Pick a service, connections and duration; the result is kept next to the service."""

    BINDINGS = [("escape", "close", "Close")]

    def __init__(self, host: str, services: list[Service]) -> None:
        super().__init__()
        self.host = host
        self.services = services
        self._load_task: asyncio.Task[None] | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"wrk load on {self.host}/{self.services[0].cvm}", id="question")
            yield Select([(s.name, s.url) for s in self.services], value=self.services[0].url, allow_blank=False,
                         id="service")
            with Horizontal(classes="fields"):
                yield Label("connections")
                yield Input("16", id="connections", validators=[Integer(1, MAX_CONNECTIONS)])
                yield Label("seconds")
                yield Input("10", id="duration", validators=[Integer(1, MAX_DURATION)])
            yield ProgressBar(total=1, show_eta=False, id="progress")
            yield Label("", id="result")
            with Horizontal(id="buttons"):
                yield Button("Run", variant="warning", id="run")
                yield Button("Close", variant="primary", id="close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "close":
            self.action_close()
        elif self._load_task is None:
            self.start()

    def action_close(self) -> None:
        if self._load_task is not None:
            self._load_task.cancel()
        self.dismiss()

    def start(self) -> None:
        inputs = [self.query_one("#connections", Input), self.query_one("#duration", Input)]
        invalid = [i for i in inputs if not i.is_valid]
        if invalid:
            self.query_one("#result", Label).update(
                f"connections must be 1..{MAX_CONNECTIONS} and seconds 1..{MAX_DURATION}")
            return
        url = self.query_one("#service", Select).value
        service = next(s for s in self.services if s.url == url)
        self.run_load(service, int(inputs[0].value), int(inputs[1].value))

    @work(exclusive=True)
    async def run_load(self, service: Service, connections: int, duration: int) -> None:
        self._load_task = asyncio.current_task()
        bar = self.query_one("#progress", ProgressBar)
        result_label = self.query_one("#result", Label)
        bar.update(total=duration, progress=0)
        result_label.update(f"running wrk -c{connections} -d{duration}s on {service.name}...")
        ticker = self.set_interval(1.0, lambda: bar.advance(1))
        try:
            result = await wrk.run(service.url, threads=min(4, connections), connections=connections,
                                   duration_s=duration)
        except HostctlError as e:
            result_label.update(f"[red]{e}[/red]")
            return
        finally:
            ticker.stop()
            self._load_task = None
        bar.update(progress=duration)
        result_label.update(f"p50 {result.p(50):.1f} ms  p99 {result.p(99):.1f} ms  {result.rps:.0f} req/s  "
                            f"{result.errors} errors")
        self.app.record_load(self.host, service, result)  # type: ignore[attr-defined]
