"""The agent's Prometheus metrics over HTTP, in process on a real test-driver host: they follow the snapshot, count
scales and decisions, leave out what cannot be read, say when the loop does not answer, and bad addresses are one
line."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hostctl.agent import metrics
from hostctl.agent.audit import AuditLog
from hostctl.agent.metrics import REASONS, Tallies, parse_address
from hostctl.agent.probes import ProbeSample
from hostctl.agent.server import Agent
from hostctl.cli.main import main
from hostctl.elastic.guard import hold
from hostctl.elastic.runner import DEFAULT_POLICIES, load_policies
from hostctl.errors import HostctlError, ScaleRefused
from hostctl.host.libvirt_host import LibvirtHost
from hostctl.wire.model import Event
from tests.support.nodes import make_node
from tests.support.prometheus import scrape
from tests.support.waiting import until
from tests.test_bad_input import refused, run

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


@dataclass
class Served:
    """An agent and the address its metrics are served at."""

    agent: Agent
    address: str


async def read(served: Served) -> Samples:
    """The agent's /metrics: per sample name, {its labels but host, sorted: value}."""
    text = await scrape(served.address)
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "host"))
            out.setdefault(s.name, {})[labels] = s.value
    return out


def of(samples: Samples, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of `name` whose labels include `labels`."""
    return {k: v for k, v in samples.get(name, {}).items() if set(labels.items()) <= set(k)}


async def _agent(tmp_path: Path, driver: str) -> AsyncIterator[Served]:
    host = LibvirtHost(
        f"test://{make_node(tmp_path, driver)}",
        name="edge-1",
        driver_options={"emulated": {"wake_ms": 0, "park_ms": 0}},
    )
    await host.open()
    agent = Agent(
        host, audit=AuditLog(tmp_path / "audit.jsonl"), interval=0.1, policies=load_policies(DEFAULT_POLICIES)
    )
    agent.start()
    server = agent.serve_metrics(("127.0.0.1", 0))
    try:
        yield Served(agent, server.address)
    finally:
        await agent.stop()
        await host.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async for one in _agent(tmp_path, "emulated"):
        yield one


@pytest.fixture
async def guest_served(tmp_path: Path) -> AsyncIterator[Served]:
    """CVMs of the guest driver on the test driver, which has no guest agent: every count is unknown."""
    async for one in _agent(tmp_path, "guest"):
        yield one


async def test_gauges_follow_the_snapshot_and_counters_count_scales(served: Served) -> None:
    agent = served.agent
    await agent.host.scale("snp", 3, expect=2, who="alice")
    with pytest.raises(ScaleRefused):
        await agent.host.scale("es", 9, who="alice")
    snapshot = agent.snapshot()
    samples = await read(served)
    for cvm in snapshot.cvms:
        labels = (("cvm", cvm.name), ("security", cvm.security.value))
        assert samples["hostctl_cvm_online_vcpus"][labels] == cvm.online_vcpus
        assert samples["hostctl_cvm_boot_vcpus"][labels] == cvm.boot_vcpus
        assert samples["hostctl_cvm_max_vcpus"][labels] == cvm.max_vcpus
        assert samples["hostctl_cvm_workers_active"][labels] == cvm.workers_active
        assert samples["hostctl_cvm_online_vcpus_known"][labels] == 1
        assert of(samples, "hostctl_cvm_state", cvm=cvm.name, state="running") != {}
    assert {k: v for k, v in samples["hostctl_scale_actions_total"].items() if v} == {
        (("by", "operator"), ("cvm", "snp"), ("result", "applied")): 1,
        (("by", "operator"), ("cvm", "es"), ("result", "refused")): 1,
    }
    assert len(samples["hostctl_scale_actions_total"]) == 4 * len(snapshot.cvms)  # each combination, from 0
    assert samples["hostctl_host_cpus"][()] == snapshot.host.cpus
    assert samples["hostctl_host_workers_active"][()] == sum(c.workers_active or 0 for c in snapshot.cvms)
    assert samples["hostctl_host_boot_vcpus"][()] == sum(c.boot_vcpus for c in snapshot.cvms)
    # Worker capacity under each policy's guard: floor(cpus x overcommit) - boot vCPUs (overcommit 1 as shipped).
    assert samples["hostctl_host_worker_capacity"] == {
        (("policy", name),): snapshot.host.cpus - 4 for name in agent.elastic.policies
    }
    assert samples["hostctl_agent_state_readable"][()] == 1
    assert samples["hostctl_libvirt_connected"][()] == 1
    assert samples["process_resident_memory_bytes"][()] > 0


async def test_policy_decisions_are_counted_by_direction_and_a_fixed_reason(served: Served) -> None:
    agent = served.agent
    # The concurrency policy has no concurrency signal on a bare test-driver host: it holds, and alerts.
    agent.elastic.choose("plain", name="concurrency", enabled=True, who="alice")
    await until(lambda: agent.tallies.decisions, timeout=10)
    samples = await read(served)
    decisions = samples["hostctl_policy_decisions_total"]
    assert decisions
    for labels, count in decisions.items():
        got = dict(labels)
        assert (got["cvm"], got["policy"], got["direction"]) == ("plain", "concurrency", "hold")
        assert got["reason"] in REASONS
        assert count >= 1
    assert samples["hostctl_cvm_policy_enabled"][(("cvm", "plain"), ("policy", "concurrency"))] == 1
    assert samples["hostctl_cvm_policy_alert"][(("cvm", "plain"), ("policy", "concurrency"))] == 1
    assert samples["hostctl_cvm_policy_enabled"][(("cvm", "snp"), ("policy", "concurrency"))] == 0


async def test_counts_that_cannot_be_read_are_absent_not_zero(guest_served: Served) -> None:
    guest_agent = guest_served.agent
    await until(lambda: all(n >= 2 for n in guest_agent.host.guest_errors.values()) and guest_agent.host.guest_errors)
    snapshot = guest_agent.snapshot()
    assert all(c.online_vcpus is None for c in snapshot.cvms)
    samples = await read(guest_served)
    for name in ("hostctl_cvm_online_vcpus", "hostctl_cvm_workers_active", "hostctl_cvm_cpu_usage_ratio"):
        assert name not in samples, name
    assert set(samples["hostctl_cvm_online_vcpus_known"].values()) == {0}
    assert samples["hostctl_host_cvms_count_unknown"][()] == len(snapshot.cvms)
    errors = {dict(k)["cvm"]: v for k, v in samples["hostctl_guest_agent_errors_total"].items()}
    assert set(errors) == {c.name for c in snapshot.cvms}
    assert min(errors.values()) >= 2
    assert samples["hostctl_cvm_max_vcpus"]  # what is known is still there


async def test_a_loop_that_does_not_answer_is_said_not_waited_on(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "COLLECT_TIMEOUT_S", 0.2)
    url = f"http://{served.address}/metrics"
    asyncio.get_running_loop().call_soon(time.sleep, 0.6)  # the loop is busy before the scrape asks it anything
    scraped: list[str] = []
    scraper = threading.Thread(target=lambda: scraped.append(_scrape_blocking(url)))
    scraper.start()
    await asyncio.to_thread(scraper.join, 10)
    (text,) = scraped
    assert "hostctl_agent_state_readable 0.0" in text
    assert "hostctl_cvm_" not in text
    assert "process_resident_memory_bytes" in text  # the process's own figures need no loop


def _scrape_blocking(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_tallies_keep_only_what_still_exists() -> None:
    tallies = Tallies()
    tallies.decided("a", "slo", hold(2, "steady", "fine"))
    tallies.decided("gone", "slo", hold(None, "a reason nobody listed", "?"))
    tallies.event(Event("h", "gone", "scale", "policy:slo", ok=True, before=1, after=2))
    tallies.probed("a", "web", ProbeSample(0.0, 3.0, ok=True))
    tallies.probed("gone", "web", ProbeSample(0.0, 3.0, ok=False))
    assert ("gone", "slo", "hold", "other") in tallies.decisions
    assert tallies.scales == {("gone", "applied", "policy"): 1}
    tallies.keep({"a"}, {("a", "web")})
    assert tallies.decisions == {("a", "slo", "hold", "steady"): 1}
    assert (tallies.scales, tallies.probe_failures) == ({}, {})
    assert list(tallies.probes) == [("a", "web")]
    assert tallies.probes["a", "web"].buckets()[:4] == [("0.001", 0), ("0.0025", 0), ("0.005", 1), ("0.01", 1)]


@pytest.mark.parametrize(
    ("text", "address"),
    [("9470", ("127.0.0.1", 9470)), ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:9470", ("::1", 9470))],
)
def test_metrics_addresses(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("nope", "expected [ADDR:]PORT, e.g. 9470 or 127.0.0.1:9470"),
        ("70000", "port 70000 is outside 0..65535"),
        ("example.net:9470", "'example.net' is not an IP address (e.g. 127.0.0.1 or [::1])"),
        ("[::1]:x", "expected [ADDR:]PORT, e.g. 9470 or 127.0.0.1:9470"),
    ],
)
def test_a_bad_metrics_address_is_one_line(text: str, problem: str) -> None:
    with pytest.raises(HostctlError) as e:
        parse_address(text)
    assert str(e.value) == f"--metrics {text!r}: {problem}"


def test_every_command_with_metrics_refuses_a_bad_address_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["--uri", "test:///default", "serve", "--socket", str(tmp_path / "s")],
        ["--uri", "test:///default", "agent", "--stdio"],
        ["demo", "up", "--runtime", str(tmp_path / "demo")],
        ["demo", "serve-host", "mec-1", "--runtime", str(tmp_path / "demo")],
        ["lab", "up", "--runtime", str(tmp_path / "lab")],
    ):
        assert main([*argv, "--metrics", "nope"]) == 2, argv
        out, err = capsys.readouterr()
        assert (out, err) == ("", "hostctl: --metrics 'nope': expected [ADDR:]PORT, e.g. 9470 or 127.0.0.1:9470\n"), (
            argv
        )
    assert list(tmp_path.iterdir()) == []  # nothing was started or written


def test_a_taken_metrics_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run("hostctl", "--uri", "test:///default", "serve", "--socket", tmp_path / "s", "--metrics", str(port))
    refused(proc, "hostctl", f"--metrics 127.0.0.1:{port}: cannot listen: Address already in use")
