"""`hostctl doctor`: on files recorded from SNP hosts and libvirt's documented XML (tests/data/doctor/README.md), on
libvirt's test driver (the demo's emulated hosts), through a real agent process over its socket, from the command
line and from the console."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from dittotui.app import DittoApp
from dittotui.screens.doctor import DoctorScreen
from dittotui.tables.hosts import HostsTable
from hostctl.cli.main import main
from hostctl.client.link import Fleet
from hostctl.client.render import format_doctor
from hostctl.client.site import Defaults, write
from hostctl.demo.site import demo_site
from hostctl.host.doctor import AgentFiles, Hypervisor, agent_files, examine, host_checks, read_domain
from hostctl.host.platform import read_platform
from hostctl.wire import rpc
from hostctl.wire.doctor import Report, Status
from tests.support import ROOT
from tests.support.agents import AgentProcess
from tests.support.nodes import make_node

DATA = Path(__file__).parent / "data" / "doctor"
SNP_DOMAIN = (DATA / "domain-sev-snp.xml").read_text()
HOST_CHECKS = ["libvirt", "QEMU", "SEV", "SEV-ES", "SEV-SNP", "kvm_amd sev", "kvm_amd sev_es", "kvm_amd sev_snp"]
HOST_CHECKS += ["/dev/sev", "SMT"]
QEMU_10 = Hypervisor("QEMU", (10, 5, 0), (10, 0, 0), ET.parse(DATA / "domcaps-qemu-10.0-amdsev.xml").getroot())


async def until(pilot: Pilot[None], predicate: Callable[[], bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await pilot.pause(0.05)


def by_name(checks: list[object]) -> dict[str, object]:
    return {c.name: c for c in checks}  # type: ignore[attr-defined]


def statuses(report: Report) -> dict[str, Status]:
    return {c.name: c.status for c in report.checks}


# -- an SNP host, from recorded files ------------------------------------------------------------------------------


def test_an_snp_host_with_an_snp_cvm_passes_every_check() -> None:
    checks = host_checks(QEMU_10, read_platform(DATA / "roots/snp-on"), [read_domain(SNP_DOMAIN, running=True)])
    assert {c.name: c.status for c in checks} == dict.fromkeys(HOST_CHECKS, Status.OK)
    found = {c.name: c.detail for c in checks}
    assert found["SEV"] == "offered; 59 SEV guests at most"
    assert found["SEV-ES"] == "450 SEV-ES/SNP guests at most (maxESGuests)"
    assert found["QEMU"] == "10.0.0, KVM" and found["kvm_amd sev_snp"] == "sev_snp=Y"


def test_snp_off_fails_for_the_snp_cvm_that_needs_it_and_only_warns_without_one() -> None:
    snp_off = read_platform(DATA / "roots/snp-off")
    failed = by_name(host_checks(QEMU_10, snp_off, [read_domain(SNP_DOMAIN, running=True)]))["kvm_amd sev_snp"]
    assert failed.status is Status.FAIL  # type: ignore[attr-defined]
    assert failed.detail == "sev_snp=N; needed by snp-web"  # type: ignore[attr-defined]
    assert "sev_snp=1" in failed.advice  # type: ignore[attr-defined]
    warned = by_name(host_checks(QEMU_10, snp_off, []))["kvm_amd sev_snp"]
    assert warned.status is Status.WARN  # type: ignore[attr-defined]
    assert "no sev-snp CVM is defined here" in warned.detail  # type: ignore[attr-defined]


def test_libvirt_before_10_5_cannot_launch_the_snp_cvm() -> None:
    old = Hypervisor("QEMU", (9, 0, 0), (7, 2, 0), QEMU_10.caps)
    snp = by_name(host_checks(old, read_platform(DATA / "roots/snp-on"), [read_domain(SNP_DOMAIN, running=True)]))
    assert snp["SEV-SNP"].status is Status.FAIL  # type: ignore[attr-defined]
    assert "libvirt 9.0.0 has no <launchSecurity type='sev-snp'> (needs 10.5)" in snp["SEV-SNP"].detail  # type: ignore[attr-defined]


def test_an_snp_cvm_that_forbids_smt_fails_while_smt_is_on() -> None:
    no_smt = SNP_DOMAIN.replace("0x00030000", "0x00020000")  # SMT-allowed (bit 16) cleared
    smt = by_name(host_checks(QEMU_10, read_platform(DATA / "roots/snp-on"), [read_domain(no_smt, running=True)]))
    assert smt["SMT"].status is Status.FAIL  # type: ignore[attr-defined]
    assert smt["SMT"].detail == (
        "SMT on (control on); the policy of snp-web forbids SMT: the firmware refuses to launch them"
    )  # type: ignore[attr-defined]


# -- libvirt's test driver: the demo's emulated hosts ---------------------------------------------------------------


def test_the_demo_is_emulated_and_passes(tmp_path: Path) -> None:
    report = examine(f"test://{make_node(tmp_path)}", root=tmp_path)
    assert report.passed and report.emulated.startswith("libvirt's test driver")
    found = statuses(report)
    hardware = ["QEMU", "SEV", "SEV-ES", "SEV-SNP", "kvm_amd sev", "kvm_amd sev_es", "kvm_amd sev_snp", "/dev/sev"]
    assert [found[name] for name in hardware] == [Status.EMULATED] * len(hardware)
    assert found["snp driver"] is Status.EMULATED and found["agent"] is Status.NA
    assert found["libvirt"] is Status.OK


def test_hotplug_on_sev_es_and_snp_fails_with_advice(tmp_path: Path) -> None:
    report = examine(f"test://{make_node(tmp_path, driver='hotplug')}", root=tmp_path)
    found = by_name(report.checks)
    assert not report.passed
    assert [found[f"{n} driver"].status for n in ("snp", "es", "sev", "plain")] == [  # type: ignore[attr-defined]
        Status.FAIL,
        Status.FAIL,
        Status.OK,
        Status.OK,
    ]
    assert "driver='guest'" in found["snp driver"].advice  # type: ignore[attr-defined]


def test_a_guest_driver_cvm_without_a_channel_or_an_answer_fails(tmp_path: Path) -> None:
    node = make_node(tmp_path, driver="guest")
    channel = "<devices><channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices>"
    text = node.read_text()
    first = text.index("</domain>")  # the first domain (snp) gets a channel; its guest cannot answer here
    node.write_text(text[:first] + channel + text[first:])
    report = examine(f"test://{node}", root=tmp_path, ping_s=1)
    found = by_name(report.checks)
    assert found["snp guest agent"].status is Status.FAIL  # type: ignore[attr-defined]
    assert found["snp guest agent"].detail.startswith("guest-ping failed: ")  # type: ignore[attr-defined]
    assert found["es guest agent"].detail.startswith("no guest-agent channel")  # type: ignore[attr-defined]
    assert "qemu-guest-agent" in found["es guest agent"].advice  # type: ignore[attr-defined]


def test_an_unreachable_libvirt_is_one_failed_check(tmp_path: Path) -> None:
    report = examine(f"test://{tmp_path / 'none.xml'}", root=tmp_path)
    assert [(c.name, c.status) for c in report.checks] == [("libvirt", Status.FAIL), ("agent", Status.NA)]


def test_agent_files_that_cannot_be_written_fail(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    audit, state, socket = agent_files(AgentFiles(blocker / "audit.jsonl", blocker / "audit.elastic.json"))
    assert (audit.status, state.status, socket.status) == (Status.FAIL, Status.FAIL, Status.NA)
    assert "cannot append" in audit.detail and "--audit PATH" in audit.advice


# -- through a real agent, the command line and the console ---------------------------------------------------------


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[AgentProcess]:
    proc = AgentProcess(tmp_path, "mec-a", wake_ms=0)
    await proc.start()
    try:
        yield proc
    finally:
        proc.stop()


async def test_the_agent_runs_the_doctor_over_its_socket(agent: AgentProcess) -> None:
    hello = await rpc.call_unix(str(agent.socket), "hello", timeout=5)
    assert "doctor" in hello["methods"]
    report = Report.from_dict(await rpc.call_unix(str(agent.socket), "doctor", timeout=25))
    found = by_name(report.checks)
    assert report.passed and report.host == "mec-a" and report.emulated
    assert found["socket"].status is Status.OK and "srw-------" in found["socket"].detail  # type: ignore[attr-defined]
    assert found["audit log"].status is Status.OK  # type: ignore[attr-defined]
    assert str(agent.audit) in found["audit log"].detail  # type: ignore[attr-defined]
    os.chmod(agent.socket, 0o666)  # anyone on the host could now reach it
    report = Report.from_dict(await rpc.call_unix(str(agent.socket), "doctor", timeout=25))
    socket = by_name(report.checks)["socket"]
    assert not report.passed and socket.status is Status.FAIL  # type: ignore[attr-defined]
    assert "expected mode 0600, owner only" in socket.detail  # type: ignore[attr-defined]


async def test_the_link_asks_the_host_s_agent(agent: AgentProcess) -> None:
    site = demo_site({"mec-a": agent.socket})
    fleet = Fleet(site)
    fleet.start()
    try:
        await fleet.ready()
        report = await fleet.link("mec-a").doctor()
    finally:
        await fleet.stop()
    assert report.host == "mec-a" and report.passed
    lines = format_doctor(report).splitlines()
    assert lines[0].startswith("mec-a: doctor (emulated: libvirt's test driver")
    assert lines[-1].startswith("  passed: ") and "0 FAIL" in lines[-1]


def test_the_command_line_prints_a_checklist_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"test://{make_node(tmp_path, driver='hotplug')}"
    assert main(["--uri", uri, "doctor", "--sys-root", str(DATA / "roots/snp-on")]) == 1
    out = capsys.readouterr().out
    assert "  FAIL      snp driver" in out and "-> name the guest driver" in out
    assert "  ok        kvm_amd sev_snp  sev_snp=Y" in out
    assert main(["--uri", uri, "doctor", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is False and {"name", "status", "detail", "advice"} <= data["checks"][0].keys()
    assert main(["--uri", f"test://{make_node(tmp_path)}", "doctor"]) == 0


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"test://{make_node(tmp_path)}"
    assert main(["--uri", uri, "doctor", "--sys-root", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err == f"hostctl: --sys-root {tmp_path / 'none'}: not a directory\n"
    assert main(["--uri", uri, "doctor", "mec-a"]) == 2
    assert "pass --site FILE" in capsys.readouterr().err


async def test_the_site_command_with_json(agent: AgentProcess, tmp_path: Path) -> None:
    site = demo_site({"mec-a": agent.socket})
    site.defaults = Defaults(interval=0.2, timeout=2.0, backoff_max=0.5)
    write(site, tmp_path / "site.toml")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hostctl",
        "--site",
        str(tmp_path / "site.toml"),
        "doctor",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    hosts = json.loads(out)["hosts"]
    assert [(h["name"], h["error"], h["report"]["host"]) for h in hosts] == [("mec-a", "", "mec-a")]


async def test_d_in_the_console_shows_the_selected_host_s_checks(agent: AgentProcess) -> None:
    site = demo_site({"mec-a": agent.socket})
    site.defaults = Defaults(interval=0.2, timeout=1.0, backoff_max=0.5)
    app = DittoApp(site=site, refresh=0.05)
    async with app.run_test(size=(130, 40)) as pilot:
        table = app.query_one(HostsTable)
        await until(pilot, lambda: table.row_count == 1 and app.fleet is not None and bool(app.links[0].hello))
        table.focus()
        await pilot.press("d")
        assert isinstance(app.screen, DoctorScreen) and app.screen.link.name == "mec-a"
        screen = app.screen
        await until(pilot, lambda: screen.report is not None)
        await pilot.pause(0.2)
        shown = app.export_screenshot().replace("&#160;", " ")
        assert [word for word in ("Doctor: mec-a: ", "passed", "emulated", "socket") if word not in shown] == []
        await pilot.press("escape")
        assert not isinstance(app.screen, DoctorScreen)
