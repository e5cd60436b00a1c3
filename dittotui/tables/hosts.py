"""The hosts table: one row per host of the site, with the state of its link."""

from __future__ import annotations

from rich.text import Text

from dittotui.tables import cells
from dittotui.tables.live import Cell, Column, LiveTable, Row, shared
from hostctl.client.link import HostLink, LinkState

AGENTLESS_MARK = "◇"  # a host with no agent: its agent runs in this console, and so do its policies


def host_cell(value: tuple[str, bool]) -> Cell:
    """The host's name, marked `◇` when it has no agent of its own."""
    name, agentless = value
    return Text.assemble(name, (f" {AGENTLESS_MARK}", "cyan")) if agentless else name


def snp_cell(value: tuple[bool | None, bool | None] | None) -> Cell:
    """`yes` (libvirt supports SNP and kvm_amd enables it), `off` (supported, not enabled), `no`, `yes?` (supported,
    enablement unknown) or `-`."""
    if value is None or value[0] is None:
        return "-"
    supported, enabled = value
    if not supported:
        return "no"
    return "yes" if enabled else Text("off", style="yellow") if enabled is False else "yes?"


def slots_cell(value: tuple[int, int | None] | None) -> Cell:
    """`2/15` SEV-ES/SNP CVMs running of the most the firmware allows; `15/15 full` in red (no other can launch);
    `2/?` when the maximum is unknown; `none` on a host with no ES/SNP slot at all."""
    if value is None:
        return "-"
    used, maximum = value
    if maximum is None:
        return Text(f"{used}/?", style="dim")
    if maximum == 0:
        return Text("none", style="dim")  # no SEV, or no ASID set aside for SEV-ES
    if used >= maximum:
        return Text(f"{used}/{maximum} full", style="bold red")
    return f"{used}/{maximum}"


class HostsTable(LiveTable):
    """Host, link state, CPU, memory, SNP (supported and enabled), SEV-ES/SNP slots used of max and vCPUs used of
    capacity; rows from `host_row`."""

    COLUMNS = (
        Column("host", "Host", 12, host_cell),
        Column("state", "State", 14, cells.link_state),
        Column("cpu", "CPU%", 5, cells.number),
        Column("mem", "Mem", 5, cells.gib),
        Column("snp", "SNP", 4, snp_cell),
        Column("slots", "ES/SNP", 10, slots_cell),
        Column("capacity", "vCPUs used/cap", 20, cells.capacity),
    )


def host_row(link: HostLink) -> Row:
    """The values of a host's row, one per column of `HostsTable` (tuples shared: see `dittotui.tables.live`)."""
    age = None if link.age is None or link.state is LinkState.FRESH else int(link.age)
    state = shared((link.state.value, age))
    host = shared((link.name, link.agentless))
    snap = link.snapshot
    if snap is None:
        return (host, state, None, None, None, None, shared((None, None, link.error, 0)))
    h = snap.host
    facts = h.confidential
    used, unknown = link.vcpus_running
    return (
        host,  # host: (name, no agent of its own)
        state,  # state: (link state, whole seconds of data age)
        h.cpu_percent,  # cpu
        h.memory_mib // 1024,  # mem (GiB)
        shared((h.sev_snp, None if facts is None else facts.sev_snp_enabled)),  # snp: (libvirt supports, enabled)
        None if facts is None else shared((facts.es_guests, facts.max_es_guests)),  # slots: (ES/SNP running, max)
        shared((used, h.cpus, link.error, unknown)),  # capacity: (online vCPUs counted, CPUs, error, not counted)
    )
