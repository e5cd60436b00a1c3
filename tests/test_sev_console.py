"""SEV facts end to end: a real demo agent (its facts emulated, and marked so), its snapshot over the wire, the
console's Hosts table and a CVM's detail, driven by Pilot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dittotui.screens.detail import DetailScreen
from dittotui.tables.hosts import HostsTable, slots_cell
from hostctl.wire import rpc
from hostctl.wire.model import Snapshot
from tests.support.agents import CONFIG, AgentProcess
from tests.test_console import make_app, select, until

# One ES/SNP slot, taken by an SNP CVM whose policy allows debugging and forbids SMT (the emulated host has it on).
HOST = """
[[hosts]]
name = "mec-full"
es_slots = 1
  [[hosts.cvms]]
  name = "snp"
  security = "sev-snp"
  policy = 0xA0000
  boot_vcpus = 1
  max_vcpus = 5
  online_vcpus = 2
"""


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[AgentProcess]:
    proc = AgentProcess(tmp_path, "mec-full", wake_ms=0)
    proc.config.write_text(CONFIG.format(wake_ms=0, hosts=HOST))
    await proc.start()
    yield proc
    proc.stop()


async def test_the_agent_sends_the_facts_marked_emulated(agent: AgentProcess) -> None:
    snapshot = Snapshot.from_dict(await rpc.call_unix(str(agent.socket), "snapshot"))
    facts = snapshot.host.confidential
    assert facts is not None and facts.emulated
    assert (facts.es_guests, facts.max_es_guests, facts.es_free, facts.smt) == (1, 1, 0, True)
    assert facts.firmware is None and facts.why["firmware"] == "emulated host: no SEV firmware to ask"
    (cvm,) = snapshot.cvms
    assert cvm.policy_flags == ["reserved-1", "debug-allowed"] and set(cvm.risky) == {"debug-allowed"}
    assert cvm.smt_allowed is False and cvm.launch is not None


async def test_a_full_host_and_risky_bits_are_shown(agent: AgentProcess) -> None:
    app = make_app({"mec-full": agent})
    async with app.run_test(size=(140, 40)) as pilot:
        table = app.query_one(HostsTable)
        await until(pilot, lambda: table.row_count == 1 and "full" in str(table.get_cell("mec-full", "slots")))
        assert str(table.get_cell("mec-full", "snp")) == "yes"
        await select(pilot, app, "mec-full/snp")
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        await pilot.pause(0.2)
        facts = str(app.screen.query_one("#facts").render())
        assert "risky debug-allowed: the host may decrypt" in facts
        assert "SMT allowed: no, host SMT on: the firmware refuses to launch it with SMT on" in facts
        assert "ES/SNP slots full: no other SEV-ES or SNP CVM can launch on mec-full" in facts
        assert "host emulated (demo): SEV supported yes enabled yes" in facts


@pytest.mark.parametrize(
    ("value", "text", "style"),
    [((2, 15), "2/15", ""), ((15, 15), "15/15 full", "bold red"), ((2, None), "2/?", "dim"), ((0, 0), "none", "dim")],
)
def test_slot_cells(value: tuple[int, int | None], text: str, style: str) -> None:
    cell = slots_cell(value)
    assert (str(cell), getattr(cell, "style", "")) == (text, style)
