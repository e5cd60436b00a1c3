"""One host's doctor report, as its agent runs it: every check on a line, the advice under each one not ok."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from hostctl.client.link import HostLink
from hostctl.errors import HostctlError
from hostctl.wire import rpc
from hostctl.wire.doctor import Report, Status

STYLES = {
    Status.OK: "green",
    Status.WARN: "yellow",
    Status.FAIL: "bold red",
    Status.EMULATED: "cyan",
    Status.NA: "dim",
}


class DoctorScreen(ModalScreen[None]):
    """Asks the host's agent for its checks and lists them; `r` asks again, `escape` or `q` closes."""

    BINDINGS: ClassVar[list[BindingType]] = [("escape,q", "dismiss", "Close"), ("r", "run", "Run again")]
    DEFAULT_CSS = "DoctorScreen #dialog { width: 110; }"

    def __init__(self, link: HostLink) -> None:
        super().__init__()
        self.link = link
        self.report: Report | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):
            yield Label(f"Doctor: {self.link.name}", id="question")
            yield Static(id="checks")
            yield Label("r runs it again; escape closes", classes="hint")

    def on_mount(self) -> None:
        self.action_run()

    def action_run(self) -> None:
        self.query_one("#checks", Static).update(Text(f"asking {self.link.name}'s agent...", style="dim"))
        self.run_checks()

    @work(exclusive=True, group="doctor")
    async def run_checks(self) -> None:
        checks = self.query_one("#checks", Static)
        try:
            self.report = await self.link.doctor()
        except (HostctlError, rpc.RpcError) as e:
            checks.update(Text(f"doctor not run: {e}", style="red"))
            return
        checks.update(checklist(self.report))
        self.query_one("#question", Label).update(verdict(self.report))


def checklist(report: Report) -> Table:
    """The report as a table: status, check, what was found (and the advice under a check not ok)."""
    table = Table(box=None, show_header=False, expand=True, padding=(0, 1))
    table.add_column("status", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("found", ratio=1)
    for check in report.checks:
        found = Text(check.detail)
        if check.advice and check.status in (Status.FAIL, Status.WARN):
            found.append(f"\n→ {check.advice}", style="italic")
        label = "FAIL" if check.status is Status.FAIL else check.status.value
        table.add_row(Text(label, style=STYLES[check.status]), check.name, found)
    if report.emulated:
        table.add_row(Text("", style="cyan"), "emulated", Text(report.emulated, style="cyan"))
    return table


def verdict(report: Report) -> Text:
    """`Doctor: HOST: passed (3 ok, 12 emulated)`, or FAILED, with the count of each outcome."""
    text = Text(f"Doctor: {report.host}: ")
    text.append("passed" if report.passed else "FAILED", style="bold green" if report.passed else "bold red")
    counts = ", ".join(f"{report.count(s)} {s.value}" for s in Status if report.count(s))
    return text.append(f" ({counts})")
