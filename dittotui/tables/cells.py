"""How a raw value of a row is drawn in its cell: plain text where one style will do, `Text` where it will not."""

from __future__ import annotations

from rich.text import Text

from dittotui.tables.live import Cell

STATE_STYLE = {"fresh": "green", "stale": "bold yellow", "connecting": "red"}
SECURITY_STYLE = {"sev-snp": "bold magenta", "sev-es": "magenta", "sev": "cyan", "none": "dim"}
SPARKS = "▁▂▃▄▅▆▇█"
BAR_WIDTH = 8


def plain(value: object) -> str:
    return "-" if value is None else str(value)


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:5.1f}"


def gib(value: int | None) -> str:
    return "-" if value is None else f"{value}G"


def link_state(value: tuple[str, int | None]) -> Text:
    """`live`, `stale 12s` (the age of the last data) or `connecting`."""
    name, age = value
    label = "live" if name == "fresh" else f"stale {age}s" if name == "stale" and age is not None else name
    return Text(label, style=STATE_STYLE[name])


def capacity(value: tuple[int | None, int | None, str, int]) -> Text:
    """`used/cpus` online vCPUs (red when over; `used+?` when some running CVM's count is unknown), or the link's
    error (cut to the cell; the event log has it whole)."""
    used, cpus, error, unknown = value
    if error:
        return Text(error, style="yellow" if used is not None else "red")
    style = "bold red" if used and cpus and used > cpus else "yellow" if unknown else ""
    return Text(f"{used}{'+?' if unknown else ''}/{cpus}", style=style)


def name(value: tuple[str, bool]) -> Text:
    """A CVM's name, dimmed when its host's data are stale."""
    text, stale = value
    return Text(text, style="dim" if stale else "bold")


def host_name(value: tuple[str, bool]) -> Text:
    text, stale = value
    return Text(text, style="dim" if stale else "")


def mark(value: bool) -> Cell:
    return Text("●", style="bold yellow") if value else " "


def workers(value: tuple[int | None, int, str]) -> Text:
    """`███░░░░░ 3/8`: active workers of the CVM's maximum; `?/8 paused` when the count is unknown, with why."""
    active, maximum, why = value
    if active is None:
        return Text(f"?/{maximum} {why}", style="yellow")
    filled = round(BAR_WIDTH * active / maximum) if maximum else 0
    return Text.assemble(("█" * filled, "green"), ("░" * (BAR_WIDTH - filled), "dim"), f" {active}/{maximum}")


def security(value: str) -> Text:
    return Text(value, style=SECURITY_STYLE.get(value, ""))


def run_state(value: str) -> Text:
    return Text(value, style="green" if value == "running" else "yellow")


def elastic(value: tuple[str, bool, bool] | None) -> Cell:
    """`● threshold` when the policy runs, `○ threshold` when it is off; yellow when it holds for want of data."""
    if value is None:
        return "-"
    policy, enabled, alert = value
    if not enabled:
        return Text(f"○ {policy}", style="dim")
    return Text(f"● {policy}", style="bold yellow" if alert else "bold green")


def decision(value: tuple[str, str, bool] | None) -> Cell:
    """The policy's last decision and its reason."""
    if value is None or not value[0]:
        return "-"
    label, reason, alert = value
    style = "bold yellow" if alert else {"up": "green", "down": "cyan"}.get(label.split(" ")[0], "")
    return Text.assemble((label, style), f" {reason}" if reason else "")


def p99(value: tuple[float | None, bool]) -> Cell:
    """A probed p99 in ms, red when it breaches the SLO."""
    latency, breach = value
    return "-" if latency is None else Text(f"{latency:.1f}", style="bold red" if breach else "")


def sparkline(value: tuple[tuple[float, ...], float] | tuple[()]) -> Text:
    """The recent values as block characters, scaled to the SLO or the largest value."""
    if not value:
        return Text("")
    values, ceiling = value
    top = max([ceiling, *values]) or 1.0
    return Text("".join(SPARKS[min(len(SPARKS) - 1, int(v / top * len(SPARKS)))] for v in values), style="cyan")


def errors(value: int | None) -> Cell:
    return "-" if value is None else Text(str(value), style="red" if value else "")


def slo(value: bool | None) -> Cell:
    return "" if value is None else Text("!", style="bold red") if value else Text("ok", style="green")


def wrk_p99(value: tuple[float, int] | None) -> Cell:
    """The last wrk run's p99, red when it had errors."""
    return "-" if value is None else Text(f"{value[0]:.0f}ms", style="red" if value[1] else "")
